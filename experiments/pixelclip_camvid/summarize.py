"""Summary of experiments/pixelclip_camvid/run.sh: base vs PixelCLIP-tuned mIoU over seeds.

    python experiments/pixelclip_camvid/summarize.py RUNS_DIR OUT_DIR SEED [SEED ...]

Reads, per seed, ``RUNS_DIR/seed<S>/eval_base/results.json`` and
``RUNS_DIR/seed<S>/eval_tuned/results.json`` (written by ``labelless eval``), the
stage timings ``RUNS_DIR/seed<S>/times.tsv`` and ``RUNS_DIR/times.tsv``, and writes
``OUT_DIR/results.json`` and ``OUT_DIR/results.md``: per-seed mIoU of the base CLIP and of
the tuned one, mean ± sample standard deviation and min–max spread, the per-seed gain
(tuned − base, same seed) and its mean ± std, the evaluation protocol, the training
set-ups (the resolved configs) and the wall time.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
from pathlib import Path

import yaml


def stats(values: list[float]) -> dict:
    out = {"mean": statistics.fmean(values), "min": min(values), "max": max(values),
           "spread": max(values) - min(values), "n": len(values)}
    out["std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    return out


def read_times(path: Path) -> dict[str, float]:
    """``stage<TAB>seconds`` lines → {stage: seconds} (later lines win)."""
    times: dict[str, float] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if "\t" in line:
                stage, sec = line.split("\t")[:2]
                times[stage] = float(sec)
    return times


def fmt(s: dict) -> str:
    return f"{s['mean']:.2f} ± {s['std']:.2f}"


def main(argv: list[str]) -> int:
    runs, out = Path(argv[0]), Path(argv[1])
    seeds = [int(s) for s in argv[2:]]
    per_seed, base, tuned, gains = [], [], [], []
    protocol = None
    for s in seeds:
        d = runs / f"seed{s}"
        rb = json.loads((d / "eval_base" / "results.json").read_text())
        rt = json.loads((d / "eval_tuned" / "results.json").read_text())
        for r, name in ((rb, "base"), (rt, "tuned")):
            if r["num_images"] != 101 or r["num_skipped"]:
                raise SystemExit(f"seed {s} {name}: scored {r['num_images']} images "
                                 f"({r['num_skipped']} skipped), expected all 101 CamVid val images")
        setup = {k: rb[k] for k in ("dataset", "split", "mode", "protocol", "templates", "synonyms", "num_images")}
        if protocol is None:
            protocol = setup
        elif setup != protocol:
            raise SystemExit(f"seed {s}: evaluation set-up differs from seed {seeds[0]}'s")
        tuned_setup = {k: rt[k] for k in setup}
        if tuned_setup != setup:
            raise SystemExit(f"seed {s}: base and tuned were not scored the same way")
        base.append(rb["mIoU"])
        tuned.append(rt["mIoU"])
        gains.append(rt["mIoU"] - rb["mIoU"])
        per_seed.append({
            "seed": s, "base_mIoU": rb["mIoU"], "tuned_mIoU": rt["mIoU"], "gain": rt["mIoU"] - rb["mIoU"],
            "base_pAcc": rb["pAcc"], "tuned_pAcc": rt["pAcc"],
            "base_per_class_iou": rb["per_class"], "tuned_per_class_iou": rt["per_class"],
            "seconds": read_times(d / "times.tsv"),
        })
        if (d / "ceiling.json").is_file():  # written by ceiling.py (run.sh's last stage)
            c = json.loads((d / "ceiling.json").read_text())
            per_seed[-1]["ceiling"] = {f"{m}_{view}": c[m][view]["mIoU"] for m in ("base", "tuned")
                                       for view in ("per_pixel", "mask_avg", "oracle")}
    first = runs / f"seed{seeds[0]}"
    clip_cfg = yaml.safe_load((first / "clip" / "config.yaml").read_text())
    pc_cfg = yaml.safe_load((first / "pixelclip" / "config.yaml").read_text())
    store = json.loads((Path(pc_cfg["mask_store"]) / "store.json").read_text())
    shared = read_times(runs / "times.tsv")
    sb, st, sg = stats(base), stats(tuned), stats(gains)
    result = {
        "experiment": "tiny CLIP pretrained on CamVid train (class-name captions of crops), then PixelCLIP-tuned "
                      "on the same images with DINO k-means masks (no labels); scored on CamVid val",
        "seeds": seeds,
        "base_mIoU": sb, "tuned_mIoU": st, "gain": sg,
        "gain_over_spread": {"mean_gain": sg["mean"], "max_seed_std": max(sb["std"], st["std"]),
                             "every_seed_gains": all(g > 0 for g in gains)},
        "per_seed": per_seed,
        "evaluation": protocol,
        "clip_config": clip_cfg,
        "pixelclip_config": pc_cfg,
        "mask_store": {"source": store.get("source"), "params": store.get("params")},
        "wall_seconds": shared.get("total"),
        "stage_seconds": shared,
        "environment": {"cpu_count": os.cpu_count(), "python": platform.python_version(),
                        "threads_per_job": os.environ.get("OMP_NUM_THREADS"),
                        "jobs": os.environ.get("JOBS")},
    }

    p = protocol["protocol"]
    prot = (f"`labelless eval --mode {protocol['mode']} --protocol {p['name']} --short-side {p['short_side']} "
            f"--input-size {p['input_size']}" + (f" --stride {p['stride']}" if p["name"] == "slide" else "")
            + f" --templates \"{protocol['templates']}\"`")
    wall = shared.get("total")
    md = ["# PixelCLIP on CamVid: learning evidence on real images", "",
          "Produced by `experiments/pixelclip_camvid/run.sh` "
          f"({len(seeds)} seeds; wall time {wall / 60:.1f} min on {os.cpu_count()} CPU cores)." if wall else
          "Produced by `experiments/pixelclip_camvid/run.sh`.", "",
          f"CamVid val, all {protocol['num_images']} images, 11 classes; {prot}.", "",
          "| | mIoU mean ± std | min | max | " + " | ".join(f"seed {s}" for s in seeds) + " |",
          "|:---|---:|---:|---:|" + "---:|" * len(seeds),
          f"| base CLIP | {fmt(sb)} | {sb['min']:.2f} | {sb['max']:.2f} | "
          + " | ".join(f"{v:.2f}" for v in base) + " |",
          f"| + PixelCLIP (DINO masks) | {fmt(st)} | {st['min']:.2f} | {st['max']:.2f} | "
          + " | ".join(f"{v:.2f}" for v in tuned) + " |",
          f"| gain (same seed) | **{sg['mean']:+.2f} ± {sg['std']:.2f}** | {sg['min']:+.2f} | {sg['max']:+.2f} | "
          + " | ".join(f"{v:+.2f}" for v in gains) + " |", "",
          "Target: a gain of at least +3 mIoU, clearly above the seed spread. "
          + ("Reached." if sg["mean"] >= 3 and sg["mean"] > max(sb["std"], st["std"]) else
             f"Not reached: mean gain {sg['mean']:+.2f} (paired std {sg['std']:.2f}) against a seed std of "
             f"{sb['std']:.2f} (base) / {st['std']:.2f} (tuned). What was tried and why: NOTES.md."), ""]
    if all("ceiling" in ps for ps in per_seed):
        rows = (("base_per_pixel", "base, per pixel (= eval)"),
                ("base_mask_avg", "base, averaged in each val DINO mask (the teacher's mask-level view)"),
                ("tuned_per_pixel", "tuned, per pixel (= eval)"),
                ("tuned_mask_avg", "tuned, averaged in each val DINO mask"),
                ("base_oracle", "oracle: each mask its majority ground-truth class"))
        ceil = {k: stats([ps["ceiling"][k] for ps in per_seed]) for k, _ in rows}
        result["ceiling"] = ceil
        md += ["What the teacher knows at the mask level (`ceiling.py`, same windows; val images' own DINO "
               "k-means masks, k = 16, used for this analysis only):", "",
               "| | mean ± std | " + " | ".join(f"seed {s}" for s in seeds) + " |",
               "|:---|---:|" + "---:|" * len(seeds)]
        for k, name in rows:
            md.append(f"| {name} | {fmt(ceil[k])} | " + " | ".join(f"{ps['ceiling'][k]:.2f}" for ps in per_seed)
                      + " |")
        md.append("")
    classes = list(per_seed[0]["base_per_class_iou"])
    md += ["Per-class IoU, mean over seeds:", "", "| | " + " | ".join(classes) + " |",
           "|:---|" + "---:|" * len(classes)]
    for key, name in (("base_per_class_iou", "base"), ("tuned_per_class_iou", "tuned")):
        vals = [statistics.fmean(ps[key][c] or 0.0 for ps in per_seed) for c in classes]
        md.append(f"| {name} | " + " | ".join(f"{v:.1f}" for v in vals) + " |")
    md += ["", "Set-up (seed-independent keys; full configs in results.json):", "",
           f"- CLIP: {clip_cfg['model']}, {clip_cfg['max_steps']} steps × batch {clip_cfg['batch_size']}, "
           f"lr {clip_cfg['lr']}, crops of {clip_cfg['crop_scale_min']}–{clip_cfg['crop_scale_max']} of the image "
           f"area, captions \"{clip_cfg['caption_template']}\" with ≤ {clip_cfg['max_names']} class names.",
           f"- PixelCLIP: {pc_cfg['max_steps']} steps × batch {pc_cfg['batch_size']}, k = {pc_cfg['num_clusters']}, "
           f"base lr {pc_cfg['lr']} (CLIP ×{pc_cfg['clip_lr_mult']}, prompts ×{pc_cfg['prompt_lr_mult']}), "
           f"EMA {pc_cfg['ema']}, crop {pc_cfg['crop_size']} of short side {pc_cfg['short_side']} → "
           f"{pc_cfg['resolution']} px, masks at {pc_cfg['mask_size']}.",
           f"- Masks: {store.get('source')} {json.dumps(store.get('params'))} on CamVid train images only.", ""]
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "results.md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
