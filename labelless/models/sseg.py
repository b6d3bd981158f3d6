"""S-Seg (Lai, CVPR 2025, arXiv 2401.12217): a MaskFormer without class head + a text
encoder trained from scratch, in one 256-d joint space.

- image side (``models/maskformer.py``): N mask logits per image and N query features;
  mask embeddings = ``proj(query feature)``; the image embedding for the contrastive loss
  = ``proj(mean of the N query features)``, the same 2-layer MLP ``proj``;
- text side (``models/text.py``): the end-of-text feature → a 2-layer MLP → 256-d;
- a learnable temperature (CLIP's: logit scale initialised to 1/0.07, clamped to 100).

Inference (``scorers.MaskClassificationScorer``): per-mask class probabilities
softmax(logit_scale · cos(mask embedding, class embedding)), combined as MaskFormer's
semantic inference Σ sigmoid(mask) · p. ``SSegConfig`` is one JSON model config
(``models/configs/sseg-*.json``); a checkpoint records it (``save_sseg`` / ``load_sseg``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from labelless.errors import SettingError, WeightsError
from labelless.fileio import atomic_path
from labelless.models.maskformer import MaskFormer, MaskFormerConfig
from labelless.models.text import TextConfig, TextEncoder, projection_mlp

FORMAT = "labelless-sseg"
SSEG_CONFIGS = {"sseg-paper": "sseg-paper.json", "sseg-tiny": "sseg-tiny.json"}


@dataclass
class SSegConfig:
    image: MaskFormerConfig = field(default_factory=MaskFormerConfig)
    text: TextConfig = field(default_factory=TextConfig)
    embed_dim: int = 256  # the joint space [S-Seg 256]
    proj_hidden: int = 256  # hidden width of the image side's 2-layer MLP
    image_size: int = 448  # training side [S-Seg 448]
    init_logit_scale: float = math.log(1 / 0.07)  # CLIP's
    logit_scale_max: float = 100.0

    @classmethod
    def from_dict(cls, d: dict) -> "SSegConfig":
        d = dict(d)
        image = MaskFormerConfig(**d.pop("image", {}))
        text = TextConfig(**d.pop("text", {}))
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise SettingError(f"unknown S-Seg model config key(s): {', '.join(unknown)}")
        return cls(image=image, text=text, **d)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def sseg_config(name_or_path: str) -> SSegConfig:
    """A shipped config by name (``sseg-paper``, ``sseg-tiny``) or a JSON file."""
    if name_or_path in SSEG_CONFIGS:
        text = resources.files("labelless.models").joinpath("configs", SSEG_CONFIGS[name_or_path]).read_text()
    elif Path(name_or_path).is_file():
        text = Path(name_or_path).read_text(encoding="utf-8")
    else:
        raise SettingError(f"unknown S-Seg model {name_or_path!r}: {', '.join(SSEG_CONFIGS)} or a JSON file")
    return SSegConfig.from_dict(json.loads(text))


class SSegModel(nn.Module):
    """The S-Seg image and text encoders; also a ``scorers.MaskClassifier``."""

    def __init__(self, cfg: SSegConfig, name: str = "sseg"):
        super().__init__()
        if cfg.text.embed_dim != cfg.embed_dim:
            raise SettingError(f"text embed_dim {cfg.text.embed_dim} must equal the joint space {cfg.embed_dim}")
        self.cfg, self.name = cfg, name
        self.source: str | None = None  # the checkpoint it was read from
        self.image = MaskFormer(cfg.image)
        self.proj = projection_mlp(cfg.image.hidden_dim, cfg.proj_hidden, cfg.embed_dim)
        self.text = TextEncoder(cfg.text)
        self.log_scale = nn.Parameter(torch.tensor(float(cfg.init_logit_scale)))
        bb = self.image.backbone
        self.register_buffer("mean", torch.tensor(bb.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(bb.std).view(1, 3, 1, 1), persistent=False)
        self.image_size = (cfg.image_size, cfg.image_size)
        self.embed_dim = cfg.embed_dim

    # ------------------------------------------------------------------ the MaskClassifier interface
    @property
    def stride(self) -> int:
        return self.image.stride

    @property
    def logit_scale(self) -> float:
        return float(self.log_scale.detach().exp().clamp(max=self.cfg.logit_scale_max))

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)

    def mask_predictions(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised ``B×3×H×W`` → (mask logits ``B×N×H/4×W/4``, mask embeddings ``B×N×D``)."""
        masks, queries = self.image(images)
        return masks[-1], self.proj(queries[-1])

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        return self.text.encode(texts)

    def text_parameters(self):
        return self.text.parameters()

    # ------------------------------------------------------------------ training
    def forward(self, images: torch.Tensor, tokens: torch.Tensor, backbone_tokens: torch.Tensor | None = None
                ) -> dict:
        """One training forward: normalised images ``B×3×H×W``, text tokens ``B×L`` (and, for a
        frozen ViT backbone, optionally its cached patch tokens ``B×C×h×w`` instead of running it) →
        ``masks`` (per decoder layer, ``B×N×h×w`` logits, last = final), ``image``
        (``B×D`` L2-normalised), ``text`` (``B×D`` L2-normalised), ``logit_scale``."""
        masks, queries = self.image(images, backbone_tokens)
        image = F.normalize(self.proj(queries[-1].mean(dim=1)), dim=-1)
        text = F.normalize(self.text(tokens), dim=-1)
        scale = self.log_scale.exp().clamp(max=self.cfg.logit_scale_max)
        return {"masks": masks, "image": image, "text": text, "logit_scale": scale}


def build_sseg(config: str | SSegConfig, device="cpu") -> SSegModel:
    cfg = sseg_config(config) if isinstance(config, str) else config
    name = config if isinstance(config, str) and config in SSEG_CONFIGS else "sseg"
    return SSegModel(cfg, name).to(device)


def save_sseg(model: SSegModel, path: str | os.PathLike, **extra) -> Path:
    """A labelless S-Seg checkpoint (atomic): format, model config, weights."""
    payload = {"format": FORMAT, "model": model.name, "model_cfg": model.cfg.to_dict(), **extra,
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_sseg(path: str | os.PathLike, device="cpu") -> SSegModel:
    """The model of a ``save_sseg`` checkpoint, rebuilt from its recorded config."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        from labelless.errors import describe

        raise WeightsError(f"cannot read S-Seg checkpoint {path}: {describe(e)}") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise WeightsError(f"{path} is not a labelless S-Seg checkpoint")
    model = SSegModel(SSegConfig.from_dict(ckpt["model_cfg"]), ckpt.get("model", "sseg"))
    model.source = str(path)
    missing, unexpected = model.load_state_dict(ckpt["state_dict"], strict=False)
    if missing or unexpected:
        raise WeightsError(f"{path}: the weights do not match the recorded model config "
                           f"({len(missing)} missing, {len(unexpected)} unexpected keys)")
    return model.to(device).eval()
