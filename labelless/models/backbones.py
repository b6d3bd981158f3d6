"""Backbones for mask-classification models: normalised ``B×3×H×W`` → four feature maps,
finest first (strides about 4, 8, 16, 32), with their ``channels``, ``strides``, ``mean``
and ``std``.

``build_backbone(spec, pretrained, **options)``; ``spec`` is one of

- ``tiny``: four strided conv stages (random; for tests and CPU smoke runs);
- ``timm:<name>``: any timm model with ``features_only`` (Swin-S as S-Seg:
  ``timm:swin_small_patch4_window7_224`` with ``img_size`` / ``strict_img_size`` options;
  ResNets, ConvNeXts …; plain ViTs such as MAE's ``vit_base_patch16_224.mae`` through a
  ×4/×2/×1/×½ neck); ``pretrained`` downloads timm's weights by name;
- ``hf:<hub name or folder>``: a Hugging Face DINO / DINOv2 ViT (e.g. the DINOv2-S folder
  of ../shared/weights) read by ``masks.dino.load_dino``; its single-scale patch tokens
  become a pyramid as ViTDet's simple feature pyramid does (two 2× transposed convs, one,
  none, a 2× max-pool: strides p/4, p/2, p, 2p).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from labelless.errors import SettingError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class TinyBackbone(nn.Module):
    """A stride-4 stem and three stride-2 stages: channels ``width·(1, 2, 4, 8)``."""

    def __init__(self, width: int = 16):
        super().__init__()
        w = width
        self.stages = nn.ModuleList([
            nn.Sequential(nn.Conv2d(3, w, 4, stride=4), nn.GroupNorm(1, w), nn.GELU()),
            *[nn.Sequential(nn.Conv2d(w * 2 ** i, w * 2 ** (i + 1), 3, stride=2, padding=1),
                            nn.GroupNorm(1, w * 2 ** (i + 1)), nn.GELU()) for i in range(3)]])
        self.channels = [w, 2 * w, 4 * w, 8 * w]
        self.strides = [4, 8, 16, 32]
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for stage in self.stages:
            x = stage(x)
            out.append(x)
        return out


class TimmBackbone(nn.Module):
    """The last four feature levels of a timm ``features_only`` model (NHWC outputs, as
    Swin's, are made NCHW). A plain ViT (every level at one stride) gives four blocks'
    outputs (``out_indices``, default the last block of each quarter of the depth) and a
    neck rescales them ×4, ×2, ×1, ×½ (BEiT / MAE segmentation's multi-level neck)."""

    def __init__(self, name: str, pretrained: bool = False, **options):
        super().__init__()
        self.name = name
        with torch.device("meta"):  # the architecture's levels, without weights or memory
            probe = _timm_features(name, False, {k: v for k, v in options.items() if k != "weights"}).feature_info
        if len(set(probe.reduction())) == 1:  # a plain ViT: 4 blocks, any input size (pos. embeddings resized)
            d = len(probe.info)
            options = {"dynamic_img_size": True, "out_indices": (d // 4 - 1, d // 2 - 1, 3 * d // 4 - 1, d - 1),
                       **options}
        self.body = _timm_features(name, pretrained, dict(options))  # built (and its weights loaded) once
        info = self.body.feature_info
        self.take = list(range(len(info.channels())))[-4:]
        self.channels = [info.channels()[i] for i in self.take]
        self.strides = [info.reduction()[i] for i in self.take]
        self.neck = None
        if len(set(self.strides)) == 1 and len(self.take) == 4:
            c, s = self.channels[0], self.strides[0]
            self.neck = nn.ModuleList([
                nn.Sequential(nn.ConvTranspose2d(c, c, 2, stride=2), nn.BatchNorm2d(c), nn.GELU(),
                              nn.ConvTranspose2d(c, c, 2, stride=2)),
                nn.ConvTranspose2d(c, c, 2, stride=2), nn.Identity(), nn.MaxPool2d(2, ceil_mode=True)])
            self.strides = [s // 4, s // 2, s, 2 * s]
        self.nhwc = str(getattr(self.body, "output_fmt", "NCHW")).endswith("NHWC")
        cfg = getattr(self.body, "pretrained_cfg", {}) or {}
        self.mean, self.std = tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))

    @property
    def pretrained_part(self) -> nn.Module:
        """What ``freeze_backbone`` freezes: the timm model, not the ViT neck."""
        return self.body

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = self.body(x)
        feats = [feats[i] for i in self.take]
        feats = [f.permute(0, 3, 1, 2).contiguous() for f in feats] if self.nhwc else feats
        return [m(f) for m, f in zip(self.neck, feats)] if self.neck is not None else feats


def _check_weight_file(name: str, path) -> None:
    """WeightsError naming ``path`` unless it holds most of timm ``name``'s parameters (timm's
    own loader takes a feature model's weights without a strict check)."""
    import timm

    from labelless.errors import WeightsError

    try:
        sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        raise WeightsError(f"{path}: cannot be read as a weight file ({type(e).__name__}: {e})") from e
    sd = sd.get("state_dict", sd.get("model", sd)) if isinstance(sd, dict) else sd
    with torch.device("meta"):
        want = {k for k in timm.create_model(name).state_dict() if not k.startswith(("head", "fc."))}
    have = set(sd) if isinstance(sd, dict) else set()
    if len(want & have) < 0.9 * len(want):
        raise WeightsError(f"{path}: not weights of timm {name!r} (holds {len(want & have)} of its {len(want)} "
                           f"parameters; e.g. missing {sorted(want - have)[:3]})")


def _timm_features(name: str, pretrained: bool, options: dict) -> nn.Module:
    import timm

    weights = options.pop("weights", None)
    if weights:  # a local weight file (timm's own state-dict layout), loaded as timm loads its hub files
        from labelless.errors import MissingFileError

        if not Path(weights).is_file():
            raise MissingFileError(f"backbone weights {weights}: no such file")
        _check_weight_file(name, weights)
        options = {**options, "pretrained_cfg_overlay": {"file": str(weights)}}
        pretrained = True
    try:
        return timm.create_model(name, pretrained=pretrained, features_only=True, **options)
    except TypeError as e:  # an option this architecture does not take
        raise SettingError(f"timm backbone {name!r} does not take the options {sorted(options)}: {e} "
                           "(backbone_options in the config)") from e
    except (RuntimeError, KeyError, ValueError) as e:  # unknown name, weights not fetchable or not fitting
        if weights:
            from labelless.errors import WeightsError

            raise WeightsError(f"{weights}: not weights of timm {name!r}: {str(e).splitlines()[0][:300]}") from e
        raise SettingError(f"timm backbone {name!r}: {str(e).splitlines()[0]}") from e


class HFViTBackbone(nn.Module):
    """A DINO / DINOv2 ViT's last-layer patch tokens → a 4-level simple feature pyramid."""

    def __init__(self, name: str, **_ignored):
        super().__init__()
        from labelless.masks.dino import load_dino

        dino = load_dino(name)
        self.vit, self.patch, self.prefix = dino.model, dino.patch_size, dino.num_prefix_tokens
        self.interpolate = dino.interpolate_kwarg
        c = dino.hidden_size
        self.vit.requires_grad_(True).train()  # load_dino freezes it; MaskFormerConfig decides
        self.up4 = nn.Sequential(nn.ConvTranspose2d(c, c // 2, 2, stride=2), nn.GroupNorm(1, c // 2), nn.GELU(),
                                 nn.ConvTranspose2d(c // 2, c // 4, 2, stride=2))
        self.up2 = nn.ConvTranspose2d(c, c // 2, 2, stride=2)
        self.channels = [c // 4, c // 2, c, c]
        p = self.patch
        self.strides = [max(1, p // 4), max(1, p // 2), p, 2 * p]
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD

    @property
    def pretrained_part(self) -> nn.Module:
        """What ``freeze_backbone`` freezes: the ViT, not the pyramid."""
        return self.vit

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """``B×C×h×w`` patch tokens of images cropped to a multiple of the patch size."""
        h, w = x.shape[-2] // self.patch, x.shape[-1] // self.patch
        x = x[..., : h * self.patch, : w * self.patch]
        kwargs = {"interpolate_pos_encoding": True} if self.interpolate else {}
        seq = self.vit(pixel_values=x, **kwargs).last_hidden_state[:, self.prefix:]
        return seq.transpose(1, 2).reshape(x.shape[0], -1, h, w)

    def pyramid(self, t: torch.Tensor) -> list[torch.Tensor]:
        """Patch tokens ``B×C×h×w`` → the four levels (strides p/4, p/2, p, 2p)."""
        return [self.up4(t), self.up2(t), t, F.max_pool2d(t, 2, ceil_mode=True)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.pyramid(self.tokens(x))


def build_backbone(spec: str, pretrained: bool = False, **options) -> nn.Module:
    """The backbone ``spec`` names (module docstring)."""
    if spec == "tiny":
        return TinyBackbone(**options)
    if spec.startswith("timm:"):
        return TimmBackbone(spec[len("timm:"):], pretrained, **options)
    if spec.startswith("hf:"):
        return HFViTBackbone(spec[len("hf:"):], **options)
    raise SettingError(f"unknown backbone {spec!r}: use tiny, timm:<name> or hf:<hub name or folder>")
