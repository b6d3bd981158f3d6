"""Speed and memory of dense inference (Segmenter.predict) on the present device.

Prints images/s and peak memory for each protocol × batch size, as a table and as
one JSON line per row (machine-readable). Random weights: the speed does not
depend on them.

    python benchmarks/dense_inference.py                       # ViT-B-16, squash + slide, batch 1 and 8
    python benchmarks/dense_inference.py --model tiny-vit --images 4   # seconds, for a smoke run

Peak memory: CUDA ``max_memory_allocated`` on a GPU; on the CPU the process's peak
resident set size (``ru_maxrss``, which only grows, so read the rows in order).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import torch


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024 if sys.platform != "darwin" else rss / 2**20


def run(args) -> list[dict]:
    from labelless.models.clip import build_clip
    from labelless.scorers import DenseCLIPScorer
    from labelless.segment import Protocol, Segmenter
    from labelless.vocab.encode import build_vocabulary

    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(0)
    model = build_clip(args.model, "none", device=device)
    vocab = build_vocabulary(model, [f"class {i}" for i in range(args.classes)], "single")
    g = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, args.height, args.width), dtype=torch.uint8, generator=g)
              for _ in range(args.images)]
    rows = []
    for protocol in args.protocols:
        for bs in args.batch_sizes:
            seg = Segmenter(DenseCLIPScorer(model, args.mode), vocab, Protocol(protocol), batch_size=bs)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            seg.predict(images[:bs])  # warm-up
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            seg.predict(images)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            secs = time.perf_counter() - start
            rows.append({
                "model": args.model, "mode": args.mode, "protocol": protocol, "batch_size": bs,
                "input": f"{args.height}x{args.width}", "classes": args.classes, "images": len(images),
                "images_per_s": round(len(images) / secs, 3), "peak_memory_mb": round(peak_memory_mb(device), 1),
                "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                "threads": torch.get_num_threads(),
            })
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="ViT-B-16")
    p.add_argument("--mode", default="pixelclip")
    p.add_argument("--protocols", nargs="+", default=["squash", "slide"])
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8])
    p.add_argument("--images", type=int, default=16, help="images per measurement")
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--width", type=int, default=683)
    p.add_argument("--classes", type=int, default=150)
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    rows = run(args)
    print(f"{'protocol':8s} {'batch':>5s} {'images/s':>9s} {'peak MB':>9s}  device")
    for r in rows:
        print(f"{r['protocol']:8s} {r['batch_size']:5d} {r['images_per_s']:9.2f} {r['peak_memory_mb']:9.1f}  {r['device']}")
    for r in rows:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
