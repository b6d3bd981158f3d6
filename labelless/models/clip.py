"""open_clip adapter: build any open_clip CLIP, load its weights, and expose one
dense-feature API (``DenseCLIP.dense_features``) plus text encoding.

Where weights come from (``pretrained``):
- ``None`` / ``"none"``: random initialisation (no file, no download);
- an open_clip pretrained tag, e.g. ``ViT-B-16`` + ``openai`` (downloaded by open_clip
  into its cache, or read from that cache when offline);
- a local checkpoint file: ``.safetensors`` or a torch file read with
  ``torch.load(weights_only=True)``; a plain state dict, ``{"state_dict": ...}`` or a
  labelless checkpoint (``{"format": "labelless-clip", "model": NAME, "state_dict": ...}``);
- model names ``hf-hub:org/repo`` and ``local-dir:/path`` carry their own weights.

Tiny models for tests and smoke runs ship with the package (``tiny-vit``,
``tiny-convnext``; configs in ``models/configs/``). They have no pretrained tags.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from labelless.fileio import atomic_path
from labelless.models.dense import (
    CONVNEXT_MODES,
    VIT_MODES,
    convnext_dense_features,
    vit_dense_features,
)

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

# name -> config file in labelless/models/configs (explicit, no registration side effects)
TINY_MODELS = {"tiny-vit": "tiny-vit.json", "tiny-convnext": "tiny-convnext.json"}


class WeightsError(RuntimeError):
    """Weights could not be found, fetched or loaded; the message says how to supply them."""


@dataclass(frozen=True)
class ModelInfo:
    name: str
    pretrained: str | None
    kind: str  # "vit" | "convnext"
    image_size: tuple[int, int]
    stride: int
    embed_dim: int


def tiny_model_config(name: str) -> dict:
    text = resources.files("labelless.models").joinpath("configs", TINY_MODELS[name]).read_text()
    return json.loads(text)


def _is_none(pretrained) -> bool:
    return pretrained is None or str(pretrained).lower() in ("", "none", "random")


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a checkpoint file. Returns (state dict, metadata of a labelless checkpoint or {})."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"checkpoint file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            ckpt = load_file(str(path), device="cpu")
        else:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file, pickle with code, wrong format, ...
        raise WeightsError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from e
    meta = {}
    if isinstance(ckpt, dict) and ckpt.get("format") == "labelless-clip":
        meta = {k: v for k, v in ckpt.items() if k != "state_dict"}
    if isinstance(ckpt, dict):
        for key in ("state_dict", "model"):
            if isinstance(ckpt.get(key), dict):
                ckpt = ckpt[key]
                break
    if not isinstance(ckpt, dict) or not ckpt or not all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise WeightsError(f"{path} does not hold a state dict of tensors")
    if all(k.startswith("module.") for k in ckpt):
        ckpt = {k[len("module."):]: v for k, v in ckpt.items()}
    return ckpt, meta


def load_weights(model: nn.Module, path: str | os.PathLike) -> dict:
    """Load a checkpoint file into an open_clip model (strict; ViT positions resized)."""
    state, meta = read_state_dict(path)
    key = "visual.positional_embedding"
    if key in state and hasattr(model.visual, "positional_embedding"):
        target = model.visual.positional_embedding
        if state[key].shape != target.shape:
            from labelless.models.dense import resize_pos_embed
            side = int(round((target.shape[0] - 1) ** 0.5))
            state[key] = resize_pos_embed(state[key], (side, side))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise WeightsError(
            f"checkpoint {path} does not match the model: "
            f"{len(missing)} missing keys {missing[:8]}, {len(unexpected)} unexpected keys {unexpected[:8]}")
    return meta


def _offline_help(name: str, pretrained: str | None, err: Exception) -> WeightsError:
    return WeightsError(
        f"could not get weights for model {name!r} (pretrained={pretrained!r}): "
        f"{type(err).__name__}: {err}\n"
        "This machine may be offline. Either download the checkpoint on a machine with "
        "network access and pass its path (e.g. --pretrained /path/to/open_clip_model.safetensors), "
        "point HF_HOME / --cache-dir at a cache that already holds it, or use --pretrained none "
        "for random weights.")


def create_open_clip(name: str, pretrained: str | None = None, cache_dir: str | None = None):
    """Build the open_clip model, its tokenizer and its (mean, std)."""
    import open_clip

    if name in TINY_MODELS:
        cfg = tiny_model_config(name)
        model = open_clip.CLIP(**cfg)
        tokenizer = open_clip.SimpleTokenizer(context_length=cfg["text_cfg"]["context_length"])
        if not _is_none(pretrained):
            if not Path(pretrained).exists():
                raise WeightsError(f"{name} has no pretrained tags; pass a checkpoint file or 'none' "
                                   f"(got {pretrained!r})")
            load_weights(model, pretrained)
        return model, tokenizer, (OPENAI_MEAN, OPENAI_STD)

    has_schema = name.startswith(("hf-hub:", "local-dir:"))
    if not has_schema and open_clip.get_model_config(name) is None:
        raise ValueError(f"unknown model {name!r}; `labelless models` lists them "
                         f"(tiny: {', '.join(TINY_MODELS)}; open_clip: {len(open_clip.list_models())} names)")
    file_weights = not has_schema and not _is_none(pretrained) and Path(pretrained).exists()
    if not has_schema and not _is_none(pretrained) and not file_weights:
        tags = open_clip.list_pretrained_tags_by_model(name)
        if pretrained not in tags:
            raise WeightsError(f"{pretrained!r} is neither a file nor a pretrained tag of {name} "
                               f"(tags: {', '.join(tags) or 'none'})")
    try:
        model = open_clip.create_model(
            name,
            pretrained=None if (has_schema or file_weights or _is_none(pretrained)) else pretrained,
            pretrained_text=False if (file_weights or _is_none(pretrained)) and not has_schema else True,
            cache_dir=cache_dir,
        )
        tokenizer = open_clip.get_tokenizer(name, cache_dir=cache_dir) if has_schema else open_clip.get_tokenizer(name)
    except (OSError, RuntimeError) as e:
        raise _offline_help(name, pretrained, e) from e
    if file_weights:
        load_weights(model, pretrained)
    pp = open_clip.get_model_preprocess_cfg(model)
    mean = tuple(pp.get("mean", OPENAI_MEAN))
    std = tuple(pp.get("std", OPENAI_STD))
    return model, tokenizer, (mean, std)


class DenseCLIP(nn.Module):
    """An open_clip CLIP with one dense-feature call for every backbone.

    ``dense_features(images)``: normalised ``B×3×H×W`` → ``B×D×h×w`` (not L2-normalised).
    ``encode_text(texts)``: list of strings → ``N×D`` L2-normalised.
    """

    def __init__(self, clip: nn.Module, tokenizer, mean, std, name: str, pretrained: str | None = None):
        super().__init__()
        self.clip = clip
        self.tokenizer = tokenizer
        self.name = name
        self.pretrained = None if _is_none(pretrained) else str(pretrained)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        visual = clip.visual
        if hasattr(visual, "trunk"):
            self.kind = "convnext"
            self.stride = 32
            self.modes = CONVNEXT_MODES
        elif hasattr(visual, "transformer") and hasattr(visual, "conv1"):
            self.kind = "vit"
            self.stride = visual.patch_size[0]
            self.modes = VIT_MODES
            if not getattr(visual.transformer, "batch_first", True):
                raise ValueError(f"{name}: only batch-first open_clip ViTs are supported")
        else:
            raise ValueError(f"{name}: unsupported vision tower {type(visual).__name__} "
                             "(labelless supports open_clip ViTs and timm ConvNeXts)")
        size = visual.image_size
        self.image_size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(self.name, self.pretrained, self.kind, self.image_size, self.stride,
                         self.embed_dim)

    @property
    def embed_dim(self) -> int:
        proj = self.clip.text_projection
        return proj.shape[1] if isinstance(proj, torch.Tensor) else proj.out_features

    @property
    def logit_scale(self) -> float:
        return float(self.clip.logit_scale.exp())

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """``B×3×H×W`` in [0, 1] → CLIP-normalised."""
        return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)

    def check_mode(self, mode: str) -> None:
        if mode not in self.modes:
            raise ValueError(f"mode {mode!r} is not available for {self.name} ({self.kind}); "
                             f"choose from {', '.join(self.modes)}")

    def dense_features(self, images: torch.Tensor, mode: str = "vanilla") -> torch.Tensor:
        self.check_mode(mode)
        if self.kind == "vit":
            return vit_dense_features(self.clip.visual, images, mode)
        return convnext_dense_features(self.clip.visual, images)

    @torch.no_grad()
    def encode_text(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        device = self.mean.device
        out = []
        for i in range(0, len(texts), batch_size):
            tokens = self.tokenizer(texts[i:i + batch_size]).to(device)
            out.append(F.normalize(self.clip.encode_text(tokens).float(), dim=-1))
        return torch.cat(out) if out else torch.zeros(0, self.embed_dim, device=device)


def build_clip(name: str, pretrained: str | None = None, device: str | torch.device = "cpu",
               cache_dir: str | None = None) -> DenseCLIP:
    """Build ``name`` with weights from ``pretrained`` (tag, file, or None) as a ``DenseCLIP``.

    A labelless checkpoint file records its model name; it may be given with any ``name``
    of the same architecture.
    """
    model, tokenizer, (mean, std) = create_open_clip(name, pretrained, cache_dir)
    dense = DenseCLIP(model, tokenizer, mean, std, name, pretrained)
    return dense.to(device).eval()


def save_checkpoint(dense: DenseCLIP, path: str | os.PathLike, **extra) -> Path:
    """Write a labelless CLIP checkpoint atomically (``torch.save`` to a temp file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": "labelless-clip", "model": dense.name, **extra,
               "state_dict": {k: v.detach().cpu() for k, v in dense.clip.state_dict().items()}}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def list_models() -> list[dict]:
    """Models, their pretrained tags and dense modes (for ``labelless models``)."""
    import open_clip

    rows = [{"name": n, "tags": [], "modes": list(VIT_MODES if "vit" in n else CONVNEXT_MODES)}
            for n in TINY_MODELS]
    for n in open_clip.list_models():
        cfg = open_clip.get_model_config(n) or {}
        vcfg = cfg.get("vision_cfg", {})
        timm_name = vcfg.get("timm_model_name") or ""
        if timm_name.startswith("convnext"):
            modes = list(CONVNEXT_MODES)
        elif "timm_model_name" not in vcfg and not isinstance(vcfg.get("layers"), (list, tuple)):
            modes = list(VIT_MODES)
        else:
            continue  # ResNets, other timm towers: not supported for dense features
        rows.append({"name": n, "tags": open_clip.list_pretrained_tags_by_model(n), "modes": modes})
    return rows
