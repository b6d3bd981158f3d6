"""How to turn slide windows' scores into the image's mean scores: timed, and how far apart.

For one 448×597 image (224 windows at stride 112: the SCLIP harness on a CamVid image, 15
windows) and random low-resolution window scores ``15×K×14×14``:

- ``per_window``: mmseg's slide_inference as the earlier code ran it: each batch of windows
  resized to the window (``F.interpolate``, contiguous class-major), one slice add per window
  into a ``K×448×597`` sum, divided by the covering count;
- ``grid_matmul``: ``labelless.slide.window_mean`` (what segment.py does): the same mean as two
  matrix products over the window grid.

Prints CPU ms per image (``time.process_time`` of this process: with N threads, N× the wall
time at best) and the largest absolute difference between the two results; JSON rows after.

    python benchmarks/slide_accumulate.py --classes 150 11
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from labelless.slide import slide_grid, window_mean


def per_window(scores, ys, xs, size, window, batch):
    """The loop: resize a batch of windows at a time, add each window, divide by the count."""
    k = scores.shape[1]
    acc = torch.zeros(k, *size)
    wins = [(y, x) for y in ys for x in xs]
    for i in range(0, len(wins), batch):
        up = F.interpolate(scores[i:i + batch], size=window, mode="bilinear", align_corners=False)
        for (y, x), s in zip(wins[i:i + batch], up):
            acc[:, y:y + window[0], x:x + window[1]] += s
    rows, cols = torch.zeros(size[0]), torch.zeros(size[1])
    for y in ys:
        rows[y:y + window[0]] += 1
    for x in xs:
        cols[x:x + window[1]] += 1
    return acc.div_(rows[:, None] * cols[None, :])


def _cpu_ms(fn, repeat: int) -> float:
    fn()  # warm-up
    t = time.process_time()
    for _ in range(repeat):
        fn()
    return (time.process_time() - t) / repeat * 1000


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--classes", nargs="+", type=int, default=[150, 11])
    p.add_argument("--batch", type=int, default=8, help="windows per resize call (per_window)")
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args(argv)
    size, crop, stride, cells = (448, 597), 224, 112, 14
    ys, xs, ch, cw = slide_grid(*size, crop, stride)
    rows = []
    for k in args.classes:
        scores = torch.rand(len(ys) * len(xs), k, cells, cells, generator=torch.Generator().manual_seed(0))
        fns = {"per_window": lambda: per_window(scores, ys, xs, size, (ch, cw), args.batch),
               "grid_matmul": lambda: window_mean(scores, ys, xs, size, (ch, cw))}
        diff = float((fns["per_window"]() - fns["grid_matmul"]()).abs().max())
        for name, fn in fns.items():
            rows.append({"classes": k, "windows": len(ys) * len(xs), "method": name,
                         "cpu_ms_per_image": round(_cpu_ms(fn, args.repeat), 1), "max_abs_diff": diff,
                         "threads": torch.get_num_threads()})
    print(f"{'classes':>7s} {'windows':>7s} {'method':12s} {'CPU ms/img':>10s} {'max |diff|':>10s}")
    for r in rows:
        print(f"{r['classes']:7d} {r['windows']:7d} {r['method']:12s} {r['cpu_ms_per_image']:10.1f} "
              f"{r['max_abs_diff']:10.2e}")
    for r in rows:
        print(json.dumps(r))
    return rows


if __name__ == "__main__":
    main()
