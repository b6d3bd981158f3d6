"""What limits an S-Seg model on CamVid: its masks or its classification of them?

    python experiments/sseg_camvid/diagnose.py --checkpoint RUN/model.pt --data-root DIR --split val \
        --short-side 448 --input-size 224 --stride 149 [--dino ../shared/weights/dinov2-small] --out FILE.json

Every image of the split is resized to the short side and cut into the windows of
``labelless eval --protocol slide`` (same sizes, same grid). In every window the model
predicts N masks and N mask embeddings; then
- ``labels``: the model's own labels, as ``labelless eval`` computes them (MaskFormer
  semantic inference per window, window scores averaged where windows overlap, bilinear
  upsampling, argmax): equals the eval's mIoU (a check);
- ``mask_oracle``: each pixel of a window goes to its most confident predicted mask (argmax
  over the N sigmoid masks), and every predicted mask takes the majority ground-truth class
  of its pixels in that window — how good the masks are, with a perfect classifier;
- ``mask_vote``: the same hard masks, each labelled by the model's own class for it (argmax
  of its class similarities) — the classification of the masks alone, without the soft
  mixing of the semantic inference;
- ``pseudo_oracle`` (with ``--dino``): the training pseudo-masks of each window (k-means,
  K = ``--k``, cosine, of the DINO patch tokens, as ``train/sseg/cache.py`` makes them for
  the training crops) with their majority ground-truth class — the best any classifier of
  the masks the model was taught could do at this protocol.
Where windows overlap, a pixel takes the hard-mask views of the window whose centre is
nearest. Labels are made at the working resolution and nearest-upsampled to the label's
size (a pixel whose mask holds no labelled pixel at that resolution takes the model's label). mIoU (and pAcc) of each view over the split (one confusion matrix each, CamVid's
11 classes), plus per-class IoU.
"""

from __future__ import annotations

import argparse
import json
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
from labelless.slide import slide_windows
from labelless.vocab.encode import build_vocabulary

VIEWS = ("labels", "mask_oracle", "mask_vote", "pseudo_oracle")


def kmeans_ids(tokens: torch.Tensor, k: int, size: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """``1×C×h×w`` tokens → ``H×W`` cluster ids (cosine k-means, nearest upsampling), as the cache's."""
    from labelless.masks.kmeans import kmeans

    _, c, h, w = tokens.shape
    assign, _ = kmeans(tokens.float().flatten(2).transpose(1, 2), min(k, h * w), seed=seed, cosine=True)
    return F.interpolate(assign.reshape(1, 1, h, w).float(), size=size, mode="nearest")[0, 0].long()


@torch.no_grad()
def image_views(model, vocab, image: torch.Tensor, gt: np.ndarray, k_classes: int, ignore: int, args, dino
                ) -> dict[str, np.ndarray]:
    """The four label maps of one image (module docstring), at the label's size."""
    x = resize_short_side(image[None].float() / 255, args.short_side)
    h, w = x.shape[-2:]
    gt_small = F.interpolate(torch.from_numpy(gt.astype(np.int64))[None, None].float(), size=(h, w),
                             mode="nearest")[0, 0].long().numpy()
    acc = torch.zeros(k_classes, h, w)
    count = torch.zeros(1, h, w)
    best = torch.full((h, w), float("inf"))
    hard_views = {v: np.full((h, w), k_classes, dtype=np.int64) for v in VIEWS[1:]}
    yy, xx = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    for y1, x1, y2, x2 in slide_windows(h, w, args.input_size, args.stride):
        crop = model.normalize(x[..., y1:y2, x1:x2])
        tokens = dino.tokens(crop) if dino is not None else None
        if tokens is not None and dino is model.image.backbone:  # the model's own frozen ViT: run it once
            masks_per_layer, queries = model.image(crop, tokens)
            logits, emb = masks_per_layer[-1], model.proj(queries[-1])
        else:
            logits, emb = model.mask_predictions(crop)
        size = crop.shape[-2:]
        scores = semantic_inference(logits, emb, vocab, model.logit_scale)
        acc[:, y1:y2, x1:x2] += F.interpolate(scores, size=size, mode="bilinear", align_corners=False)[0]
        count[:, y1:y2, x1:x2] += 1
        # hard views of this window, kept where its centre is the nearest
        up = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)[0]
        hard = up.argmax(0).numpy()
        n = up.shape[0]
        g = gt_small[y1:y2, x1:x2]
        masks = hard[None] == np.arange(n)[:, None, None]
        cls = vocab.similarity(emb.transpose(1, 2)[..., None])[0, :, :, 0].argmax(0).numpy()  # per mask
        views = {"mask_oracle": oracle_labels(masks, g, k_classes, ignore), "mask_vote": cls[hard]}
        if dino is not None:
            ids = kmeans_ids(tokens, args.k, tuple(size)).numpy()
            pm = ids[None] == np.unique(ids)[:, None, None]
            views["pseudo_oracle"] = oracle_labels(pm, g, k_classes, ignore)
        dist = (yy[y1:y2, x1:x2] - (y1 + y2 - 1) / 2) ** 2 + (xx[y1:y2, x1:x2] - (x1 + x2 - 1) / 2) ** 2
        take = (dist < best[y1:y2, x1:x2]).numpy()
        best[y1:y2, x1:x2] = torch.minimum(best[y1:y2, x1:x2], dist)
        for v, lab in views.items():
            region = hard_views[v][y1:y2, x1:x2]
            region[take] = lab[take]
    full = tuple(gt.shape)
    labels = F.interpolate((acc / count)[None], size=full, mode="bilinear", align_corners=False)[0].argmax(0)
    out = {"labels": labels.numpy()}
    for v, lab in hard_views.items():
        lab = F.interpolate(torch.from_numpy(lab)[None, None].float(), size=full, mode="nearest")[0, 0].long().numpy()
        out[v] = np.where(lab >= k_classes, out["labels"], lab)  # a mask with no labelled pixel: the model's label
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--split", default="val")
    ap.add_argument("--short-side", type=int, default=448)
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--stride", type=int, default=149)
    ap.add_argument("--templates", default="a photo of {}")
    ap.add_argument("--dino", default=None, help="DINO folder: also the pseudo-mask oracle (k-means of its tokens)")
    ap.add_argument("--k", type=int, default=8, help="k-means clusters of the pseudo-masks")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    bench = load_benchmark("camvid", args.data_root, args.split)
    model = load_sseg(args.checkpoint)
    dino = None
    if args.dino:
        from labelless.models.backbones import HFViTBackbone

        image = model.cfg.image
        own = image.backbone.startswith("hf:") and image.freeze_backbone and \
            Path(image.backbone[len("hf:"):]).resolve() == Path(args.dino).resolve()
        dino = model.image.backbone if own else HFViTBackbone(args.dino).eval()
    vocab = build_vocabulary(model, bench.classes, args.templates)
    k = len(bench.classes)
    views = VIEWS if dino is not None else VIEWS[:3]
    conf = {name: ConfusionMatrix(k, bench.ignore_index) for name in views}
    for sample in bench.samples:
        gt = bench.load_label(sample)
        maps = image_views(model, vocab, load_image(sample.image), gt, k, bench.ignore_index, args, dino)
        for name in views:
            conf[name].update(torch.from_numpy(maps[name]), gt)
    metrics = {name: compute_metrics(c.matrix, bench.classes) for name, c in conf.items()}
    out = {name: m["mIoU"] for name, m in metrics.items()}
    out.update(pAcc={name: m["pAcc"] for name, m in metrics.items()},
               per_class={name: m["per_class"] for name, m in metrics.items()},
               checkpoint=args.checkpoint, split=args.split, images=len(bench.samples),
               protocol={"name": "slide", "short_side": args.short_side, "input_size": args.input_size,
                         "stride": args.stride, "templates": args.templates},
               pseudo_masks={"dino": args.dino, "k": args.k} if dino is not None else None)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({name: round(out[name], 2) for name in views}))


if __name__ == "__main__":
    main()
