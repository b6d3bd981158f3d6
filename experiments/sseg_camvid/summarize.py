"""Summary of experiments/sseg_camvid/run.sh: S-Seg CamVid val mIoU per backbone over seeds.

    python experiments/sseg_camvid/summarize.py RUNS_DIR OUT_DIR SEED [SEED ...]
    python experiments/sseg_camvid/summarize.py --refresh OUT_DIR

``--refresh`` re-reads only the PixelCLIP experiment's figures into an existing
``OUT_DIR/results.json`` and rewrites both files (for when pixelclip_camvid ran after this one).

Reads, per seed S and backbone B (``dinov2s``, ``small``), ``RUNS_DIR/seed<S>/<B>/eval_val_*/results.json``
(``labelless eval``), ``RUNS_DIR/seed<S>/<B>/diagnose.json`` (diagnose.py), the resolved
training config ``RUNS_DIR/seed<S>/<B>/config.yaml``, the stage timings (``times.tsv``), the
cache's caption statistics ``RUNS_DIR/cache_train/captions.json``, and the PixelCLIP
experiment's ``experiments/pixelclip_camvid/results.json`` when it is there (printed beside,
with its own protocol). Writes ``OUT_DIR/results.json`` and ``OUT_DIR/results.md``: per-seed
mIoU, mean ± sample std, min–max, per-class IoU, the diagnosis (model labels vs mask vote vs
mask oracle vs the pseudo-masks' oracle), the evaluation protocol, the set-up, the wall time.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
BACKBONES = {"dinov2s": "DINOv2-S (frozen, ../shared/weights)", "small": "small conv backbone (from scratch)"}
DIAG = (("labels", "model labels (= eval)"),
        ("mask_vote", "hard masks, each its own predicted class"),
        ("mask_oracle", "hard masks, each its majority GT class (mask quality)"),
        ("pseudo_oracle", "training pseudo-masks (k-means of DINOv2-S tokens), majority GT class"))
SETUP_KEYS = ("dataset", "split", "scorer", "protocol", "templates", "synonyms", "num_images")


def stats(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values)}


def fmt(s: dict) -> str:
    return f"{s['mean']:.2f} ± {s['std']:.2f}" if s["n"] > 1 else f"{s['mean']:.2f}"


def read_times(path: Path) -> dict[str, float]:
    rows = [line.split("\t") for line in path.read_text().splitlines() if "\t" in line] if path.is_file() else []
    return {r[0]: float(r[1]) for r in rows}


def read_run(d: Path, seed: int) -> tuple[dict, dict]:
    """One (seed, backbone) folder → (its row, its evaluation set-up)."""
    found = sorted(d.glob("eval_val_*/results.json"))
    if len(found) != 1:
        raise SystemExit(f"{d}: expected one eval_val_*/results.json, found {len(found)}")
    r = json.loads(found[0].read_text())
    if r["num_images"] != 101 or r["num_skipped"]:
        raise SystemExit(f"{d}: scored {r['num_images']} images ({r['num_skipped']} skipped), expected all 101")
    diag = json.loads((d / "diagnose.json").read_text()) if (d / "diagnose.json").is_file() else {}
    if diag and abs(diag["labels"] - r["mIoU"]) > 0.05:
        raise SystemExit(f"{d}: diagnose.py labels {diag['labels']:.2f} != eval {r['mIoU']:.2f}")
    row = {"seed": seed, "mIoU": r["mIoU"], "pAcc": r["pAcc"], "mAcc": r["mAcc"], "per_class_iou": r["per_class"],
           "diagnosis": {k: diag[k] for k, _ in DIAG if k in diag}, "seconds": read_times(d / "times.tsv"),
           "config": yaml.safe_load((d / "config.yaml").read_text())}
    return row, {k: r[k] for k in SETUP_KEYS}


def collect(runs: Path, seeds: list[int]) -> tuple[dict, dict]:
    """Per backbone: mIoU / pAcc / diagnosis statistics over seeds and the rows; the one protocol."""
    per_backbone, protocol = {}, None
    for b in BACKBONES:
        rows = []
        for s in seeds:
            row, setup = read_run(runs / f"seed{s}" / b, s)
            if protocol is not None and setup != protocol:
                raise SystemExit(f"seed {s} {b}: evaluation set-up differs from the first run's")
            protocol = setup
            rows.append(row)
        diag = {k: stats([r["diagnosis"][k] for r in rows if k in r["diagnosis"]]) for k, _ in DIAG
                if any(k in r["diagnosis"] for r in rows)}  # run.sh diagnoses the first seed only
        per_backbone[b] = {"mIoU": stats([r["mIoU"] for r in rows]), "pAcc": stats([r["pAcc"] for r in rows]),
                           "diagnosis": diag, "per_seed": rows}
    return per_backbone, protocol


def pixelclip_figures(repo: Path) -> dict | None:
    path = repo / "experiments" / "pixelclip_camvid" / "results.json"
    if not path.is_file():
        return None
    pc = json.loads(path.read_text())
    return {"base_mIoU": pc["base_mIoU"], "tuned_mIoU": pc["tuned_mIoU"], "evaluation": pc["evaluation"],
            "per_seed": [{k: ps[k] for k in ("seed", "base_mIoU", "tuned_mIoU")} for ps in pc["per_seed"]]}


def table(result: dict) -> list[str]:
    seeds, protocol, pc = result["seeds"], result["evaluation"], result["pixelclip_camvid"]
    p = protocol["protocol"]
    prot = (f"`labelless eval --protocol {p['name']} --short-side {p['short_side']} --input-size {p['input_size']}"
            + (f" --stride {p['stride']}" if p["name"] == "slide" else "") + f" --templates \"{protocol['templates']}\"`")
    wall = result["wall_seconds"]
    md = ["# S-Seg on CamVid: learning evidence on real images", "",
          f"Produced by `experiments/sseg_camvid/run.sh` ({len(seeds)} seeds, both backbones"
          + (f"; wall time {wall / 60:.1f} min on {os.cpu_count()} CPU cores)." if wall else ")."), "",
          f"CamVid val, all {protocol['num_images']} images, 11 classes; mask classification (MaskFormer "
          f"semantic inference); {prot}. CPU figures: other machines round differently.", "",
          "| model | mIoU mean ± std | min | max | " + " | ".join(f"seed {s}" for s in seeds) + " |",
          "|:---|---:|---:|---:|" + "---:|" * len(seeds)]
    for b, name in BACKBONES.items():
        st = result[b]["mIoU"]
        md.append(f"| S-Seg, {name} | **{fmt(st)}** | {st['min']:.2f} | {st['max']:.2f} | "
                  + " | ".join(f"{row['mIoU']:.2f}" for row in result[b]["per_seed"]) + " |")
    if pc:
        for key, name in (("base_mIoU", "tiny CLIP (captions of crops)"), ("tuned_mIoU", "+ PixelCLIP")):
            st = pc[key]
            md.append(f"| {name}, pixelclip_camvid (its protocol¹) | {fmt(st)} | {st['min']:.2f} | {st['max']:.2f} | "
                      + " | ".join(f"{ps[key]:.2f}" for ps in pc["per_seed"]) + " |")
        pp = pc["evaluation"]["protocol"]
        md += ["", f"¹ `experiments/pixelclip_camvid/results.md`: dense CLIP, slide, short side {pp['short_side']}, "
               f"{pp['input_size']}-px windows, stride {pp['stride']}; the same val images, classes and template."]
    d = result["dinov2s"]["mIoU"]["mean"]
    md += ["", "Aim: a DINOv2-S mean of at least 20 mIoU. "
           + ("Reached." if d >= 20 else f"Not reached ({d:.2f}); what limits it: the diagnosis below and NOTES.md."), ""]
    return md


def diagnosis_and_classes(result: dict) -> list[str]:
    md = ["Diagnosis (`diagnose.py`, the same windows, first seed; mIoU):", "",
          "| view | " + " | ".join(BACKBONES) + " |", "|:---|" + "---:|" * len(BACKBONES)]
    for k, name in DIAG:
        cells = [fmt(result[b]["diagnosis"][k]) if k in result[b]["diagnosis"] else "—" for b in BACKBONES]
        md.append(f"| {name} | " + " | ".join(cells) + " |")
    classes = list(result["dinov2s"]["per_seed"][0]["per_class_iou"])
    md += ["", "Per-class IoU, mean over seeds:", "", "| | " + " | ".join(classes) + " |",
           "|:---|" + "---:|" * len(classes)]
    for b in BACKBONES:
        rows = result[b]["per_seed"]
        vals = [statistics.fmean(row["per_class_iou"][c] or 0.0 for row in rows) for c in classes]
        md.append(f"| {b} | " + " | ".join(f"{v:.1f}" for v in vals) + " |")
    return md


def setup_lines(result: dict) -> list[str]:
    captions, first = result["cache"], result["dinov2s"]["per_seed"][0]["config"]
    sset = captions["settings"]
    md = ["", "Set-up (full configs in results.json):", "",
          f"- data: one cache of CamVid train shared by all seeds ({captions['crops']} crops: "
          f"{sset['crops_per_image']} per image, {sset['crop_scale_min']}–{sset['crop_scale_max']} of the image area, "
          f"{sset['image_size']} px, crop seed {sset['seed']}); caption \"{sset['caption_template']}\" naming "
          f"≤ {sset['max_names']} class(es) covering ≥ {sset['min_class_fraction']} of the crop, largest first, "
          f"{captions['distinct_captions']} distinct captions; pseudo-masks = cosine k-means (K = {sset['dino_k']}) "
          "of each crop's DINOv2-S tokens.",
          f"- training (both backbones, same keys): {first['max_steps']} steps × batch {first['batch_size']}, "
          f"AdamW lr {first['lr']} (cosine, warmup {first['warmup_steps']}), weight decay {first['weight_decay']}, "
          f"mask weight {first['mask_weight']}, contrastive weight {first['contrastive_weight']}; the seed sets the "
          "initialisation and the order of the crops. Settings chosen on the dev split (dev.sh, NOTES.md).", ""]
    if result["wall_seconds"]:
        md += ["Stage times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in result["stage_seconds"].items()), ""]
    return md


def write(result: dict, out: Path) -> None:
    md = table(result) + diagnosis_and_classes(result) + setup_lines(result)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "results.md").write_text("\n".join(md))
    print("\n".join(md))


def refresh(out: Path) -> int:
    result = json.loads((out / "results.json").read_text())
    result["pixelclip_camvid"] = pixelclip_figures(REPO)
    write(result, out)
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["--refresh"]:
        return refresh(Path(argv[1]))
    runs, out, seeds = Path(argv[0]), Path(argv[1]), [int(s) for s in argv[2:]]
    per_backbone, protocol = collect(runs, seeds)
    shared = read_times(runs / "times.tsv")
    result = {
        "experiment": "S-Seg (MaskFormer without class head + text encoder from scratch) trained on CamVid train "
                      "crops with class-name captions (from the labels: the only use of them) and DINOv2-S k-means "
                      "pseudo-masks; scored on CamVid val",
        "seeds": seeds, "backbones": BACKBONES, **per_backbone, "evaluation": protocol,
        "cache": json.loads((runs / "cache_train" / "captions.json").read_text()),
        "pixelclip_camvid": pixelclip_figures(REPO),
        "wall_seconds": shared.get("total"), "stage_seconds": shared,
        "environment": {"cpu_count": os.cpu_count(), "python": platform.python_version(),
                        "threads_per_job": os.environ.get("THREADS"), "jobs": os.environ.get("JOBS")},
    }
    write(result, out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
