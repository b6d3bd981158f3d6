"""Summary of experiments/selftrain_camvid/run.sh: for each teacher, students trained on
its pseudo-labels vs the teacher itself, on CamVid val.

    python experiments/selftrain_camvid/summarize.py RUNS_DIR OUT_DIR "SEED ..." TEACHER [TEACHER ...]

Per teacher T reads ``RUNS_DIR/T/seed<S>/eval/results.json`` (students),
``RUNS_DIR/T/teacher_eval/results.json`` (the teacher at its labelling protocol), the store's
``store.json``, ``label_quality.json`` and the ``times.tsv`` files. Writes
``OUT_DIR/results.json`` and ``OUT_DIR/results.md``.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from pathlib import Path


def stats(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values)}


def fmt(s: dict) -> str:
    return f"{s['mean']:.2f} ± {s['std']:.2f}"


def read(path: Path) -> dict:
    r = json.loads(path.read_text())
    if r["num_images"] != 101 or r["num_skipped"]:
        raise SystemExit(f"{path}: scored {r['num_images']} images ({r['num_skipped']} skipped), expected all 101")
    return r


NAMES = {"sseg": "S-Seg, DINOv2-S (experiments/sseg_camvid, seed 0)",
         "pixelclip": "PixelCLIP-tuned tiny CLIP (experiments/pixelclip_camvid, seed 0)"}


def read_times(*paths: Path) -> dict[str, float]:
    """Stage seconds; a KEEP=1 rerun appends shorter entries: keep the longest of each."""
    times: dict[str, float] = {}
    for path in paths:
        for line in path.read_text().splitlines() if path.is_file() else []:
            if "\t" in line:
                name, sec = line.split("\t")[:2]
                times[name] = max(times.get(name, 0.0), float(sec))
    return times


def wall_seconds(path: Path) -> float | None:
    """The sum of the ``total`` lines: each run.sh invocation adds the time of the work it did
    (KEEP=1 skips finished stages, e.g. a second teacher added later)."""
    rows = [line.split("\t") for line in path.read_text().splitlines() if line.startswith("total\t")] \
        if path.is_file() else []
    return sum(float(r[1]) for r in rows) or None


def student_name(config: Path) -> str:
    """``config``: a student's resolved run config (``config.yaml``) → a short description."""
    import yaml

    c = yaml.safe_load(config.read_text())
    b = c["backbone"]
    name = "DINOv2-S" if b.startswith("hf:") and "dinov2-small" in b else "tiny conv net" if b == "tiny" else b
    init = "frozen" if c.get("freeze_backbone") else "from scratch" if b == "tiny" or not c.get("pretrained") \
        and b.startswith("timm:") else "fine-tuned"
    return f"{name} ({init}) + {c['head']} head, {c['max_steps']} steps × {c['batch_size']} crops"


def collect(runs: Path, seeds: list[int]) -> dict:
    """One teacher's folder → teacher and student figures."""
    students = [read(runs / f"seed{s}" / "eval" / "results.json") for s in seeds]
    teacher = read(runs / "teacher_eval" / "results.json")
    store = json.loads((runs / "store" / "store.json").read_text())
    quality = runs / "label_quality.json"
    return {"teacher": {"mIoU": teacher["mIoU"], "protocol": teacher["protocol"], "mode": teacher.get("mode"),
                        "pretrained": teacher.get("pretrained"), "per_class": teacher["per_class"]},
            "student": {"mIoU": stats([r["mIoU"] for r in students]), "pAcc": stats([r["pAcc"] for r in students]),
                        "per_seed": [{"seed": s, "mIoU": r["mIoU"], "pAcc": r["pAcc"], "per_class": r["per_class"]}
                                     for s, r in zip(seeds, students)],
                        "protocol": students[0]["protocol"],
                        "model": student_name(runs / f"seed{seeds[0]}" / "config.yaml")},
            "gain_over_teacher": stats([r["mIoU"] - teacher["mIoU"] for r in students]),
            "store": {k: store[k] for k in ("counts", "histogram", "inference", "min_confidence") if k in store},
            "pseudo_label_quality": json.loads(quality.read_text()) if quality.is_file() else None,
            "stage_seconds": read_times(runs / "times.tsv", *[runs / f"seed{s}" / "times.tsv" for s in seeds])}


def teacher_lines(name: str, res: dict, seeds: list[int]) -> list[str]:
    t, st, g = res["teacher"], res["student"], res["gain_over_teacher"]
    p, sp = t["protocol"], st["protocol"]
    blank = " | ".join("" for _ in seeds)
    return [f"| teacher: {NAMES.get(name, name)} | {t['mode'] or 'mask classification'}, slide, short side "
            f"{p['short_side']}, {p['input_size']}-px windows | {t['mIoU']:.2f} | {blank} |",
            f"| student of it: {st['model']} | {sp['name']}, short side {sp['short_side']} | "
            f"**{fmt(st['mIoU'])}** | " + " | ".join(f"{r['mIoU']:.2f}" for r in st["per_seed"]) + " |",
            f"| student − teacher | | **{g['mean']:+.2f} ± {g['std']:.2f}** | "
            + " | ".join(f"{r['mIoU'] - t['mIoU']:+.2f}" for r in st["per_seed"]) + " |"]


def quality_lines(name: str, res: dict) -> list[str]:
    q = res["pseudo_label_quality"]
    if not q:
        return []
    md = [f"Pseudo-labels of CamVid train by the {name} teacher against the train ground truth "
          "(`label_quality.py`, analysis only):", "",
          "| confidence ≥ | pixels kept | mIoU | pAcc |", "|---:|---:|---:|---:|"]
    md += [f"| {k.split('>=')[1]} | {100 * v['kept']:.1f} % | {v['mIoU']:.2f} | {v['pAcc']:.2f} |"
           for k, v in q.items() if k.startswith("confidence")]
    return md + [""]


def markdown(res: dict) -> str:
    seeds, wall = res["seeds"], res["wall_seconds"]
    md = ["# Self-training on CamVid: students vs their teachers", "",
          f"Produced by `experiments/selftrain_camvid/run.sh` ({len(seeds)} seeds"
          + (f", {wall / 60:.1f} min on {res['cpu_count']} CPU cores)." if wall else ")."), "",
          "CamVid val, all 101 images, 11 classes. CPU figures: other machines round differently.", "",
          "| model | protocol | mIoU | " + " | ".join(f"seed {s}" for s in seeds) + " |",
          "|:---|:---|---:|" + "---:|" * len(seeds)]
    for name, r in res["teachers"].items():
        md += teacher_lines(name, r, seeds)
    md.append("")
    for name, r in res["teachers"].items():
        g = r["gain_over_teacher"]
        md.append(f"- {name}: the student {'beats' if g['mean'] > 0 else 'does not beat'} its teacher "
                  f"({g['mean']:+.2f} ± {g['std']:.2f}; {g['min']:+.2f} … {g['max']:+.2f}).")
    md += ["", "See NOTES.md for what limits the students.", ""]
    for name, r in res["teachers"].items():
        t, st = r["teacher"], r["student"]
        classes = list(t["per_class"])
        md += [f"Per-class IoU, {name}:", "", "| | " + " | ".join(classes) + " |", "|:---|" + "---:|" * len(classes),
               "| teacher | " + " | ".join(f"{(t['per_class'][c] or 0):.1f}" for c in classes) + " |",
               "| student (mean) | " + " | ".join(
                   f"{statistics.fmean(p['per_class'][c] or 0.0 for p in st['per_seed']):.1f}" for c in classes)
               + " |", ""]
        md += quality_lines(name, r)
    return "\n".join(md)


def main(argv: list[str]) -> int:
    runs, out, seeds, teachers = Path(argv[0]), Path(argv[1]), [int(s) for s in argv[2].split()], argv[3:]
    res = {"experiment": "S-Seg+ self-training on CamVid: each teacher labels CamVid train with the CamVid class "
                         "names; a segmenter learns those labels; CamVid val",
           "seeds": seeds, "teachers": {t: collect(runs / t, seeds) for t in teachers},
           "wall_seconds": wall_seconds(runs / "times.tsv"), "cpu_count": os.cpu_count()}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=2) + "\n")
    md = markdown(res)
    (out / "results.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
