"""How good the teacher's pseudo-labels of CamVid train are: their mIoU against the train
ground truth (read here for this analysis only; training never reads it), overall and for
the pixels above each confidence threshold (how much is kept, how good it is).

    python experiments/selftrain_camvid/label_quality.py STORE CAMVID_ROOT OUT.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from labelless.data.benchmarks import load_benchmark
from labelless.evaluate import ConfusionMatrix, compute_metrics
from labelless.selftrain.store import load_confidence, load_pseudo_label, read_store, store_samples

THRESHOLDS = (0.0, 0.3, 0.5, 0.7)


def main(argv: list[str]) -> int:
    store, root, out = Path(argv[0]), Path(argv[1]), Path(argv[2])
    meta = read_store(store)
    bench = load_benchmark("camvid", root, meta["split"])
    k = len(bench.classes)
    cms = {t: ConfusionMatrix(k, bench.ignore_index) for t in THRESHOLDS}
    kept = {t: 0 for t in THRESHOLDS}
    total = 0
    labelled = {str(image) for image, _, _ in store_samples(store, bench.samples)}  # MAX_IMAGES: a part
    for sample in (s for s in bench.samples if str(s.image) in labelled):
        gt = bench.load_label(sample)
        pred, conf = load_pseudo_label(store, sample.name, meta=meta), load_confidence(store, sample.name)
        total += int((gt != bench.ignore_index).sum())
        for t in THRESHOLDS:
            keep = conf >= round(255 * t)
            masked_gt = np.where(keep, gt, bench.ignore_index)
            kept[t] += int((masked_gt != bench.ignore_index).sum())
            cms[t].update(pred, masked_gt)
    res = {f"confidence>={t}": {"mIoU": compute_metrics(cms[t].matrix, bench.classes)["mIoU"],
                                "pAcc": compute_metrics(cms[t].matrix, bench.classes)["pAcc"],
                                "kept": kept[t] / max(total, 1)} for t in THRESHOLDS}
    res["per_class"] = compute_metrics(cms[0.0].matrix, bench.classes)["per_class"]
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps({k: v for k, v in res.items() if k != "per_class"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
