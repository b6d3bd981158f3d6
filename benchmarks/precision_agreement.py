"""Does reduced precision keep the labels? bf16 / fp16 autocast against float32 on real images.

On the first ``--images`` CamVid val images:

- DINOv2-S (``--dino``, real weights): last-layer patch tokens at short side 448 in each
  precision. Reported: mean cosine of each patch's features to its fp32 features; k-means
  labels (K = 8, cosine, centres from the fp32 features of the image) of both, their
  agreement; and the mIoU of those cluster labels when each fp32 cluster is named by its
  majority ground-truth class (the same naming applied to the other precision's labels).
- each trained CLIP (``--clip``, labelless checkpoints such as the CamVid-trained tiny
  CLIPs of experiments/pixelclip_camvid): ``labelless eval``'s labels with ``--mode
  pixelclip`` and that experiment's protocol (slide, short side 96, 64 windows at stride
  32, "a photo of {}"), computed once per precision: fraction of equal pixels and mIoU.

    python benchmarks/precision_agreement.py --images 40 \\
        --clip ../main/experiments/pixelclip_camvid/runs/seed0/clip/clip.pt \\
               ../main/experiments/pixelclip_camvid/runs/seed0/pixelclip/clip.pt

Prints a table and one JSON line per row. CPU bf16 runs natively only where the CPU has
AVX512-BF16 / AMX (the script says whether); CUDA is measured with ``--device cuda``.
"""

from __future__ import annotations

import argparse
import json
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parents[1]
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str):
    return nullcontext() if precision == "fp32" else torch.autocast(device.type, dtype=DTYPES[precision])


def miou(pred_label_pairs, num_classes: int) -> float:
    from labelless.evaluate import ConfusionMatrix, compute_metrics

    conf = ConfusionMatrix(num_classes)
    for pred, label in pred_label_pairs:
        conf.update(pred, label)
    return compute_metrics(conf.matrix, [str(i) for i in range(num_classes)])["mIoU"]


def dino_rows(args, samples, load_label, device) -> list[dict]:
    """DINOv2-S features and k-means labels of each precision against fp32 (module doc)."""
    from labelless.io import load_image
    from labelless.masks.dino import load_dino
    from labelless.masks.kmeans import kmeans

    backbone = load_dino(args.dino, device)
    per = {p: {"cos": [], "agree": [], "pairs": []} for p in args.precisions}
    ref_pairs = []
    for s in samples:
        img, label = load_image(s.image), torch.from_numpy(load_label(s).astype("int64"))
        feats = {}
        for p in ["fp32"] + args.precisions:
            with autocast(device, p):
                feats[p] = F.normalize(backbone.patch_features(img[None], size=448)[0].float(), dim=-1)  # h×w×C
        h, w, c = feats["fp32"].shape
        x = feats["fp32"].reshape(-1, c)
        centres = F.normalize(kmeans(x, 8, seed=0, cosine=True)[1], dim=-1)
        ref = (x @ centres.T).max(-1).indices
        def up(lab):
            return F.interpolate(lab.reshape(1, 1, h, w).float(), size=label.shape, mode="nearest")[0, 0].long()

        ref_up = up(ref)
        naming = _majority(ref_up, label, 8)
        ref_pairs.append((naming[ref_up], label))
        for p in args.precisions:
            y = feats[p].reshape(-1, c)
            lab = (y @ centres.T).max(-1).indices
            per[p]["cos"].append(float((x * y).sum(-1).mean()))
            per[p]["agree"].append(float((lab == ref).float().mean()))
            per[p]["pairs"].append((naming[up(lab)], label))
    base = miou(ref_pairs, 11)
    return [{"model": "DINOv2-S (real weights)", "what": "k-means labels (K=8), named by majority GT", "precision": p,
             "feature_cosine": round(sum(v["cos"]) / len(v["cos"]), 5),
             "label_agreement": round(sum(v["agree"]) / len(v["agree"]), 5), "mIoU_fp32": round(base, 2),
             "mIoU": round(miou(v["pairs"], 11), 2)} for p, v in per.items()]


def _majority(cluster: torch.Tensor, label: torch.Tensor, k: int, ignore: int = 255) -> torch.Tensor:
    """Each of ``k`` cluster ids → its most frequent non-ignored ground-truth class (0 if none)."""
    keep = label != ignore
    counts = torch.zeros(k, 256, dtype=torch.long)
    counts.index_put_((cluster[keep], label[keep]), torch.ones(int(keep.sum()), dtype=torch.long), accumulate=True)
    return counts[:, :255].argmax(1)


def clip_rows(args, samples, load_label, device) -> list[dict]:
    """A trained CLIP's eval labels in each precision against fp32 (module doc)."""
    from labelless.io import load_image
    from labelless.loader import load_scorer
    from labelless.segment import Protocol, Segmenter
    from labelless.vocab.classnames import load_classnames

    images = [load_image(s.image) for s in samples]
    labels = [torch.from_numpy(load_label(s).astype("int64")) for s in samples]
    rows = []
    for path in args.clip:
        scorer = load_scorer(None, path, "pixelclip", device)
        vocab = scorer.vocabulary(load_classnames("camvid"), "a photo of {}")
        seg = Segmenter(scorer, vocab, Protocol("slide", 96, input_size=64, stride=32), batch_size=8)
        preds = {}
        for p in ["fp32"] + args.precisions:
            scorer.configure(p)
            preds[p] = seg.predict(images)
        base = miou(zip(preds["fp32"], labels), 11)
        total = sum(x.numel() for x in preds["fp32"])
        for p in args.precisions:
            equal = sum(int((a == b).sum()) for a, b in zip(preds[p], preds["fp32"]))
            rows.append({"model": str(path), "what": "labelless eval labels, --mode pixelclip, slide 96/64/32",
                         "precision": p, "feature_cosine": None, "label_agreement": round(equal / total, 5),
                         "mIoU_fp32": round(base, 2), "mIoU": round(miou(zip(preds[p], labels), 11), 2)})
    return rows


def main(argv=None) -> int:
    from labelless.data.benchmarks import load_benchmark
    from labelless.scorers import cpu_has_bf16

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default=str(HERE.parent / "shared" / "data" / "camvid"))
    p.add_argument("--images", type=int, default=40)
    p.add_argument("--dino", default=str(HERE.parent / "shared" / "weights" / "dinov2-small"),
                   help="DINO / DINOv2 folder or hub name ('' to skip)")
    p.add_argument("--clip", nargs="*", default=[], help="trained CLIP checkpoints (labelless, OpenAI, ...)")
    p.add_argument("--precisions", nargs="+", default=["bf16", "fp16"], choices=list(DTYPES))
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    bench = load_benchmark("camvid", args.data_root, "val")
    samples = bench.samples[:args.images]
    rows = (dino_rows(args, samples, bench.load_label, device) if args.dino else []) + \
        clip_rows(args, samples, bench.load_label, device)
    native = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, native bf16: {cpu_has_bf16()}"
    print(f"{len(samples)} CamVid val images, {native}")
    print(f"{'model':60s} {'prec':5s} {'cos':>8s} {'agree':>8s} {'mIoU32':>7s} {'mIoU':>7s} {'diff':>6s}")
    for r in rows:
        cos = f"{r['feature_cosine']:.5f}" if r["feature_cosine"] is not None else "-"
        print(f"{r['model'][-60:]:60s} {r['precision']:5s} {cos:>8s} {r['label_agreement']:8.5f} "
              f"{r['mIoU_fp32']:7.2f} {r['mIoU']:7.2f} {r['mIoU'] - r['mIoU_fp32']:+6.2f}")
    for r in rows:
        print(json.dumps(dict(r, images=len(samples), device=native)))
    return rows


if __name__ == "__main__":
    main()
