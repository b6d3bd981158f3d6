"""Dense (per-location) CLIP image features, one call for every backbone.

Every function here takes an open_clip vision tower and a normalised image batch
``B×3×H×W`` and returns features ``B×D×h×w`` in the joint image-text space (before
L2 normalisation). Inputs of any size work: ViT positional embeddings are resized
bicubically to the patch grid.

ViT last-block modes (only the last residual block changes; blocks 0..L-2 run as
trained). With ``y = ln_1(x)`` and ``v = W_v y`` per head:

=========== ====================================================== ========== =====
mode        attention output of the last block                     residual   FFN
=========== ====================================================== ========== =====
vanilla     softmax(q kᵀ/√d) v  (the model as trained)              own input  yes
maskclip    v (attention = identity), MaskCLIP (Zhou et al. 2022)    own input  yes
pixelclip   v (attention = identity)                                CLS input  yes
sclip       (softmax(q qᵀ/√d) + softmax(k kᵀ/√d)) v                 own input  yes
clearclip   softmax(q qᵀ/√d) v                                      none       no
naclip      softmax(k kᵀ/√d + G) v, G a 2-D Gaussian, σ = 5 patches  none       no
=========== ====================================================== ========== =====

Each attention output goes through the block's ``out_proj``; then ``ln_post`` and
``proj`` are applied to every token and the CLS token is dropped.
MaskCLIP keeps each token's own residual and the FFN, as its reference
implementation does (value path → out_proj, ``v += x``, then the FFN with residual).
PixelCLIP adds the CLS token's block input to every token instead (the project's method notes, ../shared/METHODS.md).
SCLIP keeps residual and FFN as those notes specify. In NACLIP the Gaussian
``exp(-‖Δ‖²/(2σ²))`` over patch-grid distances is added to the k-kᵀ logits of
patch-to-patch pairs (0 for pairs that involve the CLS token). Every softmax attention
runs as ``F.scaled_dot_product_attention`` (equal to the written-out formula to float
rounding, ``tests/test_dense.py``).

ProxyCLIP (mode ``proxyclip``: a vision foundation model's patch similarity as the last
block's attention) needs that model's features too: ``models/proxyclip.py``.

ConvNeXt (open_clip ``TimmModel``): ``trunk.forward_features`` → ``trunk.head.norm``
→ the tower's projection head at every location (PixelCLIP's way, no pooling).

Which tower has which mode:

================================================  ===========================================
tower (``DenseCLIP.kind``)                        modes
================================================  ===========================================
open_clip ViT (``vit``)                           every mode of the table, proxyclip
timm ViT / EVA tower (``timm-vit``: SigLIP,       every mode of the table, proxyclip; pixelclip
SigLIP 2, EVA02, PE-Core, DINOv2 LiT towers)      only with a class token (not SigLIP);
                                                  ``models/timm_dense.py``
timm ConvNeXt (``convnext``)                      vanilla
================================================  ===========================================
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

VIT_MODES = ("vanilla", "maskclip", "pixelclip", "sclip", "clearclip", "naclip")
CONVNEXT_MODES = ("vanilla",)


def resize_pos_embed(pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Resize a ViT positional embedding ``(1+h0·w0)×C`` to ``(1+h·w)×C`` (bicubic).

    The stored grid is assumed square (as in every open_clip ViT).
    """
    n = pos.shape[0] - 1
    side = int(round(math.sqrt(n)))
    if side * side != n:
        raise ValueError(f"positional embedding of {n} patch tokens is not a square grid")
    if (side, side) == tuple(grid):
        return pos
    cls, patches = pos[:1], pos[1:]
    patches = patches.reshape(1, side, side, -1).permute(0, 3, 1, 2)  # 1×C×s×s
    patches = F.interpolate(patches.float(), size=grid, mode="bicubic", align_corners=False)
    patches = patches.to(pos.dtype).permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1)
    return torch.cat([cls, patches], dim=0)


def vit_tokens(visual: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """Patch-embed, add (resized) positions and ln_pre. Returns ``B×(1+h·w)×W`` and (h, w)."""
    x = visual.conv1(images)  # B×W×h×w
    grid = (x.shape[2], x.shape[3])
    x = x.flatten(2).transpose(1, 2)  # B×hw×W
    cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1)
    x = x + resize_pos_embed(visual.positional_embedding, grid).to(x.dtype)
    return visual.ln_pre(x), grid


def _heads_qkv(attn: nn.MultiheadAttention, y: torch.Tensor):
    """q, k, v of ``y`` (B×N×W) split into heads: each B×heads×N×d."""
    b, n, w = y.shape
    h = attn.num_heads
    qkv = F.linear(y, attn.in_proj_weight, attn.in_proj_bias)  # B×N×3W
    q, k, v = qkv.reshape(b, n, 3, h, w // h).permute(2, 0, 3, 1, 4)
    return q, k, v


def _merge_heads(o: torch.Tensor) -> torch.Tensor:
    b, h, n, d = o.shape
    return o.transpose(1, 2).reshape(b, n, h * d)


def gaussian_window(grid: tuple[int, int], sigma: float, device=None) -> torch.Tensor:
    """``(1+h·w)×(1+h·w)`` additive prior of NACLIP: exp(-dist²/2σ²) between patches, 0 for CLS."""
    ys, xs = torch.meshgrid(
        torch.arange(grid[0], device=device, dtype=torch.float32),
        torch.arange(grid[1], device=device, dtype=torch.float32),
        indexing="ij",
    )
    pts = torch.stack([ys.flatten(), xs.flatten()], dim=1)  # hw×2
    d2 = torch.cdist(pts, pts).pow(2)
    win = torch.zeros(pts.shape[0] + 1, pts.shape[0] + 1, device=device)
    win[1:, 1:] = torch.exp(-d2 / (2 * sigma**2))
    return win


def mode_attention(mode: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window, modes=VIT_MODES):
    """The last block's per-head attention output in ``mode`` (module table), from q, k, v
    ``B×heads×N×d``; ``window()`` gives NACLIP's additive ``N×N`` prior. Each softmax(a bᵀ/√d
    [+ G]) v is one fused ``F.scaled_dot_product_attention`` call (default scale 1/√d); the
    N×N attention matrix is never kept. ``modes`` names the choices in the error."""
    sdpa = F.scaled_dot_product_attention
    if mode in ("maskclip", "pixelclip"):
        return v
    if mode == "sclip":
        return sdpa(q, q, v) + sdpa(k, k, v)
    if mode == "clearclip":
        return sdpa(q, q, v)
    if mode == "naclip":
        return sdpa(k, k, v, attn_mask=window().to(q.dtype))
    raise ValueError(f"unknown dense mode {mode!r}; choose from {', '.join(modes)}")


def last_block(block: nn.Module, x: torch.Tensor, mode: str, grid: tuple[int, int],
               naclip_sigma: float = 5.0) -> torch.Tensor:
    """Run open_clip ``ResidualAttentionBlock`` ``block`` on ``x`` (B×N×W) in ``mode``."""
    if mode == "vanilla":
        return block(x)
    attn = block.attn
    if not isinstance(attn, nn.MultiheadAttention):
        raise ValueError(f"dense mode {mode!r} needs a standard open_clip ViT block "
                         f"(nn.MultiheadAttention), got {type(attn).__name__}")
    y = block.ln_1(x)
    q, k, v = _heads_qkv(attn, y)
    o = mode_attention(mode, q, k, v, lambda: gaussian_window(grid, naclip_sigma, x.device), VIT_MODES)
    out = F.linear(_merge_heads(o), attn.out_proj.weight, attn.out_proj.bias)
    out = block.ls_1(out)
    if mode in ("clearclip", "naclip"):
        return out
    residual = x[:, :1].expand_as(x) if mode == "pixelclip" else x
    out = residual + out
    return out + block.ls_2(block.mlp(block.ln_2(out)))


def vit_dense_features(visual: nn.Module, images: torch.Tensor, mode: str = "vanilla",
                       naclip_sigma: float = 5.0) -> torch.Tensor:
    """Dense features of an open_clip ``VisionTransformer``: ``B×3×H×W`` → ``B×D×h×w``."""
    if mode not in VIT_MODES:
        raise ValueError(f"unknown ViT dense mode {mode!r}; choose from {', '.join(VIT_MODES)}")
    x, grid = vit_tokens(visual, images)
    blocks = visual.transformer.resblocks
    for blk in blocks[:-1]:
        x = blk(x)
    x = last_block(blocks[-1], x, mode, grid, naclip_sigma)
    x = visual.ln_post(x)
    if visual.proj is not None:
        x = x @ visual.proj
    x = x[:, 1:]  # drop CLS: B×hw×D
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *grid)


def convnext_dense_features(visual: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Dense features of an open_clip ``TimmModel`` ConvNeXt tower: ``B×3×H×W`` → ``B×D×h×w``."""
    f = visual.trunk.forward_features(images)  # B×C×h×w
    f = visual.trunk.head.norm(f)
    f = visual.head(f.permute(0, 2, 3, 1))  # B×h×w×D
    return f.permute(0, 3, 1, 2)
