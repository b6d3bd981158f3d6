"""Score a segmenter on a benchmark split: the loop behind ``labelless eval``.

- **Loading**: a ``torch.utils.data.DataLoader`` (:func:`labelless.io.load_batches`) whose
  ``workers`` processes decode each image and read its label, at most ``prefetch_factor``
  batches per worker ahead (memory bounded by the batch); 0 workers = in this process.
  Images of different sizes stay a list (``Segmenter.predict`` takes a list). On CUDA the
  tensors come pinned and are copied with ``non_blocking``.
- **Errors**: an unreadable or truncated image is reported by name (``skipped: ...``),
  skipped and counted (``results["skipped"]``); a bad label file stops the run with its name
  (a wrong dataset layout or label mapping would make every score meaningless).
- **Counting** on the prediction's device (:class:`~labelless.evaluate.ConfusionMatrix`):
  only the final matrix goes to the host.
- **Processes** (torchrun, ``labelless.distributed``): rank ``r`` scores samples
  ``r::world``; the confusion matrix is summed over the ranks, the skipped images and
  counts are gathered (in sample order), so every rank returns the results of one process
  (predict with ``--batch-size 1`` for bit-equal labels: batch-mates change the rounding).
  Prediction PNGs are written by the rank that scored the image; the caller writes the
  report on rank 0.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from labelless.distributed import all_gather_object, get_rank, get_world_size, in_list_order
from labelless.errors import DatasetError
from labelless.evaluate import ConfusionMatrix, compute_metrics
from labelless.io import default_workers, load_batches
from labelless.segment import Segmenter
from labelless.visualize import save_index_png


class _Labels:
    """Picklable ``i → label`` (``H×W`` tensor of class indices / ignore_index) of ``samples[i]``,
    run in a loader worker; a bad label file raises DatasetError naming it (``Benchmark.load_label``).
    uint8 when the values fit (most datasets: 8× less to pass between processes and to the GPU
    than int64), else int32; the confusion matrix widens it on the device."""

    def __init__(self, bench, samples):
        self.bench, self.samples = bench, samples
        small = 0 <= bench.ignore_index < 256 and len(bench.classes) <= 256
        self.dtype = np.uint8 if small else np.int32

    def __call__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self.bench.load_label(self.samples[i]).astype(self.dtype))


def _batches(bench, samples, chunk: int, workers: int, pin: bool, skipped: list, bar):
    """Lists of up to ``chunk`` readable loader items (``index`` into ``samples``, ``image``
    ``3×H×W`` uint8, ``extra`` = label ``H×W``); unreadable images are reported and recorded in
    ``skipped`` as ``(index, {"image", "error"})``."""
    for batch in load_batches([s.image for s in samples], chunk, workers, _Labels(bench, samples), pin):
        good = []
        for item in batch:
            if item["error"] is None:
                good.append(item)
                continue
            skipped.append((item["index"], {"image": str(samples[item["index"]].image), "error": item["error"]}))
            tqdm.write(f"skipped: {item['error']}")
            bar.update(1)
        if good:
            yield good


def _score_batch(segmenter: Segmenter, bench, samples, batch, conf: ConfusionMatrix, pred_dir: Path | None,
                 masks=None) -> None:
    images = [it["image"].to(segmenter.device, non_blocking=True) for it in batch]
    found = None
    if masks is not None:  # a mask source (labelless.masks.per_image): by image, name or label
        found = masks(images, [samples[it["index"]].name for it in batch], [it["extra"] for it in batch])
    preds = segmenter.predict(images, found)
    for it, im, pred in zip(batch, images, preds):
        s, label = samples[it["index"]], it["extra"]
        if tuple(label.shape) != tuple(pred.shape):
            raise DatasetError(f"label {s.label} is {label.shape[1]}×{label.shape[0]} but image "
                               f"{s.image} is {im.shape[2]}×{im.shape[1]} (W×H)")
        conf.update(pred, label.to(pred.device, non_blocking=True))
        if pred_dir is not None:
            save_index_png(pred, pred_dir / f"{s.name}.png", len(bench.classes))


def _merge_ranks(parts: list) -> tuple[int, list, float]:
    """Images scored, skipped entries in sample order, and the slowest rank's seconds, from
    every rank's ``(done, [(index in its shard, entry)], seconds)``."""
    return sum(p[0] for p in parts), in_list_order([p[1] for p in parts]), max(p[2] for p in parts)


def score_benchmark(segmenter: Segmenter, bench, out_dir=None, save_predictions: bool = False,
                    limit: int | None = None, progress: bool = True, workers: int | None = None,
                    masks=None) -> dict:
    """Run ``segmenter`` over ``bench`` and return the metrics dict (see labelless.evaluate).

    Adds ``num_images``, ``skipped`` (list of {"image", "error"}), ``num_skipped`` and
    ``seconds``. With ``save_predictions`` writes ``out_dir/predictions/<name>.png``.
    ``workers``: loader processes (default :func:`labelless.io.default_workers` of the
    segmenter's device). ``masks``: the mask source of a mask refinement
    (``labelless.masks.per_image``; ``gt`` reads the label the loader gives). Under
    torch.distributed every rank calls this on its share of the
    split and gets the same, whole-split results (module docstring).
    """
    rank, world = get_rank(), get_world_size()
    samples = bench.samples[:limit] if limit else bench.samples
    mine = samples[rank::world]
    workers = default_workers(segmenter.device) if workers is None else workers
    conf = ConfusionMatrix(len(bench.classes), bench.ignore_index, device=None)  # the predictions' device
    pred_dir = Path(out_dir) / "predictions" if save_predictions else None
    skipped, done = [], 0
    start = time.time()
    with tqdm(total=len(mine), desc=f"eval {bench.name}", unit="img", disable=not progress or rank != 0) as bar:
        for batch in _batches(bench, mine, max(1, segmenter.batch_size), workers,
                              segmenter.device.type == "cuda", skipped, bar):
            _score_batch(segmenter, bench, mine, batch, conf, pred_dir, masks)
            done += len(batch)
            bar.update(len(batch))
    conf.all_reduce()
    results = compute_metrics(conf.matrix, bench.classes)
    done, skipped, seconds = _merge_ranks(all_gather_object((done, skipped, time.time() - start)))
    results.update(num_images=done, num_skipped=len(skipped), skipped=skipped, seconds=round(seconds, 2))
    return results
