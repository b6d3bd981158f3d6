"""DINO / DINOv2 patch features (Hugging Face transformers) and k-means masks from them.

``load_dino(name_or_path, device)`` loads a self-supervised ViT with ``AutoModel``:

- DINO v1: ``facebook/dino-vits16``, ``facebook/dino-vits8``, ``facebook/dino-vitb16``,
  ``facebook/dino-vitb8`` (``ViTModel``, patch 16 or 8, one CLS token). Position
  embeddings are interpolated to the input grid with ``interpolate_pos_encoding=True``
  (ViTModel's forward argument; without it a non-224 input is refused or mis-embedded).
- DINOv2: ``facebook/dinov2-small|base|large|giant`` (``Dinov2Model``, patch 14, one CLS
  token; its embeddings always interpolate the position grid, the forward has no switch)
  and ``facebook/dinov2-*-imagenet1k-1-layer``'s backbones; DINOv2 with registers
  (``Dinov2WithRegistersModel``: CLS + register tokens are dropped).
- a local folder written by ``save_pretrained`` (``config.json`` + weights) is read with
  ``local_files_only=True``. A hub name is read from the Hugging Face cache or
  downloaded; offline and not cached, a :class:`~labelless.errors.WeightsError`
  says how to pass a local folder instead.

``DinoBackbone.patch_features(images, size, which)``: uint8 ``B×3×H×W`` images → ImageNet
mean/std normalisation → resize so the short side is ``size`` (default: the image's
own) and both sides are multiples of the patch size (each side rounded to the nearest
multiple, at least one patch) → ``B×h×w×C`` float32 features of the last layer:
``which="tokens"``: the output patch tokens (after the final LayerNorm);
``which="keys"``: the keys of the last attention layer (all heads concatenated),
caught by a forward hook on its key projection (``k_proj`` in transformers ≥ 5,
``key`` before). Its two steps serve float images already in [0, 1] too (ProxyCLIP's VFM,
``scorers.ProxyCLIPScorer``): ``prepare`` (resize + normalise) and ``forward_features``
(the forward, without ``no_grad`` and without the float32 cast, so autocast applies).

``dino_kmeans_masks(backbone, images, k)``: per image, k-means on the patch grid (cosine
by default), one mask per non-empty cluster, upsampled (nearest) to the image size.
Example: CamVid 480×360 with ``size=448`` and DINOv2 → a 448×602 input, 32×43 patches.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from labelless.errors import SettingError, WeightsError, require
from labelless.masks.kmeans import kmeans

__all__ = ["DinoBackbone", "load_dino", "dino_kmeans_masks", "IMAGENET_MEAN", "IMAGENET_STD",
           "SUPPORTED_MODEL_TYPES", "input_size"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# config.model_type -> family; explicit, nothing registered by import
SUPPORTED_MODEL_TYPES = {"vit": "dino", "dinov2": "dinov2", "dinov2_with_registers": "dinov2"}
FEATURES = ("tokens", "keys")


def input_size(height: int, width: int, patch: int, size: int | None = None) -> tuple[int, int]:
    """Model input (H', W'): short side scaled to ``size`` (None: unchanged), then each
    side rounded to the nearest multiple of ``patch`` (at least one patch)."""
    scale = 1.0 if size is None else size / min(height, width)
    return tuple(max(1, round(s * scale / patch)) * patch for s in (height, width))


def last_layer(model: torch.nn.Module) -> torch.nn.Module:
    """The last transformer block: ``encoder.layer[-1]`` (Dinov2Model, ViTModel before
    transformers 5) or ``layers[-1]`` (ViTModel in transformers 5)."""
    for path in ("encoder.layer", "layers", "encoder.layers"):
        mod = model
        for part in path.split("."):
            mod = getattr(mod, part, None)
        if isinstance(mod, torch.nn.ModuleList) and len(mod):
            return mod[-1]
    raise ValueError(f"cannot find the transformer blocks of {type(model).__name__}")


def _key_projection(layer: torch.nn.Module) -> torch.nn.Module:
    for name, mod in layer.named_modules():
        if name.split(".")[-1] in ("k_proj", "key") and isinstance(mod, torch.nn.Linear):
            return mod
    raise ValueError(f"cannot find the key projection (k_proj / key) in {type(layer).__name__}")


@dataclass
class DinoBackbone:
    """A loaded DINO / DINOv2 model and what is needed to read its patch tokens."""

    model: torch.nn.Module
    name: str
    family: str  # "dino" (v1, ViTModel) or "dinov2"
    patch_size: int
    hidden_size: int
    num_prefix_tokens: int  # CLS (+ registers) before the patch tokens
    interpolate_kwarg: bool  # forward takes interpolate_pos_encoding

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def preprocess(self, images: torch.Tensor, size: int | None = None) -> torch.Tensor:
        """uint8 ``B×3×H×W`` → normalised float ``B×3×H'×W'`` on the model's device (see
        :func:`input_size`; bilinear, antialiased when shrinking)."""
        if images.dim() == 3:
            images = images.unsqueeze(0)
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be B×3×H×W, got shape {tuple(images.shape)}")
        return self.prepare(images.to(self.device, torch.float32) / 255.0, size)

    def prepare(self, x: torch.Tensor, size: int | None = None) -> torch.Tensor:
        """Float ``B×3×H×W`` in [0, 1] → ImageNet-normalised ``B×3×H'×W'`` in the model's dtype,
        resized as :func:`input_size` says (bilinear, antialiased when shrinking; not resized
        when the sides already are patch multiples and ``size`` is None)."""
        H, W = x.shape[-2:]
        target = input_size(H, W, self.patch_size, size)
        if target != (H, W):
            x = F.interpolate(x, size=target, mode="bilinear", align_corners=False,
                              antialias=target[0] < H or target[1] < W)
        mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        return ((x - mean) / std).to(self.dtype)

    def forward_features(self, pixels: torch.Tensor, which: str = "tokens") -> torch.Tensor:
        """Normalised ``B×3×H×W`` (sides multiples of the patch size, e.g. from :meth:`prepare`)
        → ``B×h×w×C`` last-layer patch tokens or keys, in the dtype the model computes in
        (no ``no_grad`` here: callers decide)."""
        if which not in FEATURES:
            raise SettingError(f"unknown DINO features {which!r}; choose tokens or keys")
        B, _, Hp, Wp = pixels.shape
        h, w = Hp // self.patch_size, Wp // self.patch_size
        kwargs = {"interpolate_pos_encoding": True} if self.interpolate_kwarg else {}
        caught = {}
        handle = None
        if which == "keys":
            proj = _key_projection(last_layer(self.model))
            handle = proj.register_forward_hook(lambda m, i, o: caught.__setitem__("keys", o))
        try:
            out = self.model(pixel_values=pixels, **kwargs)
        finally:
            if handle is not None:
                handle.remove()
        seq = caught["keys"] if which == "keys" else out.last_hidden_state
        seq = seq[:, self.num_prefix_tokens:]
        if seq.shape[1] != h * w:
            raise RuntimeError(f"{self.name}: expected {h}×{w} patch tokens, got {seq.shape[1]}")
        return seq.reshape(B, h, w, -1)

    @torch.no_grad()
    def patch_features(self, images: torch.Tensor, size: int | None = None,
                       which: str = "tokens") -> torch.Tensor:
        """uint8 ``B×3×H×W`` → float32 ``B×h×w×C`` last-layer patch tokens or keys
        (``h, w`` = input side / patch size, see :func:`input_size`)."""
        return self.forward_features(self.preprocess(images, size), which).float()


def _why(e: BaseException) -> str:
    """``Type: first line of the message``, so an error stays one line."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def _is_local(name: str) -> bool:
    p = Path(name).expanduser()
    return p.exists() or name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name


def load_dino(name_or_path, device="cpu", dtype: torch.dtype | None = None, option: str = "--model") -> DinoBackbone:
    """Load a DINO (v1) or DINOv2 backbone from a hub name or a local folder (see module doc).
    ``option``: the command-line option the error messages tell to pass a folder with.

    Raises WeightsError (with how to fix it) when the weights cannot be found or read,
    SettingError when the model is not a supported DINO architecture, MissingExtraError
    when transformers is not installed.
    """
    transformers = require("transformers", "the dino mask source")
    AutoConfig, AutoModel = transformers.AutoConfig, transformers.AutoModel

    name = str(name_or_path)
    local = _is_local(name)
    if local:
        folder = Path(name).expanduser()
        if not folder.is_dir():
            raise WeightsError(f"DINO model folder not found: {folder}")
        if not (folder / "config.json").is_file():
            raise WeightsError(f"{folder} is not a Hugging Face model folder (no config.json); "
                               "write one with model.save_pretrained(folder)")
        name = str(folder)
    try:
        config = AutoConfig.from_pretrained(name, local_files_only=local)
    except (OSError, ValueError) as e:
        if local:
            raise WeightsError(f"cannot read the config in {name}: {_why(e)}") from e
        raise WeightsError(
            f"cannot load DINO model {name!r}: it is not in the Hugging Face cache and the hub "
            f"cannot be reached ({_why(e)}). "
            f"On a machine with network access run `huggingface-cli download {name} --local-dir DIR` "
            "(or in Python: transformers.AutoModel.from_pretrained(name).save_pretrained(DIR)), copy DIR "
            f"here and pass it instead of the hub name ({option} DIR), or point HF_HOME at a cache "
            "that holds it.") from e
    family = SUPPORTED_MODEL_TYPES.get(config.model_type)
    if family is None:
        raise SettingError(f"{name}: model type {config.model_type!r} is not a DINO backbone; supported: "
                           f"{', '.join(SUPPORTED_MODEL_TYPES)} (facebook/dino-vit*, facebook/dinov2-*)")
    kwargs = {"add_pooling_layer": False} if config.model_type == "vit" else {}
    try:
        model = AutoModel.from_pretrained(name, config=config, local_files_only=local, **kwargs)
    except (OSError, ValueError) as e:
        raise WeightsError(f"cannot load the weights of {name}: {_why(e)}. "
                           "Pass a local folder written by save_pretrained (config.json + "
                           f"model.safetensors) with {option} DIR.") from e
    model.eval().requires_grad_(False).to(device=device, dtype=dtype)
    patch = config.patch_size if isinstance(config.patch_size, int) else config.patch_size[0]
    prefix = 1 + int(getattr(config, "num_register_tokens", 0) or 0)
    takes_interp = "interpolate_pos_encoding" in inspect.signature(model.forward).parameters
    _key_projection(last_layer(model))  # fail now, not at the first "keys" call
    return DinoBackbone(model=model, name=str(name_or_path), family=family, patch_size=int(patch),
                        hidden_size=int(config.hidden_size), num_prefix_tokens=prefix,
                        interpolate_kwarg=takes_interp)


def _as_batches(images) -> list[tuple[list[int], torch.Tensor]]:
    """A B×3×H×W tensor, or a list of 3×H×W tensors (any sizes) → same-size groups
    ``(indices, stacked)`` in order."""
    if isinstance(images, torch.Tensor):
        if images.dim() == 3:
            images = images.unsqueeze(0)
        return [(list(range(images.shape[0])), images)]
    groups: dict[tuple, list[int]] = {}
    for i, im in enumerate(images):
        if im.dim() != 3 or im.shape[0] != 3:
            raise ValueError(f"image {i} must be 3×H×W, got shape {tuple(im.shape)}")
        groups.setdefault(tuple(im.shape), []).append(i)
    return [(idx, torch.stack([images[i] for i in idx])) for idx in groups.values()]


@torch.no_grad()
def dino_kmeans_masks(backbone: DinoBackbone, images, k: int, size: int | None = None,
                      which: str = "tokens", iters: int = 20, seed: int = 0,
                      cosine: bool = True) -> list[torch.Tensor]:
    """Unsupervised masks: k-means of each image's DINO patch features.

    images: uint8 ``B×3×H×W`` tensor or a list of ``3×H×W`` tensors (sizes may differ;
    same-size images are batched together). Per image, ``min(k, h·w)`` clusters of its
    ``h×w`` patch features (cosine k-means by default, seeded); the cluster map is
    upsampled (nearest) to ``H×W`` and one-hot encoded. Empty clusters (also those that
    vanish in the upsampling) are dropped. Returns one bool tensor ``k'×H×W`` per image
    (a partition of the image), on the backbone's device, largest mask first.
    """
    n = images.shape[0] if isinstance(images, torch.Tensor) and images.dim() == 4 else len(images)
    out: list[torch.Tensor | None] = [None] * n
    for idx, batch in _as_batches(images):
        feats = backbone.patch_features(batch, size=size, which=which)  # B×h×w×C
        B, h, w, C = feats.shape
        assign, _ = kmeans(feats.reshape(B, h * w, C), min(k, h * w), iters=iters, seed=seed,
                           cosine=cosine)
        H, W = batch.shape[-2:]
        labels = F.interpolate(assign.reshape(B, 1, h, w).float(), size=(H, W), mode="nearest")
        labels = labels[:, 0].long()
        for j, i in enumerate(idx):
            ids, counts = labels[j].unique(return_counts=True)
            ids = ids[counts.argsort(descending=True, stable=True)]
            out[i] = labels[j].unsqueeze(0) == ids.view(-1, 1, 1)
    return out
