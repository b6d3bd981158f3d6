"""Pseudo-label a benchmark split with any labelless model (``labelless selftrain label``).

Every sample's image is segmented with the dataset's class names by a ``Segmenter`` (any
scorer, protocol, templates, background threshold) and written into a pseudo-label store
(``labelless.selftrain.store``): the label map — the same labels, pixel for pixel, as
``Segmenter.predict`` and ``labelless segment`` with the same options — and a per-pixel
confidence. The split's label files are never read.

Choices:

- **Confidence** is the quantity ``--bg-threshold`` compares (``labelless.labelmaps``): the
  top class probability at the pixel, from the scores bilinearly resized to the image.
  Dense CLIP scorers: ``max_k softmax(logit_scale · cos)_k``. Scorers whose scores are
  probabilities (``scorer.probabilities``): the top class score itself; for the
  mask-classification scorer (S-Seg) that is ``max_k Σ_n sigmoid(mask_n) · p_n(k)``, which
  MaskFormer treats as a probability but which exceeds 1 where masks overlap (stored
  clipped to 1; measured on the CamVid S-Seg of ``experiments/sseg_camvid``, 16 queries: top
  scores mostly 0.4–0.9, above 1 at under 1 % of pixels; a random ``sseg-tiny`` is above 1
  everywhere, so its stored confidence is all 255).
  With a background threshold it is the top *foreground* class's, also on pixels labelled
  background (those are below the threshold by definition). Stored as ``round(255 · c)``.
- **Exact, at full resolution, bounded memory.** The confidence is computed at every pixel
  of the image with labelmaps' chunked code (the classes upsampled a chunk at a time, the
  soft-max denominator summed plane by plane), not at the score resolution and resized: it
  is the same float the background threshold tests, and memory stays bounded by the chunk
  (``max_elements``), never ``K×H×W``. It costs upsampling every class once more than the
  labels alone for cosine scorers without a threshold.
- **One image per forward.** Batched kernels round differently for different batch sizes
  (measured: tiny-vit squash scores of 4 images batched differ in the last bits from one
  at a time), which could flip near-tied pixels. So each image is scored alone, as
  ``labelless segment`` does (``--batch-size`` still batches slide windows): an image's
  labels never depend on its batch-mates, rank, world size or on resuming (given the same
  device and thread count: torchrun gives each process ``OMP_NUM_THREADS=1``).
- **Refinement** (``--refine pamr``, or ``--refine masks --masks SOURCE`` with any mask
  source but the ground truth, which is the split's labels): the labels are
  ``Segmenter.predict``'s refined ones, and the confidence is the top probability of the
  refined scores (the quantity the background threshold then tests), so labels and
  confidence stay one computation. Masks are made or read one image at a time.
- **Filtering** (``--min-confidence p``) compares the *stored* confidence ``q`` (``q < 255·p``
  becomes ``ignore_index``, by default the dataset's), so a threshold applied later to an
  unfiltered store (``store.load_pseudo_label``) gives exactly the same labels.
- **Resume**: an image whose two PNGs exist is not labelled again (read back only for the
  histogram). An unreadable image is reported by name, counted and has no PNGs, so the
  next run tries it again.
- **Processes** (torchrun): rank ``r`` labels samples ``r::world``; the counts, skipped
  images and histograms are gathered and rank 0 writes ``store.json``. Within a process,
  ``--workers`` DataLoader processes decode the images (``labelless.io.load_batches``).
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from labelless.distributed import all_gather_object, barrier, get_rank, get_world_size
from labelless.errors import LabellessError, SettingError
from labelless.io import default_workers, load_batches
from labelless.labelmaps import _exp_sum, _running_argmax, candidate_classes
from labelless.refine import refined_labels
from labelless.selftrain.store import (
    apply_min_confidence,
    check_resume,
    confidence_path,
    label_path,
    read_label_png,
    save_pseudo_label,
    write_store,
)

__all__ = ["class_histogram", "confidence_definition", "label_benchmark", "label_samples", "labels_and_confidence",
           "pseudo_label", "quantize_confidence"]


def labels_and_confidence(scores: torch.Tensor, size, logit_scale: float = 100.0, bg_threshold: float | None = None,
                          probabilities: bool = False, max_elements: int = 2 ** 25):
    """Low-resolution scores ``K×h×w`` → (labels ``H×W`` int64, confidence ``H×W`` float32).

    Labels: bit for bit ``labelmaps.upsample_labels(scores, size, logit_scale, bg_threshold,
    probabilities, max_elements)`` (the same steps). Confidence: the top class probability
    of the upsampled scores (module docstring), the value ``bg_threshold`` is compared with.
    """
    if scores.dim() != 3 or scores.shape[0] == 0:
        raise ValueError(f"expected K×h×w scores with K >= 1, got shape {tuple(scores.shape)}")
    size = (int(size[0]), int(size[1]))
    if size[0] * size[1] == 0:
        return (torch.zeros(size, dtype=torch.long, device=scores.device),
                torch.zeros(size, device=scores.device))
    s4 = scores[None].float()
    if not torch.isfinite(s4).all():
        raise ValueError("scores contain NaN or infinity")
    scaled = bg_threshold is not None and not probabilities  # upsample_labels' running max is of logits
    prune = not scaled or (1e-20 <= logit_scale and float(s4.abs().max()) * logit_scale < 1e38)
    ids = candidate_classes(scores).tolist() if prune else list(range(scores.shape[0]))
    best, idx = _running_argmax(s4, ids, size, logit_scale if scaled else None, max_elements)
    if probabilities:
        conf = best
    else:  # max of the logits: the running max, or the max score times the scale (the same floats)
        top = best if scaled else best * logit_scale
        conf = _exp_sum(s4, top, size, logit_scale, max_elements).reciprocal_()
    if bg_threshold is None:
        return idx, conf
    return idx.add_(1).masked_fill_(conf < bg_threshold, 0), conf


def quantize_confidence(conf: torch.Tensor) -> torch.Tensor:
    """``H×W`` float confidence → uint8 ``round(255 · c)``, ``c`` clipped to [0, 1]."""
    return (conf.float().clamp(0, 1) * 255).round_().to(torch.uint8)


def class_histogram(labels: np.ndarray, num_classes: int, ignore_index: int) -> np.ndarray:
    """Pixels per class of ``labels`` (``H×W``): ``num_classes + 1`` counts, the last the ignored pixels."""
    flat = np.asarray(labels).ravel()
    flat = np.where(flat == ignore_index, num_classes, flat)
    return np.bincount(flat, minlength=num_classes + 1)[: num_classes + 1].astype(np.int64)


def pseudo_label(segmenter, image: torch.Tensor, min_confidence: float | None, ignore_index: int,
                 masks: torch.Tensor | None = None):
    """One image (``3×H×W``) → (labels ``H×W`` int64, confidence ``H×W`` uint8) as numpy arrays.

    With ``segmenter.refine`` (``--refine pamr | masks``; ``masks``: the image's ``N×H×W``
    masks for the latter) the labels are ``Segmenter.predict``'s refined ones and the
    confidence is the top probability of the refined scores
    (``labelless.refine.refined_labels(confidence=True)``)."""
    if getattr(segmenter, "area_threshold", None) is not None:
        raise SettingError("selftrain label has no --area-threshold (its confidence would not be the labels' own)")
    (scores,) = segmenter.scores([image])
    size, probs = tuple(image.shape[-2:]), segmenter.scorer.probabilities
    if getattr(segmenter, "refine", None) is None:
        labels, conf = labels_and_confidence(scores, size, segmenter.logit_scale, segmenter.bg_threshold, probs)
    else:
        labels, conf = refined_labels(scores, size, segmenter.refine_transform(image, masks), segmenter.logit_scale,
                                      segmenter.bg_threshold, probs, confidence=True)
    labels = segmenter.output_labels(labels)  # synonym rows (max_prob) / a named background → classes
    q = quantize_confidence(conf).cpu().numpy()
    return apply_min_confidence(labels.cpu().numpy(), q, min_confidence, ignore_index), q


def confidence_definition(probabilities: bool, logit_scale: float) -> str:
    """What the confidence PNGs hold, in words (for store.json)."""
    if probabilities:
        return ("top class score of a probability scorer (mask classification: sum_n sigmoid(mask_n) p_n(class), "
                "which may exceed 1), clipped to 1, x255")
    return f"top class probability softmax({logit_scale:g} * cos), x255"


def _done_labels(store, name: str):
    """The stored label map of ``name`` when both PNGs exist and the label reads, else None."""
    if not (label_path(store, name).is_file() and confidence_path(store, name).is_file()):
        return None
    try:
        return read_label_png(label_path(store, name))
    except LabellessError:  # unreadable despite the atomic writes (edited by hand?): label it again
        return None


def _todo(store, samples, num_classes: int, ignore_index: int) -> tuple[list, int, np.ndarray]:
    """The samples still to label, the number resumed and their histogram (``num_classes + 1``)."""
    hist = np.zeros(num_classes + 1, dtype=np.int64)
    todo, resumed = [], 0
    for s in samples:
        done = _done_labels(store, s.name)
        if done is None:
            todo.append(s)
        else:
            hist += class_histogram(done, num_classes, ignore_index)
            resumed += 1
    return todo, resumed, hist


def label_samples(segmenter, samples, store, num_classes: int, ignore_index: int,
                  min_confidence: float | None = None, progress: bool = True, workers: int | None = None,
                  masks=None) -> dict:
    """Label ``samples`` (``.name``, ``.image``) into ``store``; images already there are resumed.

    ``workers``: image-decoding DataLoader processes (default :func:`labelless.io.default_workers`).
    ``masks``: the mask source of a mask refinement (``labelless.masks.per_image``; never the
    ground truth: a mask source that needs labels is refused), called with one image at a time.
    Returns ``{"labelled", "resumed", "skipped": [{"image", "error"}], "histogram"}`` (the
    histogram: ``num_classes + 1`` pixel counts over labelled and resumed images).
    """
    from tqdm import tqdm

    if masks is not None and getattr(masks, "needs_labels", False):
        raise SettingError("pseudo-labels never read the split's labels: --masks gt cannot refine them (give a "
                           "mask source such as dino or a mask store)")
    if getattr(segmenter, "refine", None) is not None and segmenter.refine.needs_masks and masks is None:
        raise SettingError("this segmenter refines with masks: pass label_samples(..., masks=SOURCE)")
    todo, resumed, hist = _todo(store, samples, num_classes, ignore_index)
    workers = default_workers(segmenter.device) if workers is None else workers
    skipped, labelled = [], 0
    with tqdm(total=len(todo), desc="pseudo-labels", unit="img", disable=not progress) as bar:
        for (item,) in load_batches([s.image for s in todo], 1, workers, pin_memory=segmenter.device.type == "cuda"):
            sample = todo[item["index"]]
            if item["error"] is not None:
                skipped.append({"image": str(sample.image), "error": item["error"]})
                tqdm.write(f"skipped: {item['error']}", file=sys.stderr)
            else:
                image = item["image"].to(segmenter.device, non_blocking=True)
                found = None if masks is None else masks([image], [sample.name], [None])[0]
                labels, conf = pseudo_label(segmenter, image, min_confidence, ignore_index, found)
                save_pseudo_label(store, sample.name, labels, conf, num_classes, ignore_index)
                hist += class_histogram(labels, num_classes, ignore_index)
                labelled += 1
            bar.update(1)
    return {"labelled": labelled, "resumed": resumed, "skipped": skipped, "histogram": hist}


def _merge(parts: list[dict], num_classes: int) -> tuple[dict, list, dict]:
    """Counts, skipped images and histogram summed over the ranks' ``label_samples`` results."""
    hist = sum((p["histogram"] for p in parts), np.zeros(num_classes + 1, dtype=np.int64))
    skipped = sorted((s for p in parts for s in p["skipped"]), key=lambda s: s["image"])
    counts = {k: sum(p[k] for p in parts) for k in ("labelled", "resumed")}
    counts.update(skipped=len(skipped), images=counts["labelled"] + counts["resumed"])
    histogram = {"pixels_per_class": hist[:num_classes].tolist(), "ignored": int(hist[num_classes]),
                 "total": int(hist.sum())}
    return counts, skipped, histogram


def label_benchmark(segmenter, bench, store, meta: dict, max_images: int | None = None,
                    progress: bool = True, workers: int | None = None, masks=None) -> dict:
    """Label the first ``max_images`` samples of ``bench`` (all by default) into ``store``.

    ``meta``: the store.json entries that describe the run (``store`` module docstring, at
    least the :data:`~labelless.selftrain.store.SETTINGS` keys). Under ``torch.distributed``
    every rank calls this; rank ``r`` labels samples ``r::world``. ``workers``, ``masks``: as
    :func:`label_samples`. Returns store.json's content.
    """
    rank, world = get_rank(), get_world_size()
    samples = bench.samples[:max_images] if max_images is not None else bench.samples
    check_resume(store, meta)  # every rank: each raises alike
    barrier()  # every rank has read the old store.json before it is replaced
    if rank == 0:
        write_store(store, {"complete": False, **meta})
    num_classes, ignore = len(meta["classes"]), meta["ignore_index"]
    part = label_samples(segmenter, samples[rank::world], store, num_classes, ignore, meta["min_confidence"],
                         progress and rank == 0, workers, masks)
    counts, skipped, histogram = _merge(all_gather_object(part), num_classes)
    result = {"complete": True, **meta, "counts": {"samples": len(samples), **counts}, "skipped": skipped,
              "histogram": histogram}
    if rank == 0:
        write_store(store, result)
    barrier()  # store.json is there when any rank returns
    return result
