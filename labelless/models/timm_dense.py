"""Dense (per-location) features of open_clip's timm ViT towers: ``TimmModel`` over a timm
``VisionTransformer`` (SigLIP / SigLIP 2, DINOv2-style towers of LiT models, timm CLIP ViTs)
or ``Eva`` (EVA02, EVA-CLIP, PE-Core), with a class token or none, register tokens or none,
token / average / attention-pool heads. The API of ``models/dense.py``: a tower and a
normalised batch ``B×3×H×W`` → ``B×D×h×w`` in the joint image-text space (before L2
normalisation), for inputs of any size.

Tokens: the trunk's patch-embedding conv (padded first where the trunk pads), absolute
positions resampled to the patch grid by timm's ``resample_abs_pos_embed`` with timm's
defaults (bicubic, antialiased: what the trunk's own forward does with ``dynamic_img_size``),
class and register tokens prepended as the trunk does (``no_embed_class`` or not),
``norm_pre``; EVA / PE rotary embeddings built for the grid by the trunk's own
``RotaryEmbeddingCat``. Blocks 0..L-2 run as trained. Patch dropout is never applied (every
patch is needed); the custom last block applies no drop path.

Last-block modes, with ``y = norm1(x)`` and q, k, v as the block's attention computes them
(q / k norms and rotary embeddings included, k / v heads repeated for grouped-query
attention):

=========== ================================================== ========== =====
mode        attention output of the last block                 residual   FFN
=========== ================================================== ========== =====
vanilla     the block as trained                               own input  yes
maskclip    v (attention = identity)                           own input  yes
pixelclip   v (attention = identity); class-token towers only  CLS input  yes
sclip       (softmax(q qᵀ/√d) + softmax(k kᵀ/√d)) v            own input  yes
clearclip   softmax(q qᵀ/√d) v                                 none       no
naclip      softmax(k kᵀ/√d + G) v, G Gaussian, σ = 5 patches  none       no
proxyclip   a VFM's patch similarity over v (``timm_proxy_features``)  none  no
=========== ================================================== ========== =====

Each attention output goes through the attention's own output path (its ``norm``: EVA02's
inner LayerNorm where there is one, then ``proj``) and the block's first layer scale
(``ls1`` / ``gamma_1``). NACLIP's Gaussian is added to patch-patch pairs only (0 for every
pair with a class or register token). pixelclip adds the class token's block input to every
token, so towers without a class token (SigLIP, PE-Core-G) do not offer it. With rotary
embeddings q·q and k·k are taken between the rotated vectors, as the block's own q·k is.

Head at every location: after the trunk's final ``norm``, class and register tokens are
dropped and each patch token goes through what the tower does to its pooled token:

- token / average / max pooling: nothing (the pool of one location is that location);
- attention pooling (SigLIP's MAP head, PE-Core's ``attn_pool``, timm
  ``AttentionPoolLatent``): its value path per token, ``proj(W_v x + b_v)`` then
  ``+ mlp(norm(·))``. This is exactly what the head gives for an image of that one token (a
  single key gets softmax weight 1, whatever the latent query): MaskCLIP's treatment of
  CLIP's ResNet attention pool (value → output projection per location, the query-key
  weights dropped) carried over to the MAP head, whose query-key path only decides how much
  each token counts in the global embedding;
- then ``fc_norm``, the trunk's ``head`` (EVA02 / PE-Core: their projection to the joint
  space) and open_clip's ``TimmModel.head`` (``proj`` / ``mlp``), per location.

Not covered (``unsupported`` says why): hybrid patch embeddings (ViTamin, MobileCLIP's
``vit_*_mci``), relative-position ViTs, EVA's post-norm blocks (EVA02-E), gated attention,
mixed / DINOv3 rotary embeddings, the ``prr`` pool, attention pools with their own positions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from labelless.errors import SettingError
from labelless.models.dense import gaussian_window, mode_attention
from labelless.models.proxyclip import proxy_attention, resample_grid

TIMM_VIT_MODES = ("vanilla", "maskclip", "pixelclip", "sclip", "clearclip", "naclip")
# timm modules whose architectures these functions cover (and ``list_models`` lists)
TIMM_VIT_MODULES = ("timm.models.vision_transformer", "timm.models.eva")
# timm names of those modules whose towers are not covered (told without building them)
TIMM_VIT_EXCLUDED = {"eva02_enormous_patch14_clip_224": "post-norm blocks (EvaBlockPostNorm)"}


def is_timm_vit(trunk: nn.Module) -> bool:
    """Whether a ``TimmModel`` trunk is a timm ``VisionTransformer`` or ``Eva``."""
    from timm.models.eva import Eva
    from timm.models.vision_transformer import VisionTransformer

    return isinstance(trunk, (VisionTransformer, Eva))


def _is_eva(trunk: nn.Module) -> bool:
    from timm.models.eva import Eva

    return isinstance(trunk, Eva)


def _block_problem(block: nn.Module, eva: bool) -> str | None:
    from timm.layers import Attention, AttentionRope
    from timm.models.eva import EvaAttention, EvaBlock
    from timm.models.vision_transformer import Block

    kinds = (EvaBlock,) if eva else (Block,)
    attns = (EvaAttention, AttentionRope) if eva else (Attention,)
    if not isinstance(block, kinds) or not isinstance(block.attn, attns):
        return f"blocks of type {type(block).__name__} / {type(getattr(block, 'attn', None)).__name__}"
    if getattr(block.attn, "gate", None) is not None:
        return "gated attention"
    return None


def unsupported(visual: nn.Module) -> str | None:
    """Why the timm ViT tower ``visual`` cannot run here (module docstring), or None."""
    from timm.layers import AttentionPoolLatent, PatchEmbed, RotaryEmbeddingCat

    trunk = visual.trunk
    eva = _is_eva(trunk)
    pe = getattr(trunk, "patch_embed", None)
    if type(pe) is not PatchEmbed:
        return f"its patch embedding {type(pe).__name__} is not a plain timm PatchEmbed"
    if pe.patch_size[0] != pe.patch_size[1]:
        return f"non-square patches {tuple(pe.patch_size)}"
    problem = _block_problem(trunk.blocks[-1], eva)
    if problem:
        return problem
    rope = getattr(trunk, "rope", None)
    if rope is not None and (type(rope) is not RotaryEmbeddingCat or getattr(trunk, "rope_mixed", False)):
        return f"rotary embedding {type(rope).__name__}"
    pool = trunk.attn_pool
    if pool is not None and (not isinstance(pool, AttentionPoolLatent) or pool.pos_embed is not None):
        return f"attention pool {type(pool).__name__} (with positions)" if pool.pos_embed is not None else \
            f"attention pool {type(pool).__name__}"
    if "pool" in dict(visual.head.named_children()):
        return "an open_clip attention pool head"
    return None


def timm_vit_modes(visual: nn.Module) -> tuple[str, ...]:
    """The last-block modes of ``visual``: every mode, pixelclip only with a class token."""
    has_cls = getattr(visual.trunk, "cls_token", None) is not None
    return tuple(m for m in TIMM_VIT_MODES if m != "pixelclip" or has_cls)


# ----------------------------------------------------------------------------- tokens

def _rope(trunk: nn.Module, grid: tuple[int, int]) -> torch.Tensor | None:
    """The trunk's rotary embedding for ``grid`` (``hw×2·dim``), or None without one."""
    rope = getattr(trunk, "rope", None)
    if rope is None:
        return None
    if rope.feat_shape is None or list(rope.feat_shape) == list(grid):
        return rope.get_embed(shape=list(grid))
    # a cached embedding for another grid: timm's own formula for this one (update_feat_shape's)
    return rope._build_embed_cat(list(grid), rope.bands)


def timm_tokens(trunk: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int], torch.Tensor | None]:
    """Patch tokens of ``B×3×H×W`` with class / register tokens and (resampled) positions,
    after ``norm_pre``: ``B×(p+h·w)×C``, the grid (h, w) and the rotary embedding (or None)."""
    from timm.layers import resample_abs_pos_embed

    pe = trunk.patch_embed
    if pe.dynamic_img_pad:  # the trunk pads to whole patches
        (ph, pw), (h, w) = pe.patch_size, images.shape[-2:]
        images = F.pad(images, (0, (pw - w % pw) % pw, 0, (ph - h % ph) % ph))
    x = pe.proj(images)  # B×C×h×w
    grid = (x.shape[2], x.shape[3])
    x = pe.norm(x.flatten(2).transpose(1, 2))  # B×hw×C
    prefix = [t.expand(x.shape[0], -1, -1) for t in (trunk.cls_token, trunk.reg_token) if t is not None]
    pos = None
    if trunk.pos_embed is not None:
        n = 0 if trunk.no_embed_class else trunk.num_prefix_tokens
        pos = resample_abs_pos_embed(trunk.pos_embed, new_size=list(grid), old_size=list(pe.grid_size),
                                     num_prefix_tokens=n).to(x.dtype)
    if trunk.no_embed_class:  # positions for the patches only, then the prefix tokens
        x = torch.cat(prefix + [x if pos is None else x + pos], dim=1)
    else:
        x = torch.cat(prefix + [x], dim=1)
        x = x if pos is None else x + pos
    return trunk.norm_pre(trunk.pos_drop(x)), grid, _rope(trunk, grid)


def _blocks_but_last(trunk: nn.Module, x: torch.Tensor, rope) -> torch.Tensor:
    eva = _is_eva(trunk)
    for blk in trunk.blocks[:-1]:
        x = blk(x, rope=rope) if eva else blk(x)
    return x


# ----------------------------------------------------------------------------- last block

def _rotate(t: torch.Tensor, rope: torch.Tensor, attn: nn.Module) -> torch.Tensor:
    """Rotary embedding on the patch tokens of ``t`` (B×heads×N×d), as the attention does."""
    from timm.layers import apply_rot_embed_cat

    p = attn.num_prefix_tokens
    rotated = apply_rot_embed_cat(t[:, :, p:], rope, half=getattr(attn, "rotate_half", False))
    return torch.cat([t[:, :, :p], rotated], dim=2).type_as(t)


def heads_qkv(attn: nn.Module, y: torch.Tensor, rope: torch.Tensor | None = None):
    """q, k, v of ``y`` (B×N×C) as timm ``Attention`` / ``EvaAttention`` / ``AttentionRope``
    compute them: each B×heads×N×d (k, v repeated to every head for grouped-query attention)."""
    b, n, _ = y.shape
    h = attn.num_heads
    if getattr(attn, "qkv", None) is not None:
        if getattr(attn, "q_bias", None) is not None:  # EvaAttention: q and v biases, k bias zero
            qkv = F.linear(y, attn.qkv.weight, torch.cat((attn.q_bias, attn.k_bias, attn.v_bias)))
        else:
            qkv = attn.qkv(y)
        q, k, v = qkv.reshape(b, n, 3, h, -1).permute(2, 0, 3, 1, 4)
    else:
        q = attn.q_proj(y).reshape(b, n, h, -1).transpose(1, 2)
        kv_heads = getattr(attn, "num_kv_heads", h)
        k = attn.k_proj(y).reshape(b, n, kv_heads, -1).transpose(1, 2)
        v = attn.v_proj(y).reshape(b, n, kv_heads, -1).transpose(1, 2)
    q, k = attn.q_norm(q), attn.k_norm(k)
    if rope is not None:
        q, k = _rotate(q, rope, attn), _rotate(k, rope, attn)
    if k.shape[1] != h:
        k, v = k.repeat_interleave(h // k.shape[1], dim=1), v.repeat_interleave(h // v.shape[1], dim=1)
    return q, k, v


def _attention_output(attn: nn.Module, o: torch.Tensor) -> torch.Tensor:
    """Heads ``B×heads×N×d`` merged → the attention's own output path (norm, proj)."""
    merged = o.transpose(1, 2).flatten(2)
    return attn.proj_drop(attn.proj(attn.norm(merged)))


def _layer_scale(block: nn.Module, i: int):
    """The block's i-th layer scale: timm ViT ``ls1`` / ``ls2``, Eva ``gamma_1`` / ``gamma_2``."""
    ls = getattr(block, f"ls{i}", None)
    if ls is not None:
        return ls
    gamma = getattr(block, f"gamma_{i}", None)
    return (lambda t: t) if gamma is None else (lambda t: gamma * t)


def prefix_window(grid: tuple[int, int], sigma: float, num_prefix: int, device=None) -> torch.Tensor:
    """``(p+h·w)×(p+h·w)`` additive NACLIP prior: exp(-dist²/2σ²) between patches of the
    grid, 0 for every pair with one of the ``p`` class / register tokens."""
    patches = gaussian_window(grid, sigma, device)[1:, 1:]
    return F.pad(patches, (num_prefix, 0, num_prefix, 0))


def timm_last_block(block: nn.Module, x: torch.Tensor, mode: str, grid: tuple[int, int], num_prefix: int,
                    rope: torch.Tensor | None = None, naclip_sigma: float = 5.0) -> torch.Tensor:
    """Run the timm ViT / Eva block ``block`` on ``x`` (B×N×C) in ``mode`` (module docstring)."""
    if mode == "vanilla":
        return block(x) if rope is None else block(x, rope=rope)
    y = block.norm1(x)
    q, k, v = heads_qkv(block.attn, y, rope)
    o = mode_attention(mode, q, k, v, lambda: prefix_window(grid, naclip_sigma, num_prefix, x.device),
                       TIMM_VIT_MODES)  # default scale 1/√d, as the block's own
    out = _layer_scale(block, 1)(_attention_output(block.attn, o))
    if mode in ("clearclip", "naclip"):
        return out
    residual = x[:, :1].expand_as(x) if mode == "pixelclip" else x
    out = residual + out
    return out + _layer_scale(block, 2)(block.mlp(block.norm2(out)))


# ----------------------------------------------------------------------------- head

def map_value_path(pool: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A timm ``AttentionPoolLatent`` (MAP head) on every token alone: ``B×N×C`` → ``B×N×D``:
    ``proj(W_v x + b_v)``, then ``+ mlp(norm(·))`` (module docstring)."""
    width = pool.kv.out_features // 2  # kv rows: keys, then values
    bias = None if pool.kv.bias is None else pool.kv.bias[width:]
    out = pool.proj_drop(pool.proj(F.linear(x, pool.kv.weight[width:], bias)))
    return out if pool.mlp is None else out + pool.mlp(pool.norm(out))


def location_head(visual: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Patch tokens ``B×N×C`` after the trunk's ``norm`` → ``B×N×D``: the tower's head at
    every location (attention pool's value path, ``fc_norm``, trunk ``head``, ``TimmModel.head``)."""
    trunk = visual.trunk
    if trunk.attn_pool is not None:
        x = map_value_path(trunk.attn_pool, x)
    return visual.head(trunk.head(trunk.head_drop(trunk.fc_norm(x))))


def _to_map(x: torch.Tensor, grid) -> torch.Tensor:
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *grid)


# ----------------------------------------------------------------------------- features

def timm_dense_features(visual: nn.Module, images: torch.Tensor, mode: str = "vanilla",
                        naclip_sigma: float = 5.0) -> torch.Tensor:
    """Dense features of an open_clip ``TimmModel`` timm-ViT tower: ``B×3×H×W`` → ``B×D×h×w``."""
    if mode not in timm_vit_modes(visual):
        why = " (the tower has no class token)" if mode == "pixelclip" else ""
        raise SettingError(f"dense mode {mode!r} is not available for this timm ViT tower{why}; "
                           f"choose from {', '.join(timm_vit_modes(visual))}")
    trunk = visual.trunk
    x, grid, rope = timm_tokens(trunk, images)
    x = _blocks_but_last(trunk, x, rope)
    x = timm_last_block(trunk.blocks[-1], x, mode, grid, trunk.num_prefix_tokens, rope, naclip_sigma)
    x = trunk.norm(x)[:, trunk.num_prefix_tokens:]  # class / register tokens dropped: B×hw×C
    return _to_map(location_head(visual, x), grid)


def timm_proxy_features(visual: nn.Module, images: torch.Tensor, guide: torch.Tensor,
                        beta: float = 1.2, gamma: float = 3.0) -> torch.Tensor:
    """ProxyCLIP (``models/proxyclip.py``) on a timm ViT tower: the last block's patch values
    (``v`` of ``norm1(x)``, no rotary embedding: it only turns q and k) resized bilinearly to
    the VFM grid of ``guide`` (``B×C×H'×W'``), ``A v`` with the VFM's attention ``A``, the
    attention's output path and first layer scale, no residual, no FFN; the trunk's ``norm``
    and the head per location → ``B×D×H'×W'``."""
    if guide.dim() != 4 or guide.shape[0] != images.shape[0]:
        raise ValueError(f"VFM features must be B×C×H'×W' for the {images.shape[0]} images, "
                         f"got shape {tuple(guide.shape)}")
    size = tuple(guide.shape[-2:])
    trunk = visual.trunk
    x, grid, rope = timm_tokens(trunk, images)
    x = _blocks_but_last(trunk, x, rope)
    block = trunk.blocks[-1]
    _, _, v = heads_qkv(block.attn, block.norm1(x))
    v = v[:, :, trunk.num_prefix_tokens:].transpose(1, 2).flatten(2)  # patch values, heads side by side
    v = resample_grid(v, grid, size)  # B×N'×A
    out = torch.bmm(proxy_attention(guide, beta, gamma).to(v.dtype), v)  # every head with the same weights
    out = _layer_scale(block, 1)(block.attn.proj_drop(block.attn.proj(block.attn.norm(out))))
    return _to_map(location_head(visual, trunk.norm(out)), size)
