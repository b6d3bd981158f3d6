"""Segmenter: images + vocabulary → per-pixel label maps.

Protocols (how an image of any size reaches the model):

- ``squash`` (PixelCLIP): resize so the short side is ``short_side`` (640, long side at
  most ``max_long_side``; antialiased, like detectron2's PIL resize), then resize to the
  model input size without keeping the aspect ratio (plain bilinear, as the official
  code's ``F.interpolate``). Dense features are upsampled bilinearly to ``feature_size``×``feature_size``
  (64) before the cosine with the text embeddings; the similarity map is resized
  bilinearly to the original image size. Images are batched together.
- ``slide`` (mmseg harness of SCLIP/ClearCLIP/NACLIP): resize so the short side is
  ``short_side`` (448), cut ``crop``×``crop`` windows (the model input size) every
  ``stride`` pixels (crop·2/3 by default), run all windows of an image in batches,
  average the overlapping similarity maps, resize to the original size.
- ``whole``: resize so the short side is ``short_side`` (the model input size), keep the
  aspect ratio and run the whole image at once (positional embeddings interpolated).

Labels: argmax over classes. With ``bg_threshold`` set (VOC-21, Context-60, COCO-Object)
the vocabulary holds the foreground classes only; class probabilities are
softmax(``logit_scale`` · cosine) and a pixel whose highest probability is below the
threshold becomes label 0 (background), the others argmax + 1.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from labelless.vocab.encode import Vocabulary

PROTOCOLS = ("squash", "slide", "whole")


class ImageError(ValueError):
    """An image file could not be read; the message names the file."""


def load_image(path) -> torch.Tensor:
    """Read an image file as a ``3×H×W`` uint8 tensor (RGB). Raises ImageError naming the file."""
    from PIL import Image

    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()  # a truncated file fails here
            arr = np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise ImageError(f"image not found: {path}") from None
    except Exception as e:
        raise ImageError(f"cannot read image {path}: {type(e).__name__}: {e}") from e
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


@dataclass(frozen=True)
class Protocol:
    """How images reach the model. ``None`` fields take the defaults described in the module doc."""

    name: str = "squash"
    short_side: int | None = None
    max_long_side: int = 2560
    input_size: int | None = None  # model input (squash) or crop size (slide); default: model's
    stride: int | None = None  # slide only
    feature_size: int | None = None  # squash only: features upsampled to this grid (64)

    def resolved(self, model_size: tuple[int, int]) -> "Protocol":
        if self.name not in PROTOCOLS:
            raise ValueError(f"unknown protocol {self.name!r}; choose from {', '.join(PROTOCOLS)}")
        size = self.input_size or model_size[0]
        short = self.short_side or {"squash": 640, "slide": 448, "whole": size}[self.name]
        stride = self.stride or max(1, size * 2 // 3)
        feat = self.feature_size or (64 if self.name == "squash" else None)
        return replace(self, short_side=short, input_size=size, stride=stride, feature_size=feat)


def resize_short_side(image: torch.Tensor, short: int, max_long: int = 2560) -> torch.Tensor:
    """Resize ``B×3×H×W`` float so that min(H, W) = short and max(H, W) ≤ max_long (bilinear)."""
    h, w = image.shape[-2:]
    scale = min(short / min(h, w), max_long / max(h, w))
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    if size == (h, w):
        return image
    return F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=True)


def slide_windows(h: int, w: int, crop: int, stride: int) -> list[tuple[int, int, int, int]]:
    """Windows (y1, x1, y2, x2) covering an h×w image, mmseg's slide_inference grid."""
    ch, cw = min(crop, h), min(crop, w)
    ny = max(h - ch + stride - 1, 0) // stride + 1
    nx = max(w - cw + stride - 1, 0) // stride + 1
    out = []
    for iy in range(ny):
        for ix in range(nx):
            y1 = min(iy * stride, h - ch)
            x1 = min(ix * stride, w - cw)
            out.append((y1, x1, y1 + ch, x1 + cw))
    return out


def labels_from_similarity(sim: torch.Tensor, logit_scale: float = 100.0,
                           bg_threshold: float | None = None) -> torch.Tensor:
    """``K×H×W`` (or ``B×K×H×W``) cosine similarities → int64 label map.

    With ``bg_threshold``: label 0 where max softmax(logit_scale·sim) < threshold, else argmax + 1.
    """
    if bg_threshold is None:
        return sim.argmax(dim=-3)
    prob = (sim.float() * logit_scale).softmax(dim=-3)
    conf, idx = prob.max(dim=-3)
    return torch.where(conf < bg_threshold, torch.zeros_like(idx), idx + 1)


class Segmenter:
    """Dense CLIP + vocabulary → similarity maps and label maps for images of any size.

    Images are ``3×H×W`` tensors (uint8, or float in [0, 1]).
    """

    def __init__(self, model, vocab: Vocabulary, mode: str = "vanilla", protocol: Protocol | str = "squash",
                 logit_scale: float = 100.0, bg_threshold: float | None = None, batch_size: int = 8,
                 amp: bool = True):
        model.check_mode(mode)
        if len(vocab) == 0:
            raise ValueError("the vocabulary is empty: give at least one class name")
        self.model = model
        self.device = model.mean.device
        self.vocab = vocab.to(self.device)
        self.mode = mode
        protocol = Protocol(protocol) if isinstance(protocol, str) else protocol
        self.protocol = protocol.resolved(model.image_size)
        self.logit_scale = logit_scale
        self.bg_threshold = bg_threshold
        self.batch_size = batch_size
        self.amp = amp and self.device.type == "cuda"

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.amp else nullcontext()

    def _features(self, batch: torch.Tensor) -> torch.Tensor:
        """Float ``B×3×h×w`` in [0, 1] → dense features ``B×D×h'×w'`` (float32)."""
        with torch.no_grad(), self._autocast():
            return self.model.dense_features(self.model.normalize(batch), self.mode).float()

    def _similarity(self, feats: torch.Tensor) -> torch.Tensor:
        return self.vocab.similarity(feats)

    def _prepare(self, image: torch.Tensor) -> torch.Tensor:
        x = image.to(self.device)
        x = x.float() / 255.0 if not x.is_floating_point() else x.float()
        return x.unsqueeze(0)

    def _squash(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        p = self.protocol
        out = []
        for i in range(0, len(images), self.batch_size):
            chunk = images[i:i + self.batch_size]
            batch = torch.cat([
                F.interpolate(resize_short_side(self._prepare(im), p.short_side, p.max_long_side),
                              size=(p.input_size, p.input_size), mode="bilinear", align_corners=False)
                for im in chunk])
            feats = self._features(batch)
            if p.feature_size and p.feature_size > feats.shape[-1]:
                feats = F.interpolate(feats, size=(p.feature_size, p.feature_size), mode="bilinear",
                                      align_corners=False)
            sims = self._similarity(feats)
            for im, s in zip(chunk, sims):
                out.append(F.interpolate(s[None], size=im.shape[-2:], mode="bilinear",
                                         align_corners=False)[0])
        return out

    def _slide(self, image: torch.Tensor) -> torch.Tensor:
        p = self.protocol
        x = resize_short_side(self._prepare(image), p.short_side, p.max_long_side)
        h, w = x.shape[-2:]
        wins = slide_windows(h, w, p.input_size, p.stride)
        acc = torch.zeros(len(self.vocab), h, w, device=self.device)
        count = torch.zeros(1, h, w, device=self.device)
        for i in range(0, len(wins), self.batch_size):
            part = wins[i:i + self.batch_size]
            crops = torch.cat([x[..., y1:y2, x1:x2] for y1, x1, y2, x2 in part])
            sims = self._similarity(self._features(crops))
            sims = F.interpolate(sims, size=crops.shape[-2:], mode="bilinear", align_corners=False)
            for (y1, x1, y2, x2), s in zip(part, sims):
                acc[:, y1:y2, x1:x2] += s
                count[:, y1:y2, x1:x2] += 1
        sim = acc / count
        return F.interpolate(sim[None], size=image.shape[-2:], mode="bilinear", align_corners=False)[0]

    def _whole(self, image: torch.Tensor) -> torch.Tensor:
        p = self.protocol
        x = resize_short_side(self._prepare(image), p.short_side, p.max_long_side)
        s = self.model.stride
        h, w = (max(s, math.ceil(d / s) * s) for d in x.shape[-2:])
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)  # multiple of stride
        sim = self._similarity(self._features(x))
        return F.interpolate(sim, size=image.shape[-2:], mode="bilinear", align_corners=False)[0]

    def similarity(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        """Cosine similarity maps ``K×H×W`` at each image's own size."""
        if self.protocol.name == "squash":
            return self._squash(images)
        fn = self._slide if self.protocol.name == "slide" else self._whole
        return [fn(im) for im in images]

    def predict(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        """Label maps ``H×W`` int64 (on CPU), one per image."""
        return [labels_from_similarity(s, self.logit_scale, self.bg_threshold).cpu()
                for s in self.similarity(images)]
