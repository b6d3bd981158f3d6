"""Segmenter: images + vocabulary → per-pixel label maps, for any scorer (``scorers.py``).

Protocols (how an image of any size reaches the model):

- ``squash`` (PixelCLIP): resize so the short side is ``short_side`` (640, long side at
  most ``max_long_side``; antialiased, like detectron2's PIL resize), then resize to the
  model input size without keeping the aspect ratio (plain bilinear, as the official
  code's ``F.interpolate``). The scorer resamples its per-location output to
  ``feature_size``×``feature_size`` (64: dense features before the cosine, PixelCLIP)
  before forming class scores; the score map is resized bilinearly to the original
  image size. Images are batched together.
- ``slide`` (mmseg harness of SCLIP/ClearCLIP/NACLIP): resize so the short side is
  ``short_side`` (448), cut ``crop``×``crop`` windows (the model input size) every
  ``stride`` pixels (crop·2/3 by default), run the windows of all images of a ``predict``
  call in batches of ``batch_size`` windows (a batch may span images), average the
  overlapping score maps (each window's scores resized to the window; as two matrix
  products, ``labelless.slide``), resize to the original size.
- ``whole``: resize so the short side is ``short_side`` (the model input size), keep the
  aspect ratio and run the whole image at once (positional embeddings interpolated).

The short-side resize is antialiased (``antialias``, default: detectron2's PIL resize
under PixelCLIP); the mmseg harness resizes with OpenCV's plain bilinear
(``antialias=False``, ``presets.py``), and caps the long side at 2048, not 2560.

Labels: the argmax over classes of the scores bilinearly resized to the image. With
``bg_threshold`` set (VOC-21, Context-60, COCO-Object) the vocabulary holds the
foreground classes only; a pixel whose top class probability — softmax(``logit_scale`` ·
score) for cosine scorers, the score itself for probability scorers — is below the
threshold becomes label 0 (background), the others argmax + 1. With ``named_background``
(the mmseg harness) the vocabulary holds every class, class 0 included: class 0 is scored
by its names like any class, and below the threshold the label is 0 as well.

A ``per_row`` vocabulary (``--synonyms max_prob``) is scored per synonym row throughout;
the label is the class of the best row, and the threshold's confidence the top of the
softmax over all rows (the mmseg harness; ``vocab/encode.py``). ``area_threshold``
(SCLIP's ``area_thd``, VOC-21): after a first argmax, every class other than a named
background whose pixels are at most this share of the image's non-background pixels is
removed (its probability zeroed); the labels are then the argmax of the others, and the
threshold compares the chosen class's probability under the softmax over all rows.

Refinement (``refine=``, ``labelless.refine``): ``MaskRefinement`` averages the scores
inside each image's masks (passed to ``predict``; with the ground-truth segments this is
zero-shot mask classification), ``PAMRRefinement`` runs pixel-adaptive mask refinement; both
on the scores upsampled to the image's size, chunk of classes by chunk, before the
background threshold.

Memory is bounded by the batch, not by the image: label maps are computed from the
low-resolution scores by ``labelmaps.upsample_labels`` (classes in chunks, only classes
that can win upsampled), never as a K×H×W tensor at full size; ``similarity`` (full-size
score maps, for analysis) is the one call whose memory grows with K×H×W.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from labelless.errors import SettingError
from labelless.labelmaps import upsample_labels
from labelless.refine import masks_to_size, refined_labels
from labelless.slide import grid_windows, slide_grid, window_mean
from labelless.vocab.encode import Vocabulary

PROTOCOLS = ("squash", "slide", "whole")


@dataclass(frozen=True)
class Protocol:
    """How images reach the model. ``None`` fields take the defaults described in the module doc."""

    name: str = "squash"
    short_side: int | None = None
    max_long_side: int = 2560
    input_size: int | None = None  # model input (squash) or crop size (slide); default: model's
    stride: int | None = None  # slide only
    feature_size: int | None = None  # squash only: features upsampled to this grid (64)
    antialias: bool = True  # the short-side resize (False: OpenCV-style plain bilinear, mmseg)

    def resolved(self, model_size: tuple[int, int]) -> "Protocol":
        if self.name not in PROTOCOLS:
            raise SettingError(f"unknown protocol {self.name!r}; choose from {', '.join(PROTOCOLS)}")
        size = self.input_size or model_size[0]
        short = self.short_side or {"squash": 640, "slide": 448, "whole": size}[self.name]
        stride = self.stride or max(1, size * 2 // 3)
        feat = self.feature_size or (64 if self.name == "squash" else None)
        return replace(self, short_side=short, input_size=size, stride=stride, feature_size=feat)


def resize_short_side(image: torch.Tensor, short: int, max_long: int = 2560, antialias: bool = True) -> torch.Tensor:
    """Resize ``B×3×H×W`` float so that min(H, W) = short and max(H, W) ≤ max_long (bilinear)."""
    h, w = image.shape[-2:]
    scale = min(short / min(h, w), max_long / max(h, w))
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    if size == (h, w):
        return image
    return F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=antialias)


def default_batch_size(device, protocol: str) -> int:
    """The CLI's ``--batch-size`` default: what never lost to batch 1 where measured
    (``benchmarks/inference_vs_reference.py --images 16``, random ViT-B/16, ADE-150 names,
    two quiet 2-core CPUs): squash on a CPU 1 (3.16 img/s against 2.75 at batch 8 on one, 1.59
    at both on the other), slide on a CPU 8 windows (0.38 against 0.33 img/s; 0.23 against 0.21);
    8 elsewhere (on CUDA batching is what keeps the GPU busy; not measured: no GPU was lent)."""
    return 1 if torch.device(device).type == "cpu" and protocol == "squash" else 8


class Segmenter:
    """A scorer + vocabulary → score maps and label maps for images of any size.

    Images are ``3×H×W`` tensors (uint8, or float in [0, 1]). ``refine``: None, or a
    ``labelless.refine.MaskRefinement`` / ``PAMRRefinement`` applied by ``predict``.
    """

    def __init__(self, scorer, vocab: Vocabulary, protocol: Protocol | str = "squash", logit_scale: float = 100.0,
                 bg_threshold: float | None = None, batch_size: int = 8, named_background: bool = False,
                 area_threshold: float | None = None, refine=None):
        if len(vocab) == 0:
            raise SettingError("the vocabulary is empty: give at least one class name")
        if batch_size < 1:
            raise SettingError(f"batch size must be ≥ 1, got {batch_size}")
        if area_threshold is not None and not 0 <= area_threshold < 1:
            raise SettingError(f"the area threshold is a share of the image's pixels in [0, 1), got {area_threshold}")
        self.scorer = scorer
        self.device = scorer.device
        self.vocab = vocab.to(self.device)
        protocol = Protocol(protocol) if isinstance(protocol, str) else protocol
        self.protocol = protocol.resolved(scorer.image_size)
        self.logit_scale = logit_scale
        self.bg_threshold = bg_threshold
        self.batch_size = batch_size
        self.named_background = named_background
        self.area_threshold = area_threshold
        self._lut = self._label_lut()
        self.refine = refine

    def _scores(self, batch: torch.Tensor, feature_size: int | None = None) -> torch.Tensor:
        """Float ``B×3×h×w`` in [0, 1] → class scores ``B×K×h'×w'`` (float32)."""
        return self.scorer.scores(self.scorer.normalize(batch), self.vocab, feature_size).float()

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
                F.interpolate(resize_short_side(self._prepare(im), p.short_side, p.max_long_side, p.antialias),
                              size=(p.input_size, p.input_size), mode="bilinear", align_corners=False)
                for im in chunk])
            out.extend(self._scores(batch, p.feature_size))
        return out

    def _slide_jobs(self, images: list[torch.Tensor]):
        """Every window of every image, in order: ``(image index, x 1×3×h×w, (y1, x1, y2, x2),
        grid)``; ``x`` is the image resized to the protocol's short side, ``grid`` its
        ``slide_grid`` (the same tuple for all of its windows)."""
        p = self.protocol
        for i, image in enumerate(images):
            x = resize_short_side(self._prepare(image), p.short_side, p.max_long_side, p.antialias)
            grid = slide_grid(*x.shape[-2:], p.input_size, p.stride)
            for win in grid_windows(grid):
                yield i, x, win, grid

    def _window_batches(self, images: list[torch.Tensor]):
        """Windows of all ``images`` in batches of up to ``batch_size`` (consecutive windows of
        one size: an image smaller than the window makes smaller ones), each with its
        low-resolution scores: ``(jobs, B×K×h'×w')``."""
        batch: list = []

        def run(jobs):
            return jobs, self._scores(torch.cat([x[..., y1:y2, x1:x2] for _, x, (y1, x1, y2, x2), _ in jobs]))

        def size(job):
            y1, x1, y2, x2 = job[2]
            return y2 - y1, x2 - x1

        for job in self._slide_jobs(images):
            if batch and (len(batch) == self.batch_size or size(job) != size(batch[0])):
                yield run(batch)
                batch = []
            batch.append(job)
        if batch:
            yield run(batch)

    def _slide(self, images: list[torch.Tensor]):
        """Yield each image's mean window scores ``K×h×w`` (h×w: the resized image), in order.

        Windows of several images share a batch; an image's mean is made as soon as its last
        window's scores are in (``labelless.slide.window_mean``: mmseg's resize-to-window, sum
        and divide by the count, as two matrix products), so only the low-resolution scores of
        the images with windows in flight are held.
        """
        pending: list[torch.Tensor] = []
        last = None

        def mean(job):
            _, x, _, (ys, xs, ch, cw) = job
            return window_mean(torch.stack(pending), ys, xs, tuple(x.shape[-2:]), (ch, cw))

        for jobs, scores in self._window_batches(images):
            for job, s in zip(jobs, scores):
                if last is not None and job[0] != last[0]:
                    yield mean(last)
                    pending = []
                pending.append(s)
                last = job
        if last is not None:
            yield mean(last)

    def _whole(self, image: torch.Tensor) -> torch.Tensor:
        p = self.protocol
        x = resize_short_side(self._prepare(image), p.short_side, p.max_long_side, p.antialias)
        s = self.scorer.stride
        h, w = (max(s, math.ceil(d / s) * s) for d in x.shape[-2:])
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)  # multiple of stride
        return self._scores(x)[0]

    def _iter_scores(self, images: list[torch.Tensor]):
        """Each image's scores (see ``scores``), yielded in order as soon as they are complete."""
        if self.protocol.name == "squash":
            yield from self._squash(images)
        elif self.protocol.name == "slide":
            yield from self._slide(images)
        else:
            for im in images:
                yield self._whole(im)

    def scores(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        """Class scores ``K×h×w`` of each image at the protocol's working resolution (the
        squash feature grid, the resized image for slide, the patch grid for whole);
        ``R×h×w``, one per synonym row, for a ``per_row`` vocabulary (``output_labels``
        turns labels of these into class labels)."""
        return list(self._iter_scores(images))

    def similarity(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        """Score maps ``K×H×W`` (``R×H×W`` for a ``per_row`` vocabulary, as ``scores``) at each
        image's own size (bilinear). Memory K×H×W per image: for analysis; ``predict`` never
        builds these."""
        return [F.interpolate(s[None], size=im.shape[-2:], mode="bilinear", align_corners=False)[0]
                for s, im in zip(self._iter_scores(images), images)]

    def predict(self, images: list[torch.Tensor], masks: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """Label maps ``H×W`` int64 (on CPU), one per image (the same labels as thresholding /
        argmax of ``similarity``, without its memory). Each image's labels are made as soon as
        its scores are complete (slide: its last window), so at most a batch of working-size
        score maps is alive. ``masks``: one ``N×H'×W'`` bool tensor per image for a mask
        refinement (resized to the image, nearest, when ``H'×W'`` differs)."""
        if masks is not None and len(masks) != len(images):
            raise ValueError(f"{len(masks)} mask sets for {len(images)} images")
        if self.refine is not None and self.refine.needs_masks and masks is None:
            raise SettingError("this segmenter refines with masks: pass predict(images, masks=[N×H×W per image])")
        return [self._labels(s, im, None if masks is None else masks[i]).cpu()
                for i, (s, im) in enumerate(zip(self._iter_scores(images), images))]

    def _row_classes(self) -> torch.Tensor:
        """The vocabulary class of each score row (``R``; the identity unless ``per_row``)."""
        if self.vocab.per_row:
            return self.vocab.class_index
        return torch.arange(len(self.vocab), device=self.vocab.class_index.device)

    def _label_lut(self) -> torch.Tensor | None:
        """Output label of each value ``upsample_labels`` gives (a row; with the threshold 0
        or row + 1), or None where they are the same."""
        rows = self._row_classes()
        if self.bg_threshold is not None:
            rows = torch.cat([rows.new_zeros(1), rows + (0 if self.named_background else 1)])
        return None if torch.equal(rows, torch.arange(len(rows), device=rows.device)) else rows

    def output_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """Labels of score rows (``upsample_labels`` of ``scores``) → the segmenter's labels."""
        return labels if self._lut is None else self._lut.to(labels.device)[labels]

    def _area_rows(self, row_labels, device) -> list[int]:
        """SCLIP's area threshold: the rows whose class may still win (module docstring), from
        ``row_labels(None, None)``: the argmax rows of the (refined) scores."""
        row_class = self._row_classes().to(device)
        first = row_class[row_labels(None, None)]
        area = torch.bincount(first.flatten(), minlength=len(self.vocab)).float()
        fg = 1 if self.named_background else 0  # a named background is never removed
        keep = area > self.area_threshold * area[fg:].sum()
        keep[:fg] = True
        if not keep.any():  # no named background (SCLIP always has one) and every class small: keep the largest
            keep[area.argmax()] = True
        return keep[row_class].nonzero().flatten().tolist()

    def _row_labeller(self, scores: torch.Tensor, image: torch.Tensor, masks: torch.Tensor | None):
        """``(bg_threshold, among) -> H×W`` labels of score rows for one image: the plain
        upsample (``upsample_labels``) or, with ``self.refine``, of the refined scores."""
        size, probs = tuple(image.shape[-2:]), self.scorer.probabilities
        if self.refine is None:
            return lambda thr, among: upsample_labels(scores, size, self.logit_scale, thr, probs, among=among)
        transform = self.refine_transform(image, masks)
        return lambda thr, among: refined_labels(scores, size, transform, self.logit_scale, thr, probs, among=among)

    def refine_transform(self, image: torch.Tensor, masks: torch.Tensor | None = None):
        """``self.refine``'s per-chunk function (``C×H×W`` upsampled scores → refined) for one
        ``3×H×W`` image and its ``N×H'×W'`` masks (mask refinement; resized to the image)."""
        if masks is not None:
            masks = masks_to_size(torch.as_tensor(masks).to(self.device), tuple(image.shape[-2:]))
        return self.refine.transform(masks, lambda: self._guide(image))

    def _labels(self, scores: torch.Tensor, image: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        """One image's scores → its ``H×W`` labels on the scores' device (refined when set)."""
        row_labels = self._row_labeller(scores, image, masks)
        among = None if self.area_threshold is None else self._area_rows(row_labels, scores.device)
        return self.output_labels(row_labels(self.bg_threshold, among))

    def _guide(self, image: torch.Tensor) -> torch.Tensor:
        """PAMR's guide ``3×H×W``: the image resized to the protocol's short side (what the
        model is given, before squash's squashing), normalised, resized back to ``H×W``
        (bilinear), as SCLIP / NACLIP pass their network input."""
        p = self.protocol
        x = resize_short_side(self._prepare(image), p.short_side, p.max_long_side, p.antialias)
        x = F.interpolate(self.scorer.normalize(x), size=tuple(image.shape[-2:]), mode="bilinear",
                          align_corners=False)
        return x[0]
