"""Scorers: a model + a way to score every class at every location. ``Segmenter`` runs
any scorer through the protocols (squash / slide / whole), the background threshold and
batching; the evaluator never sees the model.

A scorer has

=================  ================================================================
``image_size``     (h, w) the model's input (squash size, default slide window)
``stride``         output grid stride in pixels (``whole`` rounds the input to it)
``mean``, ``std``  ``1×3×1×1`` normalisation of ``[0, 1]`` images (``normalize``)
``device``         where it runs
``probabilities``  False: scores are cosines (``--bg-threshold`` on
                   softmax(logit_scale · score)); True: they are class probabilities
                   (thresholded as they are)
``vocabulary``     ``(classes, templates, reduce) -> Vocabulary`` from its text encoder
``scores``         ``(images B×3×h×w normalised, vocab, feature_size) -> B×K×h'×w'``
=================  ================================================================

Every scorer here runs its model's image forward under ``precision`` (``fp32``, ``bf16``,
``fp16`` autocast on CUDA and on the CPU; ``auto``: bf16 on CUDA, fp32 on the CPU) and,
with ``compile``, through ``torch.compile``; the scores themselves are always float32.

Four kinds today:

- ``DenseCLIPScorer``: a CLIP's dense features in a last-block mode, cosine with the class
  embeddings (features first upsampled to ``feature_size`` when given: PixelCLIP's 64×64);
  with a ``per_row`` vocabulary (``--synonyms max_prob``) one map per synonym row, which
  ``Segmenter`` turns into class labels.
- ``ProxyCLIPScorer``: a ``DenseCLIPScorer`` in mode ``proxyclip``, with the DINO / DINOv2
  model whose patch similarity is the attention of CLIP's last block (ProxyCLIP); both
  models run on every batch.
- ``MaskClassificationScorer``: a mask-classification model (MaskFormer without a class
  head, S-Seg) that gives N mask logits and N mask embeddings; per-mask class
  probabilities softmax(logit_scale · cos(mask embedding, class)) are combined as
  MaskFormer's semantic inference, ``Σ_n sigmoid(mask_n) · p_n(class)`` (mask logits first
  upsampled to ``feature_size`` when given). Its scores are probabilities.
- ``ClosedSetScorer``: a closed-vocabulary segmenter (``models/segmenter.py``, the student
  of self-training): softmax over its own classes, then the requested classes picked by
  name (every requested class must be one of its classes; synonyms match any of their
  names). Its scores are probabilities; templates and synonym reduction do not apply.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Protocol

import torch
import torch.nn.functional as F

from labelless.errors import SettingError
from labelless.vocab.encode import Vocabulary, build_vocabulary


class Scorer(Protocol):
    image_size: tuple[int, int]
    stride: int
    mean: torch.Tensor
    std: torch.Tensor
    device: torch.device
    probabilities: bool

    def vocabulary(self, classes: list, templates="imagenet_select", reduce: str = "mean") -> Vocabulary: ...

    def scores(self, images: torch.Tensor, vocab: Vocabulary, feature_size: int | None = None) -> torch.Tensor: ...


class MaskClassifier(Protocol):
    """What a mask-classification model gives a ``MaskClassificationScorer``."""

    image_size: tuple[int, int]
    stride: int
    mean: torch.Tensor  # 1×3×1×1 buffers on the model's device
    std: torch.Tensor
    logit_scale: float  # 1/τ of the per-mask class softmax
    embed_dim: int

    def mask_predictions(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised ``B×3×H×W`` → (mask logits ``B×N×h×w``, mask embeddings ``B×N×D``)."""

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """Strings → ``T×D`` L2-normalised embeddings."""


PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); elsewhere PyTorch emulates it."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` → ``bf16`` on CUDA (the earlier behaviour; not measured for labels there),
    ``fp32`` on the CPU (bf16 does not keep every label: 0.1 % of DINOv2-S k-means labels
    and 0.3–0.4 % of the trained CamVid CLIPs' changed; README "Inference speed",
    ``benchmarks/precision_agreement.py``); any other value is kept."""
    if precision not in PRECISIONS:
        raise SettingError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cuda" else "fp32"


def _autocast(device: torch.device, precision: str):
    """``torch.autocast`` on the device's type in ``precision`` (fp32: none)."""
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=_DTYPES[precision])


class _ScorerBase:
    """Shared parts; a subclass's ``_image_forward(images)`` is the model's image forward
    (what ``precision`` autocasts and ``compile`` compiles)."""

    def __init__(self, model, precision: str = "auto", compile: bool = False):
        self.model = model
        self.device = model.mean.device
        self.mean, self.std = model.mean, model.std
        self.image_size = tuple(model.image_size)
        self.stride = int(model.stride)
        self.configure(precision, compile)

    def configure(self, precision: str = "auto", compile: bool = False) -> None:
        """Set the precision (``PRECISIONS``; auto per device) and whether the image forward
        runs through ``torch.compile`` (compiled on the first call, again for new shapes)."""
        self.precision = resolve_precision(precision, self.device)
        self.compiled = compile
        self._forward = torch.compile(self._image_forward) if compile else self._image_forward

    def _run(self, images: torch.Tensor):
        with torch.no_grad(), _autocast(self.device, self.precision):
            return self._forward(images)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """``B×3×H×W`` in [0, 1] → normalised."""
        return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)

    def vocabulary(self, classes: list, templates="imagenet_select", reduce: str = "mean") -> Vocabulary:
        return build_vocabulary(self.model, classes, templates, reduce).to(self.device)


class DenseCLIPScorer(_ScorerBase):
    """A ``DenseCLIP`` in a dense ``mode``: cosine similarity per location."""

    probabilities = False

    def __init__(self, model, mode: str = "vanilla", precision: str = "auto", compile: bool = False):
        model.check_mode(mode)
        self.mode = mode
        super().__init__(model, precision, compile)

    def _image_forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.dense_features(images, self.mode)

    def info(self) -> dict:
        """What a results file records about the model."""
        m = self.model
        return {"model": m.name, "pretrained": m.pretrained, "activation": "quick_gelu" if m.quick_gelu else "gelu",
                "mode": self.mode, "scorer": "dense-clip"}

    def scores(self, images: torch.Tensor, vocab: Vocabulary, feature_size: int | None = None) -> torch.Tensor:
        """``B×K×h×w`` cosines, or ``B×R×h×w`` (one per synonym row) for a ``per_row`` vocabulary."""
        feats = self._run(images).float()
        if feature_size and feature_size > feats.shape[-1]:
            feats = F.interpolate(feats, size=(feature_size, feature_size), mode="bilinear", align_corners=False)
        return vocab.row_similarity(feats) if vocab.per_row else vocab.similarity(feats)


class ProxyCLIPScorer(DenseCLIPScorer):
    """A ``DenseCLIP`` ViT in mode ``proxyclip`` (``models/proxyclip.py``) with its vision
    foundation model ``vfm`` (a ``masks.dino.DinoBackbone``, on the same device).

    The image forward runs both models on the same batch (so ``precision`` and ``compile``
    cover the VFM too): the CLIP-normalised images are brought back to [0, 1] with CLIP's
    mean/std, resized to multiples of the VFM's patch size only where they are not
    (``DinoBackbone.prepare``; every usual crop — 224, 336, 448 — is a multiple of 8, 14
    and 16, so the VFM sees the very pixels CLIP sees, as in the official code),
    ImageNet-normalised, and the VFM's last-layer patch tokens steer CLIP's last block. The
    features come out on the VFM's patch grid (the official code's choice: CLIP's values
    are resized to it).
    """

    def __init__(self, model, vfm, beta: float = 1.2, gamma: float = 3.0, precision: str = "auto",
                 compile: bool = False):
        from labelless.models.proxyclip import check_proxy_settings

        check_proxy_settings(beta, gamma)
        if "proxyclip" not in model.modes:
            raise SettingError(f"mode proxyclip needs a ViT CLIP; {model.name} is a {model.kind}")
        self.vfm, self.beta, self.gamma = vfm, float(beta), float(gamma)
        super().__init__(model, "proxyclip", precision, compile)

    def _image_forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = self.vfm.prepare(images * self.std.to(images.dtype) + self.mean.to(images.dtype))
        guide = self.vfm.forward_features(pixels).permute(0, 3, 1, 2)  # B×C×H'×W'
        return self.model.proxy_features(images, guide, self.beta, self.gamma)

    def info(self) -> dict:
        return {**super().info(), "vfm": self.vfm.name, "vfm_family": self.vfm.family,
                "vfm_patch_size": self.vfm.patch_size, "vfm_features": "tokens",
                "proxy_beta": self.beta, "proxy_gamma": self.gamma}


class MaskClassificationScorer(_ScorerBase):
    """A ``MaskClassifier`` (module docstring): MaskFormer's semantic inference."""

    probabilities = True

    def _image_forward(self, images: torch.Tensor):
        return self.model.mask_predictions(images)

    def info(self) -> dict:
        """What a results file records about the model."""
        return {"model": getattr(self.model, "name", type(self.model).__name__),
                "pretrained": getattr(self.model, "source", None), "mode": None, "scorer": "mask-classification"}

    def vocabulary(self, classes: list, templates="imagenet_select", reduce: str = "mean") -> Vocabulary:
        if reduce == "max_prob":
            raise SettingError("--synonyms max_prob is the mmseg harness's softmax over CLIP cosines of every "
                               "synonym; a mask-classification model scores class probabilities per mask: "
                               "use mean, mean_per_synonym or max")
        return super().vocabulary(classes, templates, reduce)

    def scores(self, images: torch.Tensor, vocab: Vocabulary, feature_size: int | None = None) -> torch.Tensor:
        mask_logits, mask_emb = self._run(images)
        mask_logits, mask_emb = mask_logits.float(), mask_emb.float()
        if feature_size and feature_size > mask_logits.shape[-1]:
            mask_logits = F.interpolate(mask_logits, size=(feature_size, feature_size), mode="bilinear",
                                        align_corners=False)
        return semantic_inference(mask_logits, mask_emb, vocab, self.model.logit_scale)


def semantic_inference(mask_logits: torch.Tensor, mask_embeddings: torch.Tensor, vocab: Vocabulary,
                       logit_scale: float) -> torch.Tensor:
    """``Σ_n sigmoid(mask_n) · softmax_k(logit_scale · cos(e_n, class_k))``.

    Args:
        mask_logits: ``B×N×h×w``; mask_embeddings: ``B×N×D`` (any norm).
        vocab: K classes (synonyms reduced as the vocabulary says).

    Returns:
        ``B×K×h×w`` class scores (float32).
    """
    cos = vocab.similarity(mask_embeddings.transpose(1, 2)[..., None])[..., 0]  # B×K×N
    probs = (logit_scale * cos).softmax(dim=1)  # over classes, per mask
    return torch.einsum("bkn,bnhw->bkhw", probs, mask_logits.sigmoid())


class ClosedSetScorer(_ScorerBase):
    """A closed-vocabulary ``SemanticSegmenter`` (module docstring)."""

    probabilities = True

    def _image_forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    def info(self) -> dict:
        return {"model": f"segmenter:{self.model.cfg.backbone}/{self.model.cfg.head}",
                "pretrained": getattr(self.model, "source", None), "mode": None, "scorer": "closed-set"}

    def vocabulary(self, classes: list, templates="imagenet_select", reduce: str = "mean") -> Vocabulary:
        """One-hot rows selecting each requested class among the model's classes."""
        own = {}
        for i, name in enumerate(self.model.classes):
            for syn in str(name).split(","):
                own.setdefault(syn.strip().lower(), i)
        rows, names = [], []
        for cls in classes:
            syns = [c.strip() for c in (cls if isinstance(cls, (list, tuple)) else str(cls).split(","))]
            hit = next((own[s.lower()] for s in syns if s.lower() in own), None)
            if hit is None:
                raise SettingError(f"class {cls!r} is not one of this closed-vocabulary segmenter's "
                                   f"{len(self.model.classes)} classes ({', '.join(map(str, self.model.classes[:12]))}"
                                   f"{', ...' if len(self.model.classes) > 12 else ''})")
            rows.append(hit)
            names.append(syns[0])
        onehot = F.one_hot(torch.tensor(rows), len(self.model.classes)).float()
        return Vocabulary(names, onehot.to(self.device), torch.arange(len(rows), device=self.device), "mean")

    def scores(self, images: torch.Tensor, vocab: Vocabulary, feature_size: int | None = None) -> torch.Tensor:
        logits = self._run(images)
        probs = logits.float().softmax(dim=1)
        if feature_size and feature_size > probs.shape[-1]:
            probs = F.interpolate(probs, size=(feature_size, feature_size), mode="bilinear", align_corners=False)
        return torch.einsum("kc,bchw->bkhw", vocab.embeddings.to(probs.dtype), probs)
