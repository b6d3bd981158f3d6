"""Refinement of class scores before labelling: scores averaged inside unlabeled masks
(``--refine masks``; with the ground-truth segments as masks this is zero-shot mask
classification) and pixel-adaptive mask refinement (``--refine pamr``). Pure functions on
tensors; :class:`~labelless.segment.Segmenter` applies one of them (``Segmenter(...,
refine=...)``, masks per image passed to ``predict``).

Where it runs. Both act on the scores at the image's own size: the scorer's low-resolution
scores bilinearly upsampled (``align_corners=False``), the same values the plain label map
is made from. So a mask's mean is the mean over its own pixels at full resolution (no mask
is lost by downsampling it to a 64×64 grid), and a mask's pixels take its class exactly.
Memory stays bounded: both refinements act on each class on its own, so
:func:`refined_labels` upsamples ``max_elements`` values' worth of classes at a time,
refines that chunk and merges it into a running argmax (and the background threshold's
exp-sum); no ``K×H×W`` tensor exists. What is held besides: the masks themselves
(``N×H×W`` bool, at the image's size as their source gives them) or PAMR's affinities
(``8·len(dilations)×H×W``).

Mask refinement (:func:`refine_with_masks`): each mask's mean score per class over its
pixels; a pixel covered by one or more masks takes ``overlap="mean"``: the average of the
means of the masks covering it, or ``"smallest"``: the mean of the smallest mask covering it
(ties in area: the earlier mask); a pixel in no mask keeps its own scores. Scores are
averaged as the scorer gives them (cosines for CLIP, probabilities for mask-classification
and closed-set scorers); the background threshold is applied after refinement.

PAMR (Araslanov & Roth, CVPR 2020, "Single-stage semantic segmentation from image labels";
as run by the training-free CLIP papers, SCLIP and NACLIP, ``pamr.py`` of their code): for
every pixel ``i`` and its neighbours ``j`` at offsets ``d·(dy, dx)``, ``(dy, dx)`` the 8
non-zero offsets of a 3×3 window and ``d`` each of the dilations (replicate padding at the
border: the nearest pixel inside),

    a(i, j) = softmax_j( −mean_c |I_c(i) − I_c(j)| / (1e-8 + 0.1 · σ_c(i)) ),

``σ_c(i)`` the standard deviation (unbiased) of channel ``c`` over the 3×3 windows of every
dilation around ``i`` (centre included once per dilation), softmax over all ``8·len(d)``
neighbours; then ``iterations`` times ``m(i) ← Σ_j a(i, j) · m(j)`` for each class map.
The papers' settings are the defaults: 10 iterations, dilations (8, 16) (NACLIP's ``--pamr
on``; SCLIP's ``pamr_stride``), on the class scores (cosines, before the softmax and the
probability threshold) resized to the image's original size, with the network's input image
(resized to the protocol's short side, normalised) resized back to that size as the guide.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
import torch.nn.functional as F

from labelless.errors import SettingError
from labelless.labelmaps import upsampled_classes

__all__ = ["REFINEMENTS", "OVERLAPS", "MaskRefinement", "PAMRRefinement", "mask_means", "refine_with_masks",
           "masks_to_size", "pamr_affinity", "pamr_propagate", "pamr", "refined_labels"]

REFINEMENTS = ("masks", "pamr")
OVERLAPS = ("mean", "smallest")
# the 8 neighbours of a 3×3 window, in the order of pamr.py's LocalAffinity kernel
NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


# ----------------------------------------------------------------------------- masks

def masks_to_size(masks: torch.Tensor, size) -> torch.Tensor:
    """``N×h×w`` masks (any dtype, 0/1) → ``N×H×W`` bool at ``size`` (pixel-centre nearest,
    as ``masks.ops.resize_short_side``); unchanged when already that size."""
    size = (int(size[0]), int(size[1]))
    if masks.dim() != 3:
        raise ValueError(f"masks must be N×H×W, got shape {tuple(masks.shape)}")
    if tuple(masks.shape[-2:]) == size:
        return masks.bool()
    if masks.shape[0] == 0:
        return torch.zeros(0, *size, dtype=torch.bool, device=masks.device)
    return F.interpolate(masks[None].to(torch.uint8), size=size, mode="nearest-exact")[0].bool()


def mask_means(scores: torch.Tensor, masks: torch.Tensor, max_elements: int = 2 ** 25) -> torch.Tensor:
    """Mean score of every class inside every mask.

    Args:
        scores: ``C×H×W``; masks: ``N×H×W`` bool (an empty mask gets zeros).
        max_elements: masks are turned into float ``max_elements // (H·W)`` at a time.

    Returns:
        ``N×C`` means.
    """
    flat_s = scores.flatten(1)  # C×HW
    flat_m = masks.flatten(1)
    area = flat_m.sum(1, keepdim=True).clamp(min=1).to(scores.dtype)
    out = scores.new_zeros(masks.shape[0], scores.shape[0])
    step = max(1, max_elements // max(1, flat_s.shape[1]))
    for j in range(0, masks.shape[0], step):
        out[j:j + step] = flat_m[j:j + step].to(scores.dtype) @ flat_s.T
    return out / area


def refine_with_masks(scores: torch.Tensor, masks: torch.Tensor, overlap: str = "mean",
                      max_elements: int = 2 ** 25) -> torch.Tensor:
    """Scores averaged inside masks (module doc): ``C×H×W`` scores, ``N×H×W`` bool masks →
    ``C×H×W``. Covered pixels take the mean of their masks' means (``overlap="mean"``) or
    their smallest mask's mean (``"smallest"``); uncovered pixels keep their scores."""
    if overlap not in OVERLAPS:
        raise SettingError(f"unknown mask overlap rule {overlap!r}; choose from {', '.join(OVERLAPS)}")
    if tuple(masks.shape[-2:]) != tuple(scores.shape[-2:]):
        raise ValueError(f"masks {tuple(masks.shape[-2:])} and scores {tuple(scores.shape[-2:])} differ in size")
    masks = masks[masks.flatten(1).any(1)]  # empty masks cover nothing
    if masks.shape[0] == 0:
        return scores
    means = mask_means(scores, masks, max_elements)  # N×C
    flat_m = masks.flatten(1)
    if overlap == "smallest":
        order = torch.sort(flat_m.sum(1), stable=True).indices  # ascending area, ties: earlier mask first
        owner = torch.zeros(flat_m.shape[1], dtype=torch.long, device=scores.device)
        for n in order.flip(0).tolist():  # largest first, so the smallest covering mask is painted last
            owner[flat_m[n]] = n
        values = means[owner].T  # C×HW (read only where covered)
    else:
        values = scores.new_zeros(scores.shape[0], flat_m.shape[1])
        step = max(1, max_elements // max(1, flat_m.shape[1]))
        for j in range(0, masks.shape[0], step):
            values += means[j:j + step].T @ flat_m[j:j + step].to(scores.dtype)
        values /= flat_m.sum(0).clamp(min=1).to(scores.dtype)
    covered = flat_m.any(0)
    return torch.where(covered, values, scores.flatten(1)).view_as(scores)


# ------------------------------------------------------------------------------ PAMR

def _padded(x: torch.Tensor, d: int) -> torch.Tensor:
    """``C×H×W`` → ``C×(H+2d)×(W+2d)``, border values repeated (pamr.py's ``mode='replicate'``)."""
    return F.pad(x[None], [d] * 4, mode="replicate")[0]


def _shift(padded: torch.Tensor, d: int, dy: int, dx: int, h: int, w: int) -> torch.Tensor:
    """The value at ``(y + d·dy, x + d·dx)`` (clamped into the image) for every ``(y, x)``."""
    return padded[:, d + d * dy:d + d * dy + h, d + d * dx:d + d * dx + w]


def pamr_affinity(image: torch.Tensor, dilations=(8, 16)) -> torch.Tensor:
    """PAMR's neighbour weights (module doc) of a ``C×H×W`` image (float): ``P×H×W``,
    ``P = 8·len(dilations)``, neighbours in the order dilation-major, then
    :data:`NEIGHBOURS`; they sum to 1 at every pixel."""
    h, w = image.shape[-2:]
    pads = {d: _padded(image, d) for d in dilations}
    window = [(d, dy, dx) for d in dilations for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    mean = sum(_shift(pads[d], d, dy, dx, h, w) for d, dy, dx in window) / len(window)
    var = sum((_shift(pads[d], d, dy, dx, h, w) - mean) ** 2 for d, dy, dx in window) / (len(window) - 1)
    scale = 1e-8 + 0.1 * var.sqrt()  # C×H×W
    logits = torch.stack([-((image - _shift(pads[d], d, dy, dx, h, w)).abs() / scale).mean(0)
                          for d in dilations for dy, dx in NEIGHBOURS])
    return logits.softmax(0)


def pamr_propagate(scores: torch.Tensor, affinity: torch.Tensor, dilations=(8, 16),
                   iterations: int = 10) -> torch.Tensor:
    """``iterations`` times ``m(i) ← Σ_j a(i, j) m(j)`` on ``C×H×W`` scores with the
    ``P×H×W`` weights of :func:`pamr_affinity` (same ``dilations``). Each class on its own."""
    h, w = scores.shape[-2:]
    for _ in range(iterations):
        out = torch.zeros_like(scores)
        p = 0
        for d in dilations:
            padded = _padded(scores, d)
            for dy, dx in NEIGHBOURS:
                out.addcmul_(affinity[p], _shift(padded, d, dy, dx, h, w))
                p += 1
        scores = out
    return scores


def pamr(image: torch.Tensor, scores: torch.Tensor, iterations: int = 10, dilations=(8, 16)) -> torch.Tensor:
    """PAMR of ``C×H×W`` scores guided by a ``3×H×W`` image (module doc)."""
    return pamr_propagate(scores, pamr_affinity(image.float(), dilations), dilations, iterations)


# ------------------------------------------------------------------------ settings

@dataclass(frozen=True)
class MaskRefinement:
    """``--refine masks``: scores averaged inside each image's masks (:func:`refine_with_masks`)."""

    overlap: str = "mean"
    needs_masks: ClassVar[bool] = True

    def __post_init__(self):
        if self.overlap not in OVERLAPS:
            raise SettingError(f"unknown mask overlap rule {self.overlap!r} (--mask-overlap); "
                               f"choose from {', '.join(OVERLAPS)}")

    def info(self) -> dict:
        return {"method": "masks", "overlap": self.overlap, "resolution": "image"}

    def transform(self, masks: torch.Tensor | None, guide: Callable[[], torch.Tensor]):
        """The per-chunk function of one image: ``C×H×W`` scores → refined."""
        if masks is None:
            raise SettingError("mask refinement needs the masks of every image (predict(images, masks=...))")
        return lambda chunk: refine_with_masks(chunk, masks, self.overlap)


@dataclass(frozen=True)
class PAMRRefinement:
    """``--refine pamr``: pixel-adaptive mask refinement (:func:`pamr`), the papers' settings."""

    iterations: int = 10
    dilations: tuple[int, ...] = (8, 16)
    needs_masks: ClassVar[bool] = False

    def __post_init__(self):
        if self.iterations < 1:
            raise SettingError(f"PAMR iterations (--pamr-iterations) must be >= 1, got {self.iterations}")
        if not self.dilations or any(int(d) < 1 for d in self.dilations):
            raise SettingError(f"PAMR dilations (--pamr-dilations) must be positive, got {list(self.dilations)}")
        object.__setattr__(self, "dilations", tuple(int(d) for d in self.dilations))

    def info(self) -> dict:
        return {"method": "pamr", "iterations": self.iterations, "dilations": list(self.dilations),
                "resolution": "image", "guide": "the input image at the protocol's short side, resized back"}

    def transform(self, masks, guide: Callable[[], torch.Tensor]):
        affinity = pamr_affinity(guide().float(), self.dilations)
        return lambda chunk: pamr_propagate(chunk, affinity, self.dilations, self.iterations)


# -------------------------------------------------------------------------- labels

def refined_labels(scores: torch.Tensor, size, transform: Callable[[torch.Tensor], torch.Tensor],
                   logit_scale: float = 100.0, bg_threshold: float | None = None, probabilities: bool = False,
                   max_elements: int = 2 ** 25, among=None, confidence: bool = False):
    """Low-resolution scores ``K×h×w`` → int64 labels ``H×W`` of ``transform`` applied to the
    scores upsampled to ``size`` (bilinear), without a ``K×H×W`` tensor.

    ``transform`` maps ``c×H×W`` → ``c×H×W`` acting on each class alone (it sees the classes
    in chunks of about ``max_elements`` values). Labels as
    :func:`labelless.labelmaps.labels_from_similarity` of the whole transformed map: the first
    maximum; with ``bg_threshold`` label 0 below the top probability (the refined score itself
    when ``probabilities``, else the max of softmax(``logit_scale`` · score), its exp-sum
    rescaled from chunk to chunk, exactly the reference's when one chunk holds every class).
    ``among`` (class ids): only these compete for the maximum, the exp-sum still spans every
    class (as ``upsample_labels``; SCLIP's area threshold). ``confidence``: return
    ``(labels, top probability H×W float32)``, the value the threshold tests (computed with
    or without one; ``labelless.selftrain.label``'s confidence of refined labels).
    """
    size = (int(size[0]), int(size[1]))
    scaled = bg_threshold is not None and not probabilities  # the maximum is taken of logits
    expsum = not probabilities and (scaled or confidence)
    best = torch.full(size, -math.inf, device=scores.device)
    idx = torch.zeros(size, dtype=torch.long, device=scores.device)
    total = torch.zeros(size, device=scores.device) if expsum else None
    peak = torch.full(size, -math.inf, device=scores.device)  # max logit over every class (the exp-sum's shift)
    barred = _barred(scores.shape[0], among)
    for ids, up in upsampled_classes(scores, size, max_elements):
        x = transform(up)
        if scaled:
            x = x * logit_scale
        xm = x
        if barred is not None and bool(barred[ids].any()):  # barred classes never win, still in the exp-sum
            xm = x.masked_fill(barred[ids].to(x.device)[:, None, None], -math.inf)
        m, i = xm.max(dim=0)
        gt = m > best  # strictly greater: a tie keeps the lower class
        idx = torch.where(gt, torch.tensor(ids, dtype=torch.long, device=idx.device)[i], idx)
        best = torch.maximum(best, m)
        if expsum:  # the exp-sum over every class, stabilised by the running max over every class
            xs = x if scaled else x * logit_scale
            new = torch.maximum(peak, m if xm is x and scaled else xs.amax(dim=0))
            total = total * torch.exp(peak - new)
            for plane in xs:
                total = total + torch.exp(plane - new)
            peak = new
        del up, x, xm
    if bg_threshold is None and not confidence:
        return idx
    # max_k x·s = (max_k x)·s exactly, so without ``among`` the numerator is exp(0): 1 / total as the reference
    conf = best if probabilities else torch.exp((best if scaled else best * logit_scale) - peak) / total
    if bg_threshold is not None:
        idx = torch.where(conf < bg_threshold, torch.zeros_like(idx), idx + 1)
    return (idx, conf) if confidence else idx


def _barred(num_classes: int, among) -> torch.Tensor | None:
    """``K`` bool: the classes not in ``among`` (None: every class competes)."""
    if among is None:
        return None
    barred = torch.ones(num_classes, dtype=torch.bool)
    barred[torch.as_tensor(list(among), dtype=torch.long)] = False
    if bool(barred.all()):
        raise ValueError("among: no class left to choose from")
    return barred
