"""labelless inference against a reference loop of the official predictors, side by side.

The reference is written here from ../shared/METHODS.md (what the official PixelCLIP
predictor and the SCLIP mmseg harness do), not taken from labelless: batch 1, float32,
the dense last block written out, per image the full-size ``K×H×W`` score map upsampled
and ``argmax``-ed, a numpy confusion matrix (``np.bincount``). labelless is ``Segmenter``
with its defaults (or the flags given) and its ``ConfusionMatrix``, fed as ``labelless
eval`` feeds it (``load_image``, batches of ``--batch-size`` images). Both run the same
open_clip ``ViT-B-16`` (``pretrained=None``, seeded) and the same text embeddings, on the
same images, each in its own process (so that peak memory is its own).

Protocols: ``squash`` (PixelCLIP: short side 640, squash to 320, features 20→64, mode
pixelclip) and ``slide`` (SCLIP harness: short side 448, 224 windows at stride 112, mode
sclip). Stages (ms per image): decode (image + label file), backbone (the image forward),
labels (everything from features to the label map: cosine, upsampling, window
accumulation, argmax), metric (confusion matrix). Both resize with
``F.interpolate(antialias=True)`` so that equal labels test the pipelines, not two resizers.

    python benchmarks/inference_vs_reference.py --images 16                     # ADE-150 words, CamVid val
    python benchmarks/inference_vs_reference.py --model tiny-vit --images 2 --protocols squash   # seconds

Peak memory: CUDA ``max_memory_allocated``, on the CPU the process's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

SETTINGS = {  # protocol -> (mode, short side, input / window size, stride, feature size)
    "squash": ("pixelclip", 640, 320, None, 64),
    "slide": ("sclip", 448, 224, 112, None),
}


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Clock:
    """Per-stage wall time (ms), synchronising CUDA around each stage."""

    def __init__(self, device):
        self.device, self.ms = device, {}

    def __call__(self, stage, fn, *args):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t = time.perf_counter()
        out = fn(*args)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.ms[stage] = self.ms.get(stage, 0.0) + (time.perf_counter() - t) * 1000
        return out


# ------------------------------------------------------------------ the reference


def ref_positions(pos: torch.Tensor, grid) -> torch.Tensor:
    """``(1+s·s)×C`` positional embedding → ``(1+h·w)×C``, bicubic on the patch grid."""
    side = int(round((pos.shape[0] - 1) ** 0.5))
    patches = pos[1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, size=grid, mode="bicubic", align_corners=False)
    return torch.cat([pos[:1], patches.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1)])


def ref_dense(visual, x: torch.Tensor, mode: str) -> torch.Tensor:
    """METHODS.md's dense ViT, written out: ``1×3×H×W`` → ``1×D×h×w``. pixelclip: the last
    block's value path + out_proj, the CLS input as residual, then the MLP; sclip:
    (softmax(q qᵀ/√d) + softmax(k kᵀ/√d)) v, own residual, MLP."""
    t = visual.conv1(x)
    grid = tuple(t.shape[-2:])
    t = t.flatten(2).transpose(1, 2)
    t = torch.cat([visual.class_embedding.expand(t.shape[0], 1, -1), t], 1) + ref_positions(
        visual.positional_embedding, grid)
    t = visual.ln_pre(t)
    blocks = visual.transformer.resblocks
    for blk in blocks[:-1]:
        t = blk(t)
    blk = blocks[-1]
    y = blk.ln_1(t)
    b, n, w = y.shape
    heads = blk.attn.num_heads
    q, k, v = F.linear(y, blk.attn.in_proj_weight, blk.attn.in_proj_bias).reshape(
        b, n, 3, heads, w // heads).permute(2, 0, 3, 1, 4)
    if mode == "pixelclip":
        o = v
    else:
        s = q.shape[-1] ** -0.5
        o = (torch.softmax(q @ q.transpose(-1, -2) * s, -1) + torch.softmax(k @ k.transpose(-1, -2) * s, -1)) @ v
    o = F.linear(o.transpose(1, 2).reshape(b, n, w), blk.attn.out_proj.weight, blk.attn.out_proj.bias)
    t = (t[:, :1] if mode == "pixelclip" else t) + o
    t = t + blk.mlp(blk.ln_2(t))
    t = visual.ln_post(t) @ visual.proj
    return t[:, 1:].transpose(1, 2).reshape(b, -1, *grid)


def ref_resize_short(x, short, max_long=2560):
    h, w = x.shape[-2:]
    scale = min(short / min(h, w), max_long / max(h, w))
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    return x if size == (h, w) else F.interpolate(x, size=size, mode="bilinear", align_corners=False,
                                                 antialias=True)


def ref_cosine(feats, text):
    """``1×D×h×w`` features, ``K×D`` unit text rows → ``1×K×h×w`` cosines."""
    return torch.einsum("bdhw,kd->bkhw", F.normalize(feats, dim=1), text)


def ref_squash(ctx, x, clock):
    """The PixelCLIP predictor on one ``1×3×H×W`` [0, 1] image: full-size scores ``1×K×H×W``."""
    _, short, size, _, feat = SETTINGS["squash"]
    inp = (F.interpolate(ref_resize_short(x, short), size=(size, size), mode="bilinear", align_corners=False)
           - ctx["mean"]) / ctx["std"]
    feats = clock("backbone", ref_dense, ctx["visual"], inp, "pixelclip")
    feats = F.interpolate(feats, size=(feat, feat), mode="bilinear", align_corners=False)
    return F.interpolate(ref_cosine(feats, ctx["text"]), size=x.shape[-2:], mode="bilinear", align_corners=False)


def ref_slide(ctx, x, clock):
    """mmseg's slide_inference (SCLIP harness) on one image, window after window: ``1×K×H×W``."""
    _, short, crop, stride, _ = SETTINGS["slide"]
    img = (ref_resize_short(x, short) - ctx["mean"]) / ctx["std"]
    h, w = img.shape[-2:]
    ch, cw = min(crop, h), min(crop, w)
    preds = torch.zeros(1, ctx["text"].shape[0], h, w, device=x.device)
    count = torch.zeros(1, 1, h, w, device=x.device)
    for iy in range(max(h - ch + stride - 1, 0) // stride + 1):
        for ix in range(max(w - cw + stride - 1, 0) // stride + 1):
            y1, x1 = min(iy * stride, h - ch), min(ix * stride, w - cw)
            win = img[..., y1:y1 + ch, x1:x1 + cw]
            feats = clock("backbone", ref_dense, ctx["visual"], win, "sclip")
            logits = F.interpolate(ref_cosine(feats, ctx["text"]), size=(ch, cw), mode="bilinear",
                                   align_corners=False)
            preds[..., y1:y1 + ch, x1:x1 + cw] += logits
            count[..., y1:y1 + ch, x1:x1 + cw] += 1
    return F.interpolate(preds / count, size=x.shape[-2:], mode="bilinear", align_corners=False)


def run_reference(cfg, samples, load_label, device) -> tuple[dict, list]:
    """The reference over ``samples``: (stage ms, label maps)."""
    from PIL import Image

    visual = build_model(cfg, device).clip.visual  # the open_clip tower; its forward is written out above
    data = torch.load(cfg["text"], map_location=device)
    ctx = {"visual": visual, "text": data["embeddings"], "mean": data["mean"], "std": data["std"]}
    step = ref_squash if cfg["protocol"] == "squash" else ref_slide
    k = ctx["text"].shape[0]

    def decode(image_path, sample):
        img = np.array(Image.open(image_path).convert("RGB"))
        return torch.from_numpy(img).permute(2, 0, 1)[None].float().to(device) / 255, np.asarray(
            load_label(sample)).astype(np.int64)

    def one(clock, image_path, label_path, conf):
        x, gt = clock("decode", decode, image_path, label_path)
        with torch.no_grad():
            pred = clock("labels", lambda: step(ctx, x, clock).argmax(1)[0].cpu().numpy())
        clock("metric", _np_confusion, conf, pred, gt, k)
        return pred

    one(Clock(device), *samples[0], np.zeros((k, k), np.int64))  # warm-up
    clock, conf = Clock(device), np.zeros((k, k), np.int64)
    preds = [one(clock, im, lab, conf) for im, lab in samples]
    clock.ms["labels"] -= clock.ms.get("backbone", 0.0)  # the backbone runs inside the labels stage
    return clock.ms, preds


def _np_confusion(conf, pred, gt, k, ignore=255):
    valid = gt != ignore
    conf += np.bincount(k * gt[valid] + pred[valid], minlength=k * k).reshape(k, k)


# ------------------------------------------------------------------ labelless


def build_model(cfg, device):
    """The seeded random open_clip model (``open_clip.create_model(name, pretrained=None)``
    under ``torch.manual_seed(seed)``), as a labelless ``DenseCLIP``: the same weights in
    every process."""
    from labelless.models.clip import build_clip

    torch.manual_seed(cfg["seed"])
    return build_clip(cfg["model"], "none").to(device)


def run_labelless(cfg, samples, load_label, device) -> tuple[dict, list]:
    """labelless over ``samples`` as ``labelless eval`` runs it: (stage ms, label maps)."""
    from labelless.evaluate import ConfusionMatrix
    from labelless.io import load_image
    from labelless.scorers import DenseCLIPScorer
    from labelless.segment import Protocol, Segmenter
    from labelless.vocab.encode import Vocabulary

    mode, short, size, stride, feat = SETTINGS[cfg["protocol"]]
    scorer = DenseCLIPScorer(build_model(cfg, device), mode, cfg["precision"], cfg["compile"])
    data = torch.load(cfg["text"], map_location=device)
    k = data["embeddings"].shape[0]
    vocab = Vocabulary([str(i) for i in range(k)], data["embeddings"], torch.arange(k, device=device))
    seg = Segmenter(scorer, vocab, Protocol(cfg["protocol"], short, input_size=size, stride=stride,
                                            feature_size=feat), batch_size=cfg["batch_size"])
    forward = scorer._forward

    def decode(batch):
        return [load_image(im) for im, _ in batch], [load_label(s) for _, s in batch]

    def run(clock, batch, conf):
        scorer._forward = lambda x: clock("backbone", forward, x)
        images, labels = clock("decode", decode, batch)
        preds = clock("labels", seg.predict, images)
        for pred, gt in zip(preds, labels):
            clock("metric", conf.update, pred, gt)
        return [p.numpy() for p in preds]

    run(Clock(device), samples[:cfg["batch_size"]], ConfusionMatrix(k))  # warm-up (compiles with --compile)
    clock, conf = Clock(device), ConfusionMatrix(k)
    preds = []
    for i in range(0, len(samples), cfg["batch_size"]):
        preds += run(clock, samples[i:i + cfg["batch_size"]], conf)
    clock.ms["labels"] -= clock.ms.get("backbone", 0.0)
    return clock.ms, preds


# ------------------------------------------------------------------ driver


def child(cfg) -> int:
    """One side × protocol in this process: writes its stage times, memory and labels."""
    device = torch.device(cfg["device"])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    samples, load_label = camvid_samples(cfg["data_root"], cfg["images"])
    fn = run_reference if cfg["side"] == "reference" else run_labelless
    t = time.perf_counter()
    ms, preds = fn(cfg, [(s.image, s) for s in samples], load_label, device)
    wall = time.perf_counter() - t
    np.savez_compressed(cfg["out"] + ".npz", *preds)
    with open(cfg["out"] + ".json", "w") as f:
        json.dump({"ms": ms, "peak_memory_mb": peak_memory_mb(device), "wall_s": wall}, f)
    return 0


def camvid_samples(root: str, n: int):
    """The first ``n`` samples of CamVid val and the dataset's label reader (void → 255)."""
    from labelless.data.benchmarks import load_benchmark

    bench = load_benchmark("camvid", root, "val")
    return bench.samples[:n], bench.load_label


def text_file(cfg) -> int:
    """Write ``cfg["text"]``: the text embeddings of the ``classes`` list (one template) and the
    model's mean/std. Run in a child process: Linux keeps a parent's peak RSS across exec."""
    from labelless.vocab.classnames import load_classnames
    from labelless.vocab.encode import build_vocabulary

    model = build_model(cfg, torch.device("cpu"))
    vocab = build_vocabulary(model, load_classnames(cfg["classes"]), "single")
    torch.save({"embeddings": vocab.class_embeddings(), "mean": model.mean, "std": model.std}, cfg["text"])
    return 0


def run_side(base: dict, side: str, protocol: str, tmp: str, in_process: bool = False) -> dict:
    """Run one side × protocol in a fresh process (or in this one: peak memory then is the
    process's so far); its result and label maps."""
    cfg = dict(base, side=side, protocol=protocol, out=f"{tmp}/{side}-{protocol}")
    path = f"{cfg['out']}.cfg.json"
    Path(path).write_text(json.dumps(cfg))
    if in_process:
        child(cfg)
    else:
        subprocess.run([sys.executable, __file__, "--child", path], check=True)
    res = json.loads(Path(cfg["out"] + ".json").read_text())
    with np.load(cfg["out"] + ".npz") as z:
        res["preds"] = [z[f"arr_{i}"] for i in range(len(z.files))]
    return res


def rows_for(protocol: str, ref: dict, ours: dict, n: int, base: dict) -> list[dict]:
    """Table rows (one per side) of a protocol: images/s, ms/img per stage, memory, ratio, equal labels."""
    equal = sum(int((a == b).sum()) for a, b in zip(ref["preds"], ours["preds"]))
    total = sum(a.size for a in ref["preds"])
    out = []
    for side, res in (("reference", ref), ("labelless", ours)):
        ms = {k: round(v / n, 1) for k, v in res["ms"].items()}
        out.append({"protocol": protocol, "side": side, "images": n, "classes": base["classes"],
                    "device": base["device"], "model": base["model"],
                    "batch_size": 1 if side == "reference" else base["batch_size"],
                    "precision": "fp32" if side == "reference" else base["precision"],
                    "images_per_s": round(n * 1000 / sum(res["ms"].values()), 3),
                    "ms_per_image": ms, "peak_memory_mb": round(res["peak_memory_mb"], 1),
                    "threads": torch.get_num_threads()})
    ratio = out[1]["images_per_s"] / out[0]["images_per_s"]
    for r in out:
        r.update(speedup_vs_reference=round(ratio, 3), equal_labels=round(equal / total, 6))
    return out


def print_table(rows: list[dict]) -> None:
    print(f"{'protocol':8s} {'side':10s} {'batch':>5s} {'img/s':>7s} {'decode':>7s} {'backbone':>8s} "
          f"{'labels':>7s} {'metric':>7s} {'peak MB':>8s} {'ratio':>6s} {'equal':>8s}")
    for r in rows:
        ms = r["ms_per_image"]
        print(f"{r['protocol']:8s} {r['side']:10s} {r['batch_size']:5d} {r['images_per_s']:7.2f} "
              f"{ms.get('decode', 0):7.1f} {ms.get('backbone', 0):8.1f} {ms.get('labels', 0):7.1f} "
              f"{ms.get('metric', 0):7.1f} {r['peak_memory_mb']:8.0f} {r['speedup_vs_reference']:6.2f} "
              f"{r['equal_labels']:8.4f}")
    print("ms per image per stage; ratio = labelless images/s ÷ reference images/s; equal = fraction of equal labels")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--model", default="ViT-B-16")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--classes", default="ade150", help="class-name list (its count is K)")
    p.add_argument("--data-root", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid"))
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--protocols", nargs="+", default=["squash", "slide"], choices=list(SETTINGS))
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=None, help="labelless batch (default: the CLI default)")
    p.add_argument("--precision", default="auto")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--in-process", action="store_true", help="no subprocess per side (tests; memory not per side)")
    args = p.parse_args(argv)
    if args.child:
        cfg = json.loads(Path(args.child).read_text())
        return text_file(cfg) if cfg.get("side") == "text" else child(cfg)
    from labelless.segment import default_batch_size

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        base = {"model": args.model, "seed": args.seed, "classes": args.classes, "device": device,
                "data_root": args.data_root, "images": args.images, "text": f"{tmp}/text.pt",
                "batch_size": args.batch_size, "precision": args.precision, "compile": args.compile}
        Path(f"{tmp}/text.json").write_text(json.dumps(dict(base, side="text")))  # the model stays out of
        subprocess.run([sys.executable, __file__, "--child", f"{tmp}/text.json"], check=True)  # this process
        rows = []
        for protocol in args.protocols:  # labelless at the CLI's default batch for this device and protocol
            cell = dict(base, batch_size=args.batch_size or default_batch_size(device, protocol))
            ref = run_side(cell, "reference", protocol, tmp, args.in_process)
            ours = run_side(cell, "labelless", protocol, tmp, args.in_process)
            rows += rows_for(protocol, ref, ours, len(ref["preds"]), cell)
    print_table(rows)
    for r in rows:
        print(json.dumps(r))
    return rows


if __name__ == "__main__":
    main()
