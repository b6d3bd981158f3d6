"""How to sum slide windows' scores, and what the sum's layout costs the labels: timed.

For one batch of windows of a 448×597 image (224 windows at stride 149, as ``--protocol
slide``), the upsampled window scores in either layout and the sum built from them:

- ``slices_class_major``: ``B×K×c×c`` contiguous scores into a ``K×h×w`` sum, one slice add
  per window (what segment.py does);
- ``slices_pixel_major``: ``B×c×c×K`` scores (the einsum's channels-last layout, kept by
  resizing) into an ``h×w×K`` sum, one slice add per window (the previous code);
- ``index_add``: one ``index_add_`` over a flat pixel index of all windows into ``(h·w)×K``
  (no Python loop);
- ``scatter_add``: one ``scatter_add_`` over the same index.

Then the labels of the whole image from each layout's ``K×h×w`` mean (``upsample_labels`` to
720×960): the pixel-major sum is a channels-last view and takes PyTorch's channels-last
bilinear kernel. Times are CPU seconds of this process (``time.process_time``).

    python benchmarks/slide_accumulate.py --classes 150 11
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from labelless.labelmaps import upsample_labels
from labelless.segment import slide_windows


def methods(h, w, wins, k):
    """name -> (fresh sum, function adding ``src`` (n×K×c×c contiguous) into it, sum → K×h×w view)."""
    ys = torch.tensor([y for y, _, _, _ in wins])
    xs = torch.tensor([x for _, x, _, _ in wins])
    c = wins[0][2] - wins[0][0]
    pix = ((ys[:, None] + torch.arange(c))[:, :, None] * w + (xs[:, None] + torch.arange(c))[:, None, :]).flatten()

    def slices_cm(acc, src):
        for (y1, x1, y2, x2), s in zip(wins, src):
            acc[:, y1:y2, x1:x2] += s

    def slices_pm(acc, src):
        for (y1, x1, y2, x2), s in zip(wins, src):
            acc[y1:y2, x1:x2] += s

    def flat(acc):
        return acc.view(h, w, k).permute(2, 0, 1)

    return {
        "slices_class_major": (lambda: torch.zeros(k, h, w), slices_cm, False, lambda a: a),
        "slices_pixel_major": (lambda: torch.zeros(h, w, k), slices_pm, True, lambda a: a.permute(2, 0, 1)),
        "index_add": (lambda: torch.zeros(h * w, k),
                      lambda acc, src: acc.index_add_(0, pix, src.reshape(-1, k)), True, flat),
        "scatter_add": (lambda: torch.zeros(h * w, k),
                        lambda acc, src: acc.scatter_add_(0, pix[:, None].expand(-1, k), src.reshape(-1, k)), True,
                        flat),
    }


def _cpu_ms(fn, repeat: int) -> float:
    fn()  # warm-up
    t = time.process_time()
    for _ in range(repeat):
        fn()
    return (time.process_time() - t) / repeat * 1000


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
        src = torch.rand(len(wins), k, crop, crop, generator=torch.Generator().manual_seed(0))
        src_pm = src.permute(0, 2, 3, 1).contiguous()
        for name, (fresh, add, pixel_major, as_kchw) in methods(h, w, wins, k).items():
            acc = fresh()
            ms = _cpu_ms(lambda: add(acc, src_pm if pixel_major else src), args.repeat)
            total = as_kchw(acc)
            labels_ms = _cpu_ms(lambda: upsample_labels(total, (720, 960)), max(1, args.repeat // 2))
            rows.append({"classes": k, "windows": len(wins), "method": name, "ms": round(ms, 1),
                         "labels_ms": round(labels_ms, 1), "threads": torch.get_num_threads()})
    print(f"{'classes':>7s} {'method':20s} {'ms/batch':>9s} {'labels ms':>10s}")
    for r in rows:
        print(f"{r['classes']:7d} {r['method']:20s} {r['ms']:9.1f} {r['labels_ms']:10.1f}")
    for r in rows:
        print(json.dumps(r))
    return rows


if __name__ == "__main__":
    main()
