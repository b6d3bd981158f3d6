"""Oracle mIoU of class-agnostic masks: how well a set of masks *could* segment a benchmark
if every mask were given its best single class.

Every mask takes the majority ground-truth class of its non-ignored pixels (ties: the
smallest class index); masks are painted in order, so where masks overlap the later one
wins — with masks sorted by area (largest first, the default of :func:`oracle_score`)
the smaller mask wins. A mask that covers only ignored pixels labels nothing.

Uncovered pixels (no mask) get the label ``num_classes``, an extra "uncovered" column of
the confusion matrix that is never right: such a pixel is scored as an error (a false
negative of its true class, lowering that class's IoU and the pixel accuracy), and the
uncovered column is not a class — it is excluded from the mean IoU/accuracy, which are
over the benchmark's real classes only. ``uncovered_scored_pixels`` reports the share.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from labelless.errors import MaskStoreError
from labelless.masks import ops
from labelless.masks.store import list_names, open_store, read_masks

__all__ = ["oracle_labels", "oracle_score"]


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def oracle_labels(masks, gt, num_classes: int, ignore_index: int | None = 255):
    """``H×W`` int64 labels: each mask painted with its majority GT class (see module doc).

    masks: ``N×H×W`` bool; gt: ``H×W`` int, values in ``[0, num_classes)`` or ``ignore_index``.
    Pixels covered by no mask get ``num_classes``. Returns a torch tensor when ``gt`` is one,
    else a numpy array.
    """
    m = _np(masks)
    g = _np(gt)
    if m.ndim != 3 or g.ndim != 2 or m.shape[1:] != g.shape:
        raise ValueError(f"masks must be N×H×W and gt H×W of the same size, got {m.shape} and {g.shape}")
    if g.dtype.kind not in "iu":
        raise ValueError(f"gt must hold integer class indices, got dtype {g.dtype}")
    K = int(num_classes)
    g = g.astype(np.int64)
    valid = (g >= 0) & (g < K)
    ignored = g == ignore_index if ignore_index is not None else np.zeros_like(valid)
    bad = ~valid & ~ignored
    if bad.any():
        raise ValueError(f"gt has values outside [0, {K}) that are not the ignore index "
                         f"({ignore_index}): {np.unique(g[bad])[:10].tolist()}")
    gv = np.where(valid, g, K)  # ignored pixels -> bin K, dropped below
    out = np.full(g.shape, K, dtype=np.int64)
    for mask in m.astype(bool, copy=False):
        counts = np.bincount(gv[mask], minlength=K + 1)[:K]
        if counts.any():
            out[mask] = int(counts.argmax())
    return torch.from_numpy(out).to(gt.device) if isinstance(gt, torch.Tensor) else out


def _resize_masks_to(masks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest (pixel-centre) resize of N×H×W bool masks to ``size``."""
    if masks.shape[1:] == size:
        return masks
    if masks.shape[0] == 0:
        return np.zeros((0, *size), dtype=bool)
    t = torch.from_numpy(masks).to(torch.uint8)[None]
    return F.interpolate(t, size=size, mode="nearest-exact")[0].bool().numpy()


def _samples_with_masks(store: Path, bench) -> list:
    """The samples of ``bench`` with a record in ``store``; MaskStoreError (with examples) if none."""
    have = set(list_names(store))
    todo = [s for s in bench.samples if s.name in have]
    if not todo:
        example = next(iter(sorted(have)), None)
        raise MaskStoreError(
            f"no {bench.name} sample ({len(bench.samples)} in the split, e.g. {bench.samples[0].name!r}) "
            f"has masks in {store} ({len(have)} records" + (f", e.g. {example!r})" if example else ")")
        )
    return todo


def _metrics_without_uncovered(matrix, classes: list[str]) -> dict:
    """The evaluator's metrics of a ``(K+1)×(K+1)`` confusion matrix whose last column counts
    uncovered pixels: that column is dropped from the per-class tables and the means (module doc)."""
    from labelless.evaluate import compute_metrics

    k = len(classes)
    metrics = compute_metrics(matrix, classes + ["(uncovered)"])
    for key in ("per_class", "per_class_acc"):
        metrics[key] = dict(list(metrics[key].items())[:k])
    ious = [v for v in metrics["per_class"].values() if v is not None]
    accs = [v for v in metrics["per_class_acc"].values() if v is not None]
    metrics["mIoU"] = float(np.mean(ious)) if ious else float("nan")
    metrics["mAcc"] = float(np.mean(accs)) if accs else float("nan")
    metrics["num_classes"] = k
    return metrics


def oracle_score(store_dir, bench, out_dir=None, sort_by_area: bool = True, max_masks: int | None = None,
                 progress: bool = True) -> dict:
    """Oracle mIoU of a mask store on a benchmark split (:class:`labelless.data.benchmarks.Benchmark`).

    Scores the benchmark samples that have a record in the store (matched by name = image
    stem) and a label file. Masks are sorted by area (largest first) and cut to
    ``max_masks`` like :class:`~labelless.masks.store.MaskStoreDataset`; masks stored at
    another size than the label are resized to it (nearest). Returns the evaluator's
    metrics (mIoU, pAcc, mAcc, fwIoU, per-class; percent) plus ``num_images_with_masks``,
    ``num_images_in_split``, ``num_images_without_label`` (with masks but no label, not
    scored), ``mean_masks_per_image``, ``pixel_coverage`` (percent of the scored images'
    pixels covered by at least one mask) and ``uncovered_scored_pixels`` (percent of the
    non-ignored pixels that no mask covers, all counted as errors). With ``out_dir``
    writes results.json / results.md / per_class_iou.png there. Raises MaskStoreError when
    no sample of the split has masks in the store.
    """
    from tqdm import tqdm

    from labelless.evaluate import ConfusionMatrix, write_report

    store = Path(store_dir)
    meta = open_store(store)
    K = len(bench.classes)
    todo = _samples_with_masks(store, bench)
    cm = ConfusionMatrix(K + 1, ignore_index=bench.ignore_index)
    n_images = n_masks = n_pixels = n_covered = n_unlabelled = 0
    for sample in tqdm(todo, desc=f"oracle {meta['source']} on {bench.name}", unit="img", disable=not progress):
        if sample.label is None:
            n_unlabelled += 1
            continue
        masks, _ = read_masks(store, sample.name)
        if sort_by_area:
            masks = ops.sort_by_area(masks)
        masks = ops.cap_masks(masks, max_masks)
        gt = bench.load_label(sample)
        masks = _resize_masks_to(masks, gt.shape)
        cm.update(oracle_labels(masks, gt, K, bench.ignore_index), gt)
        n_images += 1
        n_masks += masks.shape[0]
        n_pixels += gt.size
        n_covered += int(masks.any(0).sum()) if masks.shape[0] else 0
    matrix = cm.matrix
    metrics = _metrics_without_uncovered(matrix, list(bench.classes))
    scored = int(matrix.sum())
    uncovered = int(matrix[:, K].sum())
    results = {
        "dataset": bench.name,
        "store": str(store),
        "source": meta["source"],
        "num_images_with_masks": len(todo),
        "num_images_in_split": len(bench.samples),
        "num_images_scored": n_images,
        "num_images_without_label": n_unlabelled,
        "mean_masks_per_image": n_masks / n_images if n_images else float("nan"),
        "pixel_coverage": 100.0 * n_covered / n_pixels if n_pixels else float("nan"),
        "uncovered_scored_pixels": 100.0 * uncovered / scored if scored else float("nan"),
        "uncovered": "pixels no mask covers count as errors; not a class, excluded from the means",
        **metrics,
    }
    if out_dir is not None:
        write_report(results, out_dir, title=f"oracle mIoU of {meta['source']} masks on {bench.name}")
    return results
