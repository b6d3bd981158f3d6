"""ProxyCLIP (Lan et al., ECCV 2024): a vision foundation model's (VFM) patch similarity
as the attention of CLIP's last block. Pure functions on tensors; the VFM itself (DINO /
DINOv2, ``labelless.masks.dino``) runs in ``scorers.ProxyCLIPScorer``.

As the official code (github mc-lan/ProxyCLIP, ``proxyclip_segmentor.py`` and
``open_clip/transformer.py`` ``custom_attn``) computes it, with ``f`` the VFM's last-layer
patch tokens (after its final LayerNorm; ``B×C×H'×W'`` on the VFM's own patch grid):

1. ``S = f̂ᵀ f̂``, the cosine similarity of every pair of VFM patches (``f̂``: f L2-normalised
   over channels), ``B×N'×N'`` with ``N' = H'·W'``;
2. ``A = γ · (S − β · mean(S))``; entries with ``A < 0`` are set to −∞; ``softmax`` over
   the keys (defaults β = 1.2, γ = 3.0). The same ``A`` serves every head;
3. CLIP's last block: ``v = W_v · ln_1(x) + b_v`` of the patch tokens (CLS dropped), on
   CLIP's patch grid ``h×w``, resized bilinearly (``align_corners=False``) to the VFM grid
   ``H'×W'`` — so the output lies on the VFM's grid, not CLIP's;
4. ``out_proj(A v)``; no residual, no FFN (the block's input is not added back);
5. ``ln_post`` and ``proj`` on every token → ``B×D×H'×W'``.

Choices where the code leaves room (each equal to it wherever it is defined):

- ``mean(S)`` is each image's own mean over its ``N'×N'`` entries (diagonal included). The
  official ``torch.mean(similarity)`` averages over the whole batch; its harness runs one
  window at a time, where the two agree, and a per-image mean keeps an image's scores
  independent of the images batched with it.
- the diagonal (a patch with itself, ``S = 1``) is never masked. Only when ``β · mean(S) > 1``
  is it negative, and then every entry of its row is too (``S ≤ 1``): the official code
  gives a row of NaN there, this one lets the patch keep its own value.
- the block's layer scale ``ls_1`` (identity in every released CLIP) scales the attention
  output, as in the other last-block modes of ``models/dense.py``; the official code has none.
- the official code computes everything in fp16; here ``--precision`` decides (autocast).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from labelless.errors import SettingError
from labelless.models.dense import vit_tokens

PROXY_MODES = ("proxyclip",)
DEFAULT_VFM = "facebook/dino-vitb8"  # the paper's DINO ViT-B/8
DEFAULT_BETA = 1.2
DEFAULT_GAMMA = 3.0


def check_proxy_settings(beta: float, gamma: float) -> None:
    """β finite; γ finite and > 0 (γ ≤ 0 would turn the mask ``A < 0`` upside down)."""
    if not math.isfinite(beta):
        raise SettingError(f"--proxy-beta must be a finite number, got {beta}")
    if not (math.isfinite(gamma) and gamma > 0):
        raise SettingError(f"--proxy-gamma must be a finite number > 0, got {gamma}")


def proxy_attention(guide: torch.Tensor, beta: float = DEFAULT_BETA, gamma: float = DEFAULT_GAMMA) -> torch.Tensor:
    """Attention weights ``B×N'×N'`` (rows: queries, summing to 1) from VFM features
    ``guide`` ``B×C×H'×W'``: softmax of γ(S − β·mean(S)) with negatives masked (module doc)."""
    f = F.normalize(guide.flatten(2), dim=1)  # B×C×N'
    sim = torch.einsum("bcm,bcn->bmn", f, f)  # B×N'×N'
    # in place: N'×N' per image is the big tensor here (DINO /8 at a 448 window: 3136² floats)
    logits = sim.sub_(beta * sim.mean(dim=(1, 2), keepdim=True)).mul_(gamma)
    masked = logits < 0
    masked.diagonal(dim1=1, dim2=2).fill_(False)  # a patch always keeps itself (module doc)
    return logits.masked_fill_(masked, float("-inf")).softmax(dim=-1)


def resample_grid(tokens: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """Tokens ``B×(h·w)×W`` of grid ``grid`` resized bilinearly (align_corners=False) to
    ``size`` → ``B×(H'·W')×W`` (unchanged when the grids match)."""
    if tuple(grid) == tuple(size):
        return tokens
    b, _, w = tokens.shape
    maps = tokens.transpose(1, 2).reshape(b, w, *grid)
    maps = F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=False)
    return maps.flatten(2).transpose(1, 2)


def proxy_last_block(block: nn.Module, x: torch.Tensor, grid: tuple[int, int], attn: torch.Tensor,
                     size: tuple[int, int]) -> torch.Tensor:
    """The last open_clip ``ResidualAttentionBlock`` with attention ``attn`` (``B×N'×N'``
    over the ``size`` grid): patch values of ``x`` (``B×(1+h·w)×W``, grid ``grid``) resized
    to ``size``, ``out_proj(attn · v)``, then ``ls_1``; no residual, no FFN → ``B×N'×W``."""
    mha = block.attn
    if not isinstance(mha, nn.MultiheadAttention):
        raise ValueError(f"mode proxyclip needs a standard open_clip ViT block (nn.MultiheadAttention), "
                         f"got {type(mha).__name__}")
    width = x.shape[-1]
    y = block.ln_1(x)[:, 1:]  # patch tokens only: B×hw×W
    bias = None if mha.in_proj_bias is None else mha.in_proj_bias[2 * width:]
    v = F.linear(y, mha.in_proj_weight[2 * width:], bias)  # the value rows of in_proj; heads side by side
    v = resample_grid(v, grid, size)  # B×N'×W
    out = torch.bmm(attn.to(v.dtype), v)  # every head attends with the same weights
    return block.ls_1(F.linear(out, mha.out_proj.weight, mha.out_proj.bias))


def vit_proxy_features(visual: nn.Module, images: torch.Tensor, guide: torch.Tensor,
                       beta: float = DEFAULT_BETA, gamma: float = DEFAULT_GAMMA) -> torch.Tensor:
    """ProxyCLIP dense features of an open_clip ``VisionTransformer``: CLIP-normalised
    images ``B×3×H×W`` and the VFM features ``guide`` ``B×C×H'×W'`` of the same images →
    ``B×D×H'×W'`` (the VFM's grid; module doc)."""
    if guide.dim() != 4 or guide.shape[0] != images.shape[0]:
        raise ValueError(f"VFM features must be B×C×H'×W' for the {images.shape[0]} images, "
                         f"got shape {tuple(guide.shape)}")
    size = tuple(guide.shape[-2:])
    x, grid = vit_tokens(visual, images)
    blocks = visual.transformer.resblocks
    for blk in blocks[:-1]:
        x = blk(x)
    x = proxy_last_block(blocks[-1], x, grid, proxy_attention(guide, beta, gamma), size)
    x = visual.ln_post(x)
    if visual.proj is not None:
        x = x @ visual.proj
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *size)
