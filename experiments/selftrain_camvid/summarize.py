"""Summary of experiments/selftrain_camvid/run.sh: students trained on the teacher's
pseudo-labels vs the teacher, on CamVid val.

    python experiments/selftrain_camvid/summarize.py RUNS_DIR OUT_DIR TEACHER SEED [SEED ...]

Reads ``RUNS_DIR/seed<S>/eval/results.json`` (students), ``RUNS_DIR/teacher_eval/results.json``
(the teacher at the labelling protocol), the teacher's own eval beside its checkpoint
(``eval_val_*/results.json``, from experiments/sseg_camvid) when there, the store's
``store.json`` (how much of train it labelled, its class histogram) and ``times.tsv``.
Writes ``OUT_DIR/results.json`` and ``OUT_DIR/results.md``.
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


def collect(runs: Path, teacher: Path, seeds: list[int]) -> dict:
    students = [read(runs / f"seed{s}" / "eval" / "results.json") for s in seeds]
    at_label = read(runs / "teacher_eval" / "results.json")
    own = sorted(teacher.parent.glob("eval_val_*/results.json"))
    store = json.loads((runs / "store_sseg" / "store.json").read_text())
    times: dict[str, float] = {}  # a KEEP=1 rerun appends a shorter total: keep the longest of each stage
    for line in (runs / "times.tsv").read_text().splitlines():
        if "\t" in line:
            name, sec = line.split("\t")[:2]
            times[name] = max(times.get(name, 0.0), float(sec))
    gains = [r["mIoU"] - at_label["mIoU"] for r in students]
    return {"experiment": "S-Seg+ self-training on CamVid: the S-Seg (DINOv2-S, seed 0) of experiments/sseg_camvid "
                          "labels CamVid train; a small segmenter from scratch learns those labels; CamVid val",
            "seeds": seeds, "teacher": str(teacher),
            "teacher_at_labelling_protocol": {"mIoU": at_label["mIoU"], "protocol": at_label["protocol"],
                                              "per_class": at_label["per_class"]},
            "teacher_own_eval": {"mIoU": read(own[0])["mIoU"], "protocol": read(own[0])["protocol"]} if own else None,
            "student": {"mIoU": stats([r["mIoU"] for r in students]), "pAcc": stats([r["pAcc"] for r in students]),
                        "per_seed": [{"seed": s, "mIoU": r["mIoU"], "pAcc": r["pAcc"], "per_class": r["per_class"]}
                                     for s, r in zip(seeds, students)],
                        "protocol": students[0]["protocol"]},
            "gain_over_teacher": stats(gains),
            "store": {k: store[k] for k in ("counts", "histogram", "inference", "min_confidence") if k in store},
            "pseudo_label_quality": json.loads((runs / "label_quality.json").read_text())
            if (runs / "label_quality.json").is_file() else None,
            "stage_seconds": times, "cpu_count": os.cpu_count()}


def markdown(res: dict) -> str:
    st, t, seeds = res["student"], res["teacher_at_labelling_protocol"], res["seeds"]
    wall = res["stage_seconds"].get("total")
    p = st["protocol"]
    md = ["# Self-training on CamVid: the student vs its teacher", "",
          f"Produced by `experiments/selftrain_camvid/run.sh` ({len(seeds)} seeds"
          + (f", {wall / 60:.1f} min on {res['cpu_count']} CPU cores)." if wall else ")."), "",
          "CamVid val, all 101 images, 11 classes. CPU figures: other machines round differently.", "",
          "| model | protocol | mIoU | " + " | ".join(f"seed {s}" for s in seeds) + " |",
          "|:---|:---|---:|" + "---:|" * len(seeds),
          f"| teacher: S-Seg, DINOv2-S (seed 0) | slide, short side {t['protocol']['short_side']}, 224-px windows "
          f"(the labelling protocol) | {t['mIoU']:.2f} | " + " | ".join("" for _ in seeds) + " |"]
    own = res["teacher_own_eval"]
    if own:
        md.append(f"| teacher, its own eval (experiments/sseg_camvid) | slide, short side "
                  f"{own['protocol']['short_side']} | {own['mIoU']:.2f} | " + " | ".join("" for _ in seeds) + " |")
    md.append(f"| student: tiny FPN from scratch on the pseudo-labels | {p['name']}, short side {p['short_side']} | "
              f"**{fmt(st['mIoU'])}** | " + " | ".join(f"{r['mIoU']:.2f}" for r in st["per_seed"]) + " |")
    g = res["gain_over_teacher"]
    md += ["", f"Student − teacher (labelling protocol): **{g['mean']:+.2f} ± {g['std']:.2f}** mIoU "
           f"({g['min']:+.2f} … {g['max']:+.2f}). "
           + ("The student beats its teacher." if g["mean"] > 0 else "The student does not beat its teacher; "
              "see NOTES.md for what limits it."), ""]
    classes = list(t["per_class"])
    md += ["Per-class IoU:", "", "| | " + " | ".join(classes) + " |", "|:---|" + "---:|" * len(classes),
           "| teacher | " + " | ".join(f"{(t['per_class'][c] or 0):.1f}" for c in classes) + " |",
           "| student (mean) | " + " | ".join(
               f"{statistics.fmean(r['per_class'][c] or 0.0 for r in st['per_seed']):.1f}" for c in classes) + " |", ""]
    q = res["pseudo_label_quality"]
    if q:
        md += ["Pseudo-labels of CamVid train against its ground truth (`label_quality.py`, analysis only):", "",
               "| confidence ≥ | pixels kept | mIoU | pAcc |", "|---:|---:|---:|---:|"]
        md += [f"| {k.split('>=')[1]} | {100 * v['kept']:.1f} % | {v['mIoU']:.2f} | {v['pAcc']:.2f} |"
               for k, v in q.items() if k.startswith("confidence")]
        md.append("")
    counts = res["store"].get("counts", {})
    md += [f"Pseudo-labels: {counts.get('images', '?')} train images labelled. Stage times (s): "
           + ", ".join(f"{k} {v:.0f}" for k, v in res["stage_seconds"].items()), ""]
    return "\n".join(md)


def main(argv: list[str]) -> int:
    runs, out, teacher, seeds = Path(argv[0]), Path(argv[1]), Path(argv[2]), [int(s) for s in argv[3:]]
    res = collect(runs, teacher, seeds)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=2) + "\n")
    md = markdown(res)
    (out / "results.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
