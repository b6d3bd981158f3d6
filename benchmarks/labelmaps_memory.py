"""Peak memory and time of ``upsample_labels`` versus the plain ``K×H×W`` upsampling.

    python benchmarks/labelmaps_memory.py [--classes 150] [--grid 64] [--sizes 8000x6000,4000x3000]
                                          [--bg-threshold 0.5] [--skip-threshold] [--check-size 1000x750]
                                          [--layout contiguous|channels_last] [--pattern random|regions]
                                          [--max-elements N] [--device cpu|cuda|auto]

Each case runs in a fresh subprocess (``--worker``) so that peaks don't mix: the peak RSS is
``resource.getrusage(RUSAGE_SELF).ru_maxrss`` after the call, next to the same figure just
before it (Python, torch and the scores); with ``--device cuda`` also
``torch.cuda.max_memory_allocated``. Every size runs without and with ``--bg-threshold``
(unless ``--skip-threshold``). The plain computation (``F.interpolate`` of all classes, then
``labels_from_similarity``) only runs at ``--check-size``; for the large sizes the table shows
what it would allocate: the ``K×H×W`` float32 tensor (twice that with a threshold, for
``logit_scale·sim``). At the check size both label maps are hashed and must agree.

Scores: ``random`` (uniform cosine-like values: every class can win somewhere, no
pruning) or ``regions`` (12 classes decay away from their centres and own the nearest
pixels, the others stay weaker: pruning keeps the 12 or fewer). ``channels_last`` lays them out as ``torch.einsum`` returns them in ``segment.py``,
where PyTorch's CPU kernel upsamples 8 classes per vector (so chunks hold 8 planes).
Prints one ``RESULT {json}`` line per case, then a table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_scores(classes: int, grid: int, pattern: str, layout: str, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    s = torch.rand(classes, grid, grid, generator=g) * 0.1 + 0.15
    if pattern == "regions":  # 12 classes own Voronoi-like regions, the others stay below them
        s = torch.rand(classes, grid, grid, generator=g) * 0.05 + 0.10
        yy, xx = torch.meshgrid(torch.arange(grid).float(), torch.arange(grid).float(), indexing="ij")
        for k in torch.randperm(classes, generator=g)[:12].tolist():
            cy, cx = (torch.rand(2, generator=g) * grid).tolist()
            s[k] = 0.30 - 0.003 * torch.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
    if layout == "channels_last":
        s = s.permute(1, 2, 0).contiguous().permute(2, 0, 1)
    return s


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def worker(case: dict) -> dict:
    """Run one case in this process and return its measurements."""
    import torch
    import torch.nn.functional as F

    from labelless.labelmaps import candidate_classes, labels_from_similarity, upsample_labels

    device = torch.device(case["device"])
    scores = make_scores(case["classes"], case["grid"], case["pattern"], case["layout"]).to(device)
    H, W = case["size"]
    t = case["bg_threshold"]
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = peak_rss_mb()
    t0 = time.perf_counter()
    if case["method"] == "plain":
        up = F.interpolate(scores[None].float(), size=(H, W), mode="bilinear", align_corners=False)[0]
        labels = labels_from_similarity(up, bg_threshold=t)
        del up
    else:
        labels = upsample_labels(scores, (H, W), bg_threshold=t, max_elements=case["max_elements"])
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    out = dict(case, seconds=round(seconds, 3), rss_before_mb=round(before, 1), peak_rss_mb=round(peak_rss_mb(), 1),
               candidates=len(candidate_classes(scores)), threads=torch.get_num_threads(),
               loadavg_1min=round(os.getloadavg()[0], 2),
               labels_sha256=hashlib.sha256(labels.cpu().numpy().tobytes()).hexdigest()[:16])
    if device.type == "cuda":
        out["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)
    return out


def run_case(case: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(case)], capture_output=True, text=True)
    if proc.returncode != 0:
        return dict(case, error=(proc.stderr.strip().splitlines() or ["?"])[-1])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def parse_size(text: str) -> tuple[int, int]:
    w, h = (int(v) for v in text.lower().split("x"))
    return h, w  # "8000x6000" is width × height


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classes", type=int, default=150)
    ap.add_argument("--grid", type=int, default=64, help="score map is grid×grid")
    ap.add_argument("--sizes", default="8000x6000,4000x3000", help="output sizes, width x height")
    ap.add_argument("--check-size", default="1000x750", help="size where the plain computation also runs")
    ap.add_argument("--bg-threshold", type=float, default=0.5)
    ap.add_argument("--skip-threshold", action="store_true", help="only the cases without threshold")
    ap.add_argument("--layout", choices=["contiguous", "channels_last"], default="contiguous")
    ap.add_argument("--pattern", choices=["random", "regions"], default="random")
    ap.add_argument("--max-elements", type=int, default=2 ** 25)
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    device = args.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    base = dict(classes=args.classes, grid=args.grid, layout=args.layout, pattern=args.pattern,
                max_elements=args.max_elements, device=device)
    thresholds = [None] if args.skip_threshold else [None, args.bg_threshold]
    cases = [dict(base, size=parse_size(s), bg_threshold=t, method="upsample_labels")
             for s in args.sizes.split(",") for t in thresholds]
    if args.check_size:
        cases += [dict(base, size=parse_size(args.check_size), bg_threshold=t, method=m)
                  for t in thresholds for m in ("upsample_labels", "plain")]
    results = []
    for case in cases:
        res = run_case(case)
        print("RESULT " + json.dumps(res), flush=True)
        results.append(res)
    print_table(results)


def print_table(results: list[dict]) -> None:
    print(f"\n{'method':16} {'W×H':>10} {'thr':>5} {'cand':>5} {'seconds':>8} {'RSS before':>11} "
          f"{'peak RSS':>9} {'plain K×H×W':>12}  labels")
    for r in results:
        H, W = r["size"]
        plain_gb = r["classes"] * H * W * 4 * (2 if r["bg_threshold"] is not None else 1) / 1e9
        thr = "-" if r["bg_threshold"] is None else f"{r['bg_threshold']:g}"
        if "error" in r:
            print(f"{r['method']:16} {W}x{H:<5} {thr:>5}  ERROR {r['error']}")
            continue
        cuda = f"  cuda peak {r['cuda_peak_mb']:.0f} MB" if "cuda_peak_mb" in r else ""
        print(f"{r['method']:16} {W:>5}x{H:<5} {thr:>5} {r['candidates']:>5} {r['seconds']:>8.2f} "
              f"{r['rss_before_mb']:>8.0f} MB {r['peak_rss_mb']:>6.0f} MB {plain_gb:>9.2f} GB  "
              f"{r['labels_sha256']}{cuda}")
    checks = {}
    for r in results:
        if "error" not in r and r["method"] in ("plain", "upsample_labels"):
            checks.setdefault((tuple(r["size"]), r["bg_threshold"]), {})[r["method"]] = r["labels_sha256"]
    for (size, t), got in checks.items():
        if len(got) == 2:
            print(f"check {size[1]}x{size[0]} thr={t}: labels {'AGREE' if len(set(got.values())) == 1 else 'DIFFER'}")


if __name__ == "__main__":
    main()
