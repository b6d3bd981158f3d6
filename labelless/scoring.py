"""Score a segmenter on a benchmark split: the loop behind ``labelless eval``.

Unreadable or truncated images are reported by name, skipped and counted
(``results["skipped"]``); a bad label file stops the run with its name (a wrong
dataset layout or label mapping would make every score meaningless).
"""

from __future__ import annotations

import time
from pathlib import Path

from tqdm import tqdm

from labelless.errors import DatasetError, ImageError
from labelless.evaluate import ConfusionMatrix, compute_metrics
from labelless.io import load_image, prefetch
from labelless.segment import Segmenter
from labelless.visualize import save_index_png


def _load(sample):
    try:
        return load_image(sample.image), None
    except ImageError as e:
        return None, str(e)


def _batches(samples, chunk: int, skipped: list, bar):
    """Decoded ``(sample, image)`` lists of up to ``chunk``, decoding at most one batch ahead;
    unreadable images are recorded in ``skipped`` and reported."""
    batch = []
    for sample, (image, err) in zip(samples, prefetch(samples, _load, depth=chunk, workers=2)):
        if err is not None:
            skipped.append({"image": str(sample.image), "error": err})
            tqdm.write(f"skipped: {err}")
            bar.update(1)
            continue
        batch.append((sample, image))
        if len(batch) == chunk:
            yield batch
            batch = []
    if batch:
        yield batch


def _score_batch(segmenter: Segmenter, bench, batch, conf: ConfusionMatrix, pred_dir: Path | None) -> None:
    preds = segmenter.predict([im for _, im in batch])
    for (s, im), pred in zip(batch, preds):
        label = bench.load_label(s)
        if tuple(label.shape) != tuple(pred.shape):
            raise DatasetError(f"label {s.label} is {label.shape[1]}×{label.shape[0]} but image "
                               f"{s.image} is {im.shape[2]}×{im.shape[1]} (W×H)")
        conf.update(pred, label)
        if pred_dir is not None:
            save_index_png(pred, pred_dir / f"{s.name}.png", len(bench.classes))


def score_benchmark(segmenter: Segmenter, bench, out_dir=None, save_predictions: bool = False,
                    limit: int | None = None, progress: bool = True) -> dict:
    """Run ``segmenter`` over ``bench`` and return the metrics dict (see labelless.evaluate).

    Adds ``num_images``, ``skipped`` (list of {"image", "error"}), ``num_skipped`` and
    ``seconds``. With ``save_predictions`` writes ``out_dir/predictions/<name>.png``.
    """
    samples = bench.samples[:limit] if limit else bench.samples
    conf = ConfusionMatrix(len(bench.classes), bench.ignore_index)
    pred_dir = Path(out_dir) / "predictions" if save_predictions else None
    skipped, done = [], 0
    start = time.time()
    with tqdm(total=len(samples), desc=f"eval {bench.name}", unit="img", disable=not progress) as bar:
        for batch in _batches(samples, max(1, segmenter.batch_size), skipped, bar):
            _score_batch(segmenter, bench, batch, conf, pred_dir)
            done += len(batch)
            bar.update(len(batch))
    results = compute_metrics(conf.matrix, bench.classes)
    results.update(num_images=done, num_skipped=len(skipped), skipped=skipped,
                   seconds=round(time.time() - start, 2))
    return results
