"""What limits an S-Seg model on CamVid: its masks or its classification of them?

    python experiments/sseg_camvid/diagnose.py --checkpoint RUN/model.pt --data-root DIR --split val --out FILE.json

For every image of the split, at the eval protocol's working resolution (short side 224,
224-px windows at stride 149, as ``run.sh`` evaluates; the whole image here, its short side
resized to 224 and rounded to the model stride):
- ``labels``: the model's own labels (MaskFormer semantic inference, as ``labelless eval``);
- ``mask_oracle``: each pixel goes to its most confident predicted mask (argmax over the N
  sigmoid masks), and every predicted mask takes the majority ground-truth class of its
  pixels — how good the masks are, with a perfect classifier;
- ``mask_vote``: the same hard masks, each labelled by the model's own class for it
  (argmax of its class probabilities) — the classification of the masks alone.
mIoU of all three over the split (one confusion matrix each, CamVid's 11 classes).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from labelless.data.benchmarks import load_benchmark
from labelless.evaluate import ConfusionMatrix, compute_metrics
from labelless.io import load_image
from labelless.masks.oracle import oracle_labels
from labelless.models.sseg import load_sseg
from labelless.scorers import semantic_inference
from labelless.segment import resize_short_side
from labelless.vocab.encode import build_vocabulary


@torch.no_grad()
def image_views(model, vocab, image: torch.Tensor, short: int = 224) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(model labels, hard mask ids, per-mask class) at the image's own size."""
    x = resize_short_side(image[None].float() / 255, short)
    s = model.stride
    h, w = (max(s, math.ceil(d / s) * s) for d in x.shape[-2:])
    x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
    logits, emb = model.mask_predictions(model.normalize(x))
    size = tuple(image.shape[-2:])
    scores = semantic_inference(logits, emb, vocab, model.logit_scale)
    labels = F.interpolate(scores, size=size, mode="bilinear", align_corners=False)[0].argmax(0)
    hard = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)[0].argmax(0)
    cos = vocab.similarity(emb.transpose(1, 2)[..., None])[0, :, :, 0]  # K×N
    return labels.numpy(), hard.numpy(), cos.argmax(0).numpy()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--split", default="val")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    bench = load_benchmark("camvid", args.data_root, args.split)
    model = load_sseg(args.checkpoint)
    vocab = build_vocabulary(model, bench.classes, "a photo of {}")
    k = len(bench.classes)
    conf = {name: ConfusionMatrix(k, bench.ignore_index) for name in ("labels", "mask_oracle", "mask_vote")}
    for sample in bench.samples:
        gt = bench.load_label(sample)
        labels, hard, cls = image_views(model, vocab, load_image(sample.image))
        masks = hard[None] == np.arange(model.cfg.image.num_queries)[:, None, None]
        conf["labels"].update(torch.from_numpy(labels), gt)
        conf["mask_oracle"].update(torch.from_numpy(oracle_labels(masks, gt, k, bench.ignore_index)), gt)
        conf["mask_vote"].update(torch.from_numpy(cls[hard]), gt)
    out = {name: compute_metrics(c.matrix, bench.classes)["mIoU"] for name, c in conf.items()}
    out.update(checkpoint=args.checkpoint, split=args.split, images=len(bench.samples))
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
