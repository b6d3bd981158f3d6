"""Summary of experiments/pixelclip_lit_camvid/run.sh: base vs PixelCLIP-tuned mIoU per model over seeds.

    python experiments/pixelclip_lit_camvid/summarize.py RUNS_DIR OUT_DIR --models tiny lit --seeds 0 1 2 3 4

Reads, per model M and seed S, ``RUNS_DIR/M/seedS/eval_base/results.json`` and
``.../eval_tuned/results.json`` (``labelless eval`` on CamVid val), ``.../ceiling_val.json``
(``../pixelclip_camvid/ceiling.py``, when there) and the stage timings (``times.tsv``), and
writes ``OUT_DIR/results.json`` and ``OUT_DIR/results.md``: per model the base and tuned
mIoU per seed, mean ± sample std, the paired gain (tuned − base, same seed) mean ± std, the
teacher's mask-level bound, the wall time. Both evaluations of a seed must share their set-up
and score all 101 val images.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
from argparse import ArgumentParser
from pathlib import Path


def _pixelclip_camvid_summarize():
    """experiments/pixelclip_camvid/summarize.py (loaded by path: both files are summarize.py)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "pixelclip_camvid" / "summarize.py"
    spec = importlib.util.spec_from_file_location("pixelclip_camvid_summarize", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


read_times = _pixelclip_camvid_summarize().read_times  # the same times.tsv format

NAMES = {"tiny": "(a) tiny CLIP (CamVid train captions)", "lit": "(b) LiT DINOv2-S, 112 px"}
CEILING_ROWS = (("base_per_pixel", "base, per pixel (= eval)"),
                ("base_mask_avg", "base, averaged in each val DINO mask (teacher's mask-level view)"),
                ("tuned_per_pixel", "tuned, per pixel (= eval)"),
                ("tuned_mask_avg", "tuned, averaged in each val DINO mask"),
                ("base_oracle", "oracle: each mask its majority ground-truth class"))
SETUP_KEYS = ("dataset", "split", "mode", "protocol", "templates", "num_images")


def stats(values: list[float]) -> dict:
    """Mean, sample std (0 for one value), min, max, n."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values)}


def one_seed(d: Path, expected_images: int = 101) -> dict:
    """The base / tuned scores (and the bound, when there) of one seed's run folder."""
    rb = json.loads((d / "eval_base" / "results.json").read_text())
    rt = json.loads((d / "eval_tuned" / "results.json").read_text())
    for r, name in ((rb, "base"), (rt, "tuned")):
        if r["num_images"] != expected_images or r["num_skipped"]:
            raise SystemExit(f"{d} {name}: scored {r['num_images']} images ({r['num_skipped']} skipped), "
                             f"expected all {expected_images}")
    if {k: rb[k] for k in SETUP_KEYS} != {k: rt[k] for k in SETUP_KEYS}:
        raise SystemExit(f"{d}: base and tuned were not scored the same way")
    out = {"base": rb["mIoU"], "tuned": rt["mIoU"], "gain": rt["mIoU"] - rb["mIoU"],
           "setup": {k: rb[k] for k in SETUP_KEYS}, "seconds": read_times(d / "times.tsv")}
    if (d / "ceiling_val.json").is_file():
        c = json.loads((d / "ceiling_val.json").read_text())
        out["ceiling"] = {f"{m}_{v}": c[m][v]["mIoU"] for m in ("base", "tuned") for v in ("per_pixel", "mask_avg", "oracle")}
    return out


def summarize_model(runs: Path, model: str, seeds: list[int], expected_images: int = 101) -> dict:
    """Per-seed scores, their stats and the paired gain of one model (every seed scored alike)."""
    per_seed = {s: one_seed(runs / model / f"seed{s}", expected_images) for s in seeds}
    setups = {json.dumps(p["setup"], sort_keys=True) for p in per_seed.values()}
    if len(setups) != 1:
        raise SystemExit(f"{model}: the seeds were not scored the same way")
    out = {"per_seed": per_seed, "setup": next(iter(per_seed.values()))["setup"]}
    for k in ("base", "tuned", "gain"):
        out[k] = stats([p[k] for p in per_seed.values()])
    if all("ceiling" in p for p in per_seed.values()):
        out["ceiling"] = {k: stats([p["ceiling"][k] for p in per_seed.values()]) for k, _ in CEILING_ROWS}
    return out


def markdown(result: dict) -> list[str]:
    """The README table (models × base / tuned / paired gain, per seed) and the bound's table."""
    seeds = result["seeds"]
    fmt = lambda s, sign="": f"{s['mean']:{sign}.2f} ± {s['std']:.2f}"  # noqa: E731
    md = ["| model | | mean ± std | " + " | ".join(f"seed {s}" for s in seeds) + " |",
          "|:---|:---|---:|" + "---:|" * len(seeds)]
    for m, r in result["models"].items():
        for k, name in (("base", "base"), ("tuned", "+ PixelCLIP"), ("gain", "paired gain")):
            vals = " | ".join(f"{r['per_seed'][s][k]:{'+' if k == 'gain' else ''}.2f}" for s in seeds)
            cell = fmt(r[k], "+" if k == "gain" else "")
            md.append(f"| {NAMES.get(m, m) if k == 'base' else ''} | {name} | "
                      + (f"**{cell}**" if k == "gain" else cell) + f" | {vals} |")
    for m, r in result["models"].items():
        if "ceiling" in r:
            md += ["", f"{NAMES.get(m, m)}: the teacher's mask-level bound (`ceiling.py`, val DINO masks, k = 16):", "",
                   "| | mean ± std |", "|:---|---:|"]
            md += [f"| {name} | {fmt(r['ceiling'][k])} |" for k, name in CEILING_ROWS]
    return md


def main(argv: list[str]) -> int:
    ap = ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--models", nargs="+", default=["tiny", "lit"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    ap.add_argument("--expected-images", type=int, default=101)
    args = ap.parse_args(argv)
    shared = read_times(args.runs / "times.tsv")
    result = {"seeds": args.seeds,
              "models": {m: summarize_model(args.runs, m, args.seeds, args.expected_images) for m in args.models},
              "wall_seconds": shared.get("total"), "stage_seconds": shared,
              "environment": {"cpu_count": os.cpu_count(), "python": platform.python_version(),
                              "threads_per_job": os.environ.get("OMP_NUM_THREADS"), "jobs": os.environ.get("JOBS")}}
    wall = result["wall_seconds"]
    head = ["# PixelCLIP on CamVid val, settings chosen on the dev split", "",
            "Produced by `experiments/pixelclip_lit_camvid/run.sh`"
            + (f" ({len(args.seeds)} seeds; wall time {wall / 60:.1f} min on {os.cpu_count()} CPU cores)." if wall else "."),
            ""]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "results.md").write_text("\n".join(head + markdown(result)) + "\n")
    print("\n".join(markdown(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
