"""A standard closed-vocabulary segmenter (the student of self-training, S-Seg+): a
backbone (``models/backbones.py``: ``timm:<name>``, ``hf:<DINO folder>`` or ``tiny``) and a
decode head that gives per-pixel logits over a fixed class list.

Heads (``head``):

- ``upernet`` (UperNet, Xiao et al. 2018, as mmsegmentation's ``UPerHead``, S-Seg+'s
  segmenter): a pyramid pooling module (scales 1, 2, 3, 6) on the coarsest level, FPN
  laterals + top-down sum, 3×3 convs, every level upsampled to the finest and fused by a
  3×3 conv, dropout, 1×1 classifier;
- ``fpn`` (semantic FPN, Kirillov et al. 2019, simplified): laterals + top-down sum, each
  level's 3×3 conv upsampled to the finest and summed, 1×1 classifier;
- ``linear``: BN + 1×1 classifier on the stride-16 level (a linear probe).

Logits are at the finest level's stride (4 for the hierarchical backbones and the ViT
pyramid); ``Segmenter`` upsamples them like any scorer's scores. Norm layers: ``bn``
(mmseg's choice; SyncBN under DDP is the user's ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``)
or ``gn`` (≤ 32 groups of ≥ 2 channels: small CPU batches). A checkpoint (``"format": "labelless-segmenter"``)
records the config, incl. the class names; ``loader`` builds a ``ClosedSetScorer``.

Plain ViTs from timm (MAE's ``vit_base_patch16_224.mae`` as S-Seg+) get four blocks'
outputs (``out_indices``; MAE's segmentation uses 3, 5, 7, 11 for ViT-B) rescaled ×4, ×2,
×1, ×½ by ``TimmBackbone``'s neck, as BEiT / MAE segmentation do.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from labelless.errors import SettingError
from labelless.models.backbones import build_backbone

FORMAT = "labelless-segmenter"
HEADS = ("upernet", "fpn", "linear")


@dataclasses.dataclass
class SegmenterConfig:
    classes: list[str]  # the closed vocabulary, in label-id order
    backbone: str = "tiny"
    backbone_options: dict = dataclasses.field(default_factory=dict)
    pretrained: bool = False  # timm's weights for a timm: backbone (downloaded by name)
    weights: str | None = None  # a local timm backbone weight file (timm's state-dict layout) instead
    freeze_backbone: bool = False  # freeze the pretrained part (timm model / DINO ViT; kept in eval mode)
    head: str = "upernet"
    channels: int = 512  # head width (mmseg UPerHead: 512)
    pool_scales: tuple[int, ...] = (1, 2, 3, 6)
    norm: str = "bn"
    dropout: float = 0.1
    image_size: int = 512  # training crop / default input side

    def __post_init__(self):
        if self.head not in HEADS:
            raise SettingError(f"segmenter head must be one of {', '.join(HEADS)}, got {self.head!r}")
        if self.norm not in ("bn", "gn"):
            raise SettingError(f"segmenter norm must be bn or gn, got {self.norm!r}")
        if not self.classes:
            raise SettingError("a segmenter needs its class names (classes)")
        self.pool_scales = tuple(self.pool_scales)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SegmenterConfig":
        return cls(**d)


def _norm(kind: str, c: int) -> nn.Module:
    """BatchNorm, or GroupNorm with the most groups ≤ 32 that divide ``c`` into groups of ≥ 2
    channels (so the 1×1 pyramid-pooling branch still has two values per group)."""
    if kind == "bn":
        return nn.BatchNorm2d(c)
    return nn.GroupNorm(max([g for g in range(1, 33) if c % g == 0 and c // g >= 2] or [1]), c)


def conv_norm_relu(cin: int, cout: int, k: int, norm: str) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), _norm(norm, cout), nn.ReLU(inplace=True))


def _up(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class PyramidPooling(nn.Module):
    """PSPNet's module: the input plus its adaptive-average-pooled versions at each scale
    (1×1 conv each, upsampled back), concatenated, then a 3×3 conv."""

    def __init__(self, cin: int, c: int, scales: tuple[int, ...], norm: str):
        super().__init__()
        self.scales = scales
        self.branches = nn.ModuleList([conv_norm_relu(cin, c, 1, norm) for _ in scales])
        self.bottleneck = conv_norm_relu(cin + len(scales) * c, c, 3, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = [_up(b(F.adaptive_avg_pool2d(x, s)), x.shape[-2:]) for s, b in zip(self.scales, self.branches)]
        return self.bottleneck(torch.cat([x, *pooled], dim=1))


class UperNetHead(nn.Module):
    def __init__(self, in_channels: list[int], c: int, num_classes: int, scales, norm: str, dropout: float):
        super().__init__()
        self.ppm = PyramidPooling(in_channels[-1], c, scales, norm)
        self.laterals = nn.ModuleList([conv_norm_relu(ci, c, 1, norm) for ci in in_channels[:-1]])
        self.fpn_convs = nn.ModuleList([conv_norm_relu(c, c, 3, norm) for _ in in_channels[:-1]])
        self.fuse = conv_norm_relu(len(in_channels) * c, c, 3, norm)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(c, num_classes, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        levels = [lat(f) for lat, f in zip(self.laterals, feats[:-1])] + [self.ppm(feats[-1])]
        for i in range(len(levels) - 1, 0, -1):  # top-down
            levels[i - 1] = levels[i - 1] + _up(levels[i], levels[i - 1].shape[-2:])
        outs = [conv(x) for conv, x in zip(self.fpn_convs, levels[:-1])] + [levels[-1]]
        size = outs[0].shape[-2:]
        fused = self.fuse(torch.cat([outs[0], *[_up(o, size) for o in outs[1:]]], dim=1))
        return self.classifier(self.dropout(fused))


class FPNHead(nn.Module):
    def __init__(self, in_channels: list[int], c: int, num_classes: int, norm: str, dropout: float):
        super().__init__()
        self.laterals = nn.ModuleList([nn.Conv2d(ci, c, 1) for ci in in_channels])
        self.convs = nn.ModuleList([conv_norm_relu(c, c, 3, norm) for _ in in_channels])
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(c, num_classes, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        levels = [lat(f) for lat, f in zip(self.laterals, feats)]
        for i in range(len(levels) - 1, 0, -1):
            levels[i - 1] = levels[i - 1] + _up(levels[i], levels[i - 1].shape[-2:])
        size = levels[0].shape[-2:]
        summed = sum(_up(conv(x), size) for conv, x in zip(self.convs, levels))
        return self.classifier(self.dropout(summed))


class LinearHead(nn.Module):
    """BN + 1×1 classifier on the level of stride 16 (the last one below it when none is)."""

    def __init__(self, in_channels: list[int], strides: list[int], num_classes: int, norm: str):
        super().__init__()
        self.level = max(i for i, s in enumerate(strides) if s <= 16)
        c = in_channels[self.level]
        self.norm = _norm(norm, c)
        self.classifier = nn.Conv2d(c, num_classes, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.classifier(self.norm(feats[self.level]))


class SemanticSegmenter(nn.Module):
    """Normalised ``B×3×H×W`` → per-class logits ``B×C×H/s×W/s`` (s = ``stride``)."""

    def __init__(self, cfg: SegmenterConfig):
        super().__init__()
        self.cfg = cfg
        options = dict(cfg.backbone_options)
        if cfg.weights:  # a local file in timm's state-dict layout, loaded by timm (pos. embeddings resized)
            if not cfg.backbone.startswith("timm:"):
                raise SettingError(f"weights={cfg.weights}: a local weight file is for timm: backbones, not "
                                   f"{cfg.backbone!r}")
            options["weights"] = cfg.weights
        self.backbone = build_backbone(cfg.backbone, cfg.pretrained, **options)
        self.frozen = getattr(self.backbone, "pretrained_part", self.backbone) if cfg.freeze_backbone else None
        if self.frozen is not None:
            self.frozen.requires_grad_(False)
        ch, st, k = self.backbone.channels, self.backbone.strides, len(cfg.classes)
        if cfg.head == "upernet":
            self.head = UperNetHead(ch, cfg.channels, k, cfg.pool_scales, cfg.norm, cfg.dropout)
        elif cfg.head == "fpn":
            self.head = FPNHead(ch, cfg.channels, k, cfg.norm, cfg.dropout)
        else:
            self.head = LinearHead(ch, st, k, cfg.norm)
        self.stride = st[self.head.level] if cfg.head == "linear" else st[0]
        self.register_buffer("mean", torch.tensor(self.backbone.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.backbone.std).view(1, 3, 1, 1), persistent=False)
        self.image_size = (cfg.image_size, cfg.image_size)
        self.classes = list(cfg.classes)

    def train(self, mode: bool = True) -> "SemanticSegmenter":
        super().train(mode)
        if self.frozen is not None:
            self.frozen.eval()  # a frozen backbone's norm statistics and dropout stay as trained
        return self

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))


def save_segmenter(model: SemanticSegmenter, path: str | os.PathLike, **extra) -> Path:
    from labelless.fileio import atomic_path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "config": model.cfg.to_dict(), "state_dict": model.state_dict(), **extra}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_segmenter(path: str | os.PathLike, device="cpu") -> SemanticSegmenter:
    from labelless.errors import WeightsError

    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise WeightsError(f"{path}: not a labelless segmenter checkpoint (format {FORMAT!r})")
    cfg = SegmenterConfig.from_dict({**ckpt["config"], "pretrained": False, "weights": None})
    model = SemanticSegmenter(cfg)
    model.load_state_dict(ckpt["state_dict"])
    model.source = str(path)
    return model.to(device).eval()
