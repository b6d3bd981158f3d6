"""A MaskFormer without a classification head (S-Seg's image model): backbone → pixel
decoder (per-pixel embeddings at 1/4) → transformer decoder over N queries → N mask
logits (mask embedding · per-pixel embedding) and N query features.

What follows MaskFormer (Cheng et al. 2021; facebookresearch/MaskFormer, ``BasePixelDecoder``,
``TransformerPredictor``, the DETR ``transformer.py``):
- pixel decoder (FPN): per level a 1×1 lateral conv (GroupNorm, no activation; none on the
  coarsest level) and a 3×3 output conv (GroupNorm + ReLU), convs without bias when
  normalised, top-down with nearest upsampling and addition, from the coarsest to the 1/4
  level; per-pixel embeddings = a 3×3 conv (with bias) of the finest output; Kaiming-uniform
  (a=1) initialisation, zero biases (detectron2's ``c2_xavier_fill``);
- transformer decoder: the raw coarsest backbone feature through a 1×1 ``input_proj`` (when
  its width differs), 2-D sine positions (128 + 128 channels, normalised, scale 2π) added to
  the keys, learnt query positions added to queries and keys, targets starting at zero,
  post-norm layers (self-attention, cross-attention, FFN with ReLU, each with dropout,
  residual and LayerNorm), one shared final LayerNorm applied to every layer's output
  (deep supervision); Xavier-uniform initialisation of the transformer's matrices;
- mask logits: ``einsum(MLP₃(q), per-pixel embeddings)``, the MLP with 3 layers and ReLU.
S-Seg (Lai, CVPR 2025): 6 decoder layers, N = 64 queries, no class head; the pixel decoder
and backbone initialisation are not stated (options: ``MaskFormerConfig``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from labelless.models.backbones import build_backbone


@dataclass
class MaskFormerConfig:
    backbone: str = "tiny"  # tiny | timm:<name> | hf:<hub name or folder> (models/backbones.py)
    backbone_pretrained: bool = False  # timm: ImageNet weights by name (downloaded)
    freeze_backbone: bool = False
    backbone_options: dict = field(default_factory=dict)  # e.g. {"width": 32} for tiny
    conv_dim: int = 256  # pixel decoder width [MaskFormer 256]
    mask_dim: int = 256  # per-pixel embedding width [256]
    hidden_dim: int = 256  # transformer width [256]
    num_queries: int = 64  # [S-Seg 64]
    dec_layers: int = 6  # [S-Seg 6]
    nheads: int = 8  # [MaskFormer 8]
    dim_feedforward: int = 2048  # [2048]
    dropout: float = 0.1  # [0.1]
    norm_groups: int = 32  # GroupNorm groups in the pixel decoder [32]


def c2_xavier_fill(module: nn.Module) -> None:
    """Kaiming-uniform (a=1) weights and zero bias, as detectron2's ``c2_xavier_fill``."""
    nn.init.kaiming_uniform_(module.weight, a=1)
    if module.bias is not None:
        nn.init.zeros_(module.bias)


def _conv_norm(cin: int, cout: int, k: int, groups: int, relu: bool) -> nn.Sequential:
    conv = nn.Conv2d(cin, cout, k, padding=k // 2, bias=False)
    c2_xavier_fill(conv)
    layers = [conv, nn.GroupNorm(min(groups, cout), cout)]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)


class PixelDecoder(nn.Module):
    """FPN over backbone features (finest first) → per-pixel embeddings ``B×mask_dim×H/4×W/4``."""

    def __init__(self, in_channels: list[int], conv_dim: int = 256, mask_dim: int = 256, groups: int = 32):
        super().__init__()
        self.lateral = nn.ModuleList([_conv_norm(c, conv_dim, 1, groups, relu=False) for c in in_channels[:-1]])
        self.output = nn.ModuleList([_conv_norm(conv_dim, conv_dim, 3, groups, relu=True)
                                     for _ in in_channels[:-1]])
        self.top = _conv_norm(in_channels[-1], conv_dim, 3, groups, relu=True)
        self.mask_features = nn.Conv2d(conv_dim, mask_dim, 3, padding=1)
        c2_xavier_fill(self.mask_features)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        y = self.top(features[-1])
        for x, lat, out in zip(features[-2::-1], self.lateral[::-1], self.output[::-1]):
            x = lat(x)
            y = out(x + F.interpolate(y, size=x.shape[-2:], mode="nearest"))
        return self.mask_features(y)


def sine_positions(b: int, h: int, w: int, dim: int, device, dtype=torch.float32) -> torch.Tensor:
    """DETR's normalised 2-D sine positions ``B×dim×h×w`` (y in the first half, x in the second)."""
    half = dim // 2
    y = torch.arange(1, h + 1, device=device, dtype=torch.float32)[:, None].expand(h, w)
    x = torch.arange(1, w + 1, device=device, dtype=torch.float32)[None, :].expand(h, w)
    y, x = y / (h + 1e-6) * 2 * math.pi, x / (w + 1e-6) * 2 * math.pi
    dim_t = 10000 ** (2 * (torch.arange(half, device=device) // 2) / half)

    def embed(c):  # h×w → half×h×w: sin at even, cos at odd channels
        v = c[..., None] / dim_t
        return torch.stack((v[..., 0::2].sin(), v[..., 1::2].cos()), dim=-1).flatten(-2).permute(2, 0, 1)

    return torch.cat([embed(y), embed(x)], dim=0)[None].expand(b, -1, -1, -1).to(dtype)


class DecoderLayer(nn.Module):
    """DETR's post-norm decoder layer: self-attention, cross-attention, FFN."""

    def __init__(self, d: int, nheads: int, ffn: int, dropout: float):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d, nheads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(d, nheads, dropout=dropout, batch_first=True)
        self.linear1, self.linear2 = nn.Linear(d, ffn), nn.Linear(ffn, d)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.drop, self.drop1, self.drop2, self.drop3 = (nn.Dropout(dropout) for _ in range(4))

    def forward(self, tgt, memory, query_pos, pos):
        q = k = tgt + query_pos
        tgt = self.norm1(tgt + self.drop1(self.self_attn(q, k, tgt, need_weights=False)[0]))
        attn = self.cross_attn(tgt + query_pos, memory + pos, memory, need_weights=False)[0]
        tgt = self.norm2(tgt + self.drop2(attn))
        tgt = self.norm3(tgt + self.drop3(self.linear2(self.drop(F.relu(self.linear1(tgt))))))
        return tgt


def mlp(dims: list[int]) -> nn.Sequential:
    """Linear layers of the given widths with ReLU between them (none after the last)."""
    layers = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers += [nn.Linear(a, b)] + ([nn.ReLU(inplace=True)] if i < len(dims) - 2 else [])
    return nn.Sequential(*layers)


class MaskFormer(nn.Module):
    """``B×3×H×W`` (normalised) → per decoder layer: mask logits ``B×N×H/4×W/4`` and query
    features ``B×N×hidden`` (the last layer last)."""

    def __init__(self, cfg: MaskFormerConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = build_backbone(cfg.backbone, cfg.backbone_pretrained, **cfg.backbone_options)
        if cfg.freeze_backbone:  # the pretrained part only (a ViT's pyramid convs still train)
            getattr(self.backbone, "pretrained_part", self.backbone).requires_grad_(False)
        chans = self.backbone.channels
        self.pixel_decoder = PixelDecoder(chans, cfg.conv_dim, cfg.mask_dim, cfg.norm_groups)
        d = cfg.hidden_dim
        self.input_proj = nn.Conv2d(chans[-1], d, 1) if chans[-1] != d else nn.Identity()
        if isinstance(self.input_proj, nn.Conv2d):
            c2_xavier_fill(self.input_proj)
        self.query_embed = nn.Embedding(cfg.num_queries, d)
        self.layers = nn.ModuleList([DecoderLayer(d, cfg.nheads, cfg.dim_feedforward, cfg.dropout)
                                     for _ in range(cfg.dec_layers)])
        for p in self.layers.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        self.decoder_norm = nn.LayerNorm(d)
        self.mask_embed = mlp([d, d, d, cfg.mask_dim])

    @property
    def stride(self) -> int:
        return self.backbone.strides[-1]

    def forward(self, images: torch.Tensor, backbone_tokens: torch.Tensor | None = None
                ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Returns (mask logits per layer, query features per layer). ``backbone_tokens``: a
        frozen ViT backbone's patch tokens, computed earlier (``train/sseg/cache.py``)."""
        feats = self.backbone(images) if backbone_tokens is None else self.backbone.pyramid(backbone_tokens)
        pixel = self.pixel_decoder(feats)  # B×mask_dim×h4×w4
        src = self.input_proj(feats[-1])
        b, _, h, w = src.shape
        pos = sine_positions(b, h, w, src.shape[1], src.device, src.dtype).flatten(2).transpose(1, 2)
        memory = src.flatten(2).transpose(1, 2)  # B×hw×d
        query_pos = self.query_embed.weight[None].expand(b, -1, -1).to(memory.dtype)
        tgt = torch.zeros_like(query_pos)
        masks, queries = [], []
        for layer in self.layers:
            tgt = layer(tgt, memory, query_pos, pos)
            q = self.decoder_norm(tgt)
            queries.append(q)
            masks.append(torch.einsum("bqc,bchw->bqhw", self.mask_embed(q), pixel))
        return masks, queries
