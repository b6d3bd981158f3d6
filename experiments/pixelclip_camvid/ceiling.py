"""What the PixelCLIP teacher knows at the mask level: a bound on what tuning can transfer.

    python experiments/pixelclip_camvid/ceiling.py --masks VAL_MASK_STORE --out OUT.json \
        NAME=CKPT [NAME=CKPT ...]

For each CLIP checkpoint, on every image of a CamVid split (``--split``, default val; same
protocol as run.sh's eval: pixelclip dense mode, 64-px windows sliding over the image at
short side 96, stride 32, template "a photo of {}"; ``--short-side`` / ``--input-size`` /
``--stride`` change the windows, e.g. 168 / 112 / 56 for the 112-px LiT CLIP of
../pixelclip_lit_camvid), three label maps are scored:

- ``per_pixel``: argmax of the class similarities at each pixel (= ``labelless eval``);
- ``mask_avg``: inside every DINO k-means mask of the image, the similarities averaged
  over the mask and its pixels given that one argmax (pixels no mask covers keep their
  own). This is the PixelCLIP teacher's view (mask-pooled dense features) read with the
  class names: a student that learned to reproduce, at every pixel, its teacher's
  mask-level decision would score about this;
- ``oracle``: every mask given its majority ground-truth class (the masks' own limit;
  it does not depend on the CLIP).

The val masks are computed like the training masks (``labelless masks generate --source
dino --k 16 --size 224``) on the val images; they are only used here, never in training.
Writes OUT.json (per checkpoint: mIoU, pAcc, per-class IoU of the three maps) and prints a
table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from labelless.data.benchmarks import load_benchmark
from labelless.evaluate import ConfusionMatrix, compute_metrics
from labelless.io import load_image
from labelless.masks.oracle import oracle_labels
from labelless.masks.pooling import mask_pool
from labelless.masks.store import read_masks
from labelless.models.clip import build_clip
from labelless.scorers import DenseCLIPScorer
from labelless.segment import Protocol, Segmenter
from labelless.vocab.encode import build_vocabulary

REPO = Path(__file__).resolve().parents[2]


def mask_average(sim: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``K×H×W`` similarities, ``M×H×W`` bool masks → label map: each mask's pixels get the
    argmax of the mask's mean similarity, pooled exactly as the PixelCLIP teacher pools its
    features (``mask_pool``); later masks win on overlaps; uncovered pixels keep their own
    argmax."""
    pred = sim.argmax(0)
    valid = masks.flatten(1).any(1)[None]  # 1×M
    pooled = mask_pool(sim[None], masks[None], valid)[0]  # M×K
    for m, p, ok in zip(masks, pooled, valid[0]):
        if ok:
            pred[m] = p.argmax()
    return pred


def mask_oracle(pred: torch.Tensor, masks: torch.Tensor, label: torch.Tensor, ignore: int, num_classes: int
                ) -> torch.Tensor:
    """Each mask given its majority ground-truth class (``labelless.masks.oracle``); pixels
    no mask labels keep ``pred``."""
    oracle = oracle_labels(masks, label, num_classes, ignore)
    return torch.where(oracle == num_classes, pred, oracle)


def score(ckpt: str, bench, store: Path, model_name: str, protocol: Protocol | None = None) -> dict:
    """The three maps' metrics of one checkpoint (``protocol``: run.sh's slide 96 / 64 / 32 by default)."""
    model = build_clip(model_name, ckpt, device="cpu")
    vocab = build_vocabulary(model, bench.classes, "a photo of {}")
    protocol = protocol or Protocol("slide", 96, input_size=64, stride=32)
    seg = Segmenter(DenseCLIPScorer(model, "pixelclip"), vocab, protocol)
    mats = {k: ConfusionMatrix(len(bench.classes), bench.ignore_index) for k in ("per_pixel", "mask_avg", "oracle")}
    for s in bench.samples:
        image = load_image(s.image)
        sim = seg.similarity([image])[0]
        label = torch.as_tensor(np.asarray(bench.load_label(s))).long()
        masks, _ = read_masks(store, s.image.stem)
        masks = torch.from_numpy(np.asarray(masks)).bool()
        if masks.shape[-2:] != image.shape[-2:]:
            masks = F.interpolate(masks[None].float(), size=image.shape[-2:], mode="nearest")[0].bool()
        pred = sim.argmax(0)
        mats["per_pixel"].update(pred, label)
        mats["mask_avg"].update(mask_average(sim, masks), label)
        mats["oracle"].update(mask_oracle(pred, masks, label, bench.ignore_index, len(bench.classes)), label)
    out = {}
    for k, m in mats.items():
        r = compute_metrics(m, bench.classes)
        out[k] = {"mIoU": r["mIoU"], "pAcc": r["pAcc"], "per_class": r["per_class"]}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--masks", required=True, help="mask store of the split's images")
    ap.add_argument("--data-root", default=str(REPO.parent / "shared" / "data" / "camvid"))
    ap.add_argument("--model", default="tiny-vit")
    ap.add_argument("--split", default="val", help="split of the CamVid folder (val; dev of a dev-split folder)")
    ap.add_argument("--short-side", type=int, default=96, help="slide protocol: image short side")
    ap.add_argument("--input-size", type=int, default=64, help="slide protocol: window side")
    ap.add_argument("--stride", type=int, default=32, help="slide protocol: window stride")
    ap.add_argument("--out", required=True)
    ap.add_argument("ckpts", nargs="+", help="NAME=CHECKPOINT")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    bench = load_benchmark("camvid", args.data_root, args.split)
    protocol = Protocol("slide", args.short_side, input_size=args.input_size, stride=args.stride)
    results = {}
    for item in args.ckpts:
        name, _, path = item.partition("=")
        results[name] = {"checkpoint": path, **score(path, bench, Path(args.masks), args.model, protocol)}
        r = results[name]
        print(f"{name:12s} per-pixel {r['per_pixel']['mIoU']:6.2f}  mask-avg {r['mask_avg']['mIoU']:6.2f}  "
              f"oracle {r['oracle']['mIoU']:6.2f}", flush=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
