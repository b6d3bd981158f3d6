"""How to add slide windows' scores into an image's sum: four ways, same numbers, timed.

The upsampled window scores come pixel-major (``B×ch×cw×K`` in memory: the cosine einsum
returns channels-last maps and bilinear resizing keeps that layout). Sums compared, for one
batch of windows of a 448×597 image (224 windows at stride 149, as ``--protocol slide``):

- ``slices_pixel_major``: a ``h×w×K`` sum, one slice add per window (what segment.py does);
- ``slices_class_major``: a ``K×h×w`` sum, one slice add per window (the previous code);
- ``index_add``: one ``index_add_`` over a flat pixel index of all windows (no Python loop);
- ``scatter_add``: one ``scatter_add_`` over the same index.

    python benchmarks/slide_accumulate.py --classes 150 11
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from labelless.segment import slide_windows


def methods(h, w, wins, k):
    """name -> (fresh sum, function adding ``src`` n×c×c×K into it)."""
    ys = torch.tensor([y for y, _, _, _ in wins])
    xs = torch.tensor([x for _, x, _, _ in wins])
    c = wins[0][2] - wins[0][0]
    pix = ((ys[:, None] + torch.arange(c))[:, :, None] * w + (xs[:, None] + torch.arange(c))[:, None, :]).flatten()

    def slices_pm(acc, src):
        for (y1, x1, y2, x2), s in zip(wins, src):
            acc[y1:y2, x1:x2] += s

    def slices_cm(acc, src):
        for (y1, x1, y2, x2), s in zip(wins, src.permute(0, 3, 1, 2)):
            acc[:, y1:y2, x1:x2] += s

    return {
        "slices_pixel_major": (lambda: torch.zeros(h, w, k), slices_pm),
        "slices_class_major": (lambda: torch.zeros(k, h, w), slices_cm),
        "index_add": (lambda: torch.zeros(h * w, k), lambda acc, src: acc.index_add_(0, pix, src.reshape(-1, k))),
        "scatter_add": (lambda: torch.zeros(h * w, k),
                        lambda acc, src: acc.scatter_add_(0, pix[:, None].expand(-1, k), src.reshape(-1, k))),
    }


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--classes", nargs="+", type=int, default=[150, 11])
    p.add_argument("--batch", type=int, default=8, help="windows per batch")
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args(argv)
    h, w, crop = 448, 597, 224
    wins = slide_windows(h, w, crop, crop * 2 // 3)[:args.batch]
    rows = []
    for k in args.classes:
        src = torch.rand(len(wins), crop, crop, k, generator=torch.Generator().manual_seed(0))
        for name, (fresh, add) in methods(h, w, wins, k).items():
            acc = fresh()
            add(acc, src)  # warm-up
            t = time.perf_counter()
            for _ in range(args.repeat):
                add(acc, src)
            ms = (time.perf_counter() - t) / args.repeat * 1000
            rows.append({"classes": k, "windows": len(wins), "method": name, "ms": round(ms, 1),
                         "threads": torch.get_num_threads()})
    print(f"{'classes':>7s} {'method':20s} {'ms/batch':>9s}")
    for r in rows:
        print(f"{r['classes']:7d} {r['method']:20s} {r['ms']:9.1f}")
    for r in rows:
        print(json.dumps(r))
    return rows


if __name__ == "__main__":
    main()
