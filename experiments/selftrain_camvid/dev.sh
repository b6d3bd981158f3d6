#!/usr/bin/env bash
# The choice of the student, on the dev split of CamVid's training images (no val image is
# read): the S-Seg teacher labels CamVid train; students train on the labels of devtrain
# (train sequences 0006R0 + 0016E5, 305 images) and are scored against the ground truth of dev
# (train sequence 0001TP, 62 images), beside the teacher on dev. One seed (0): a coarse choice.
#
#   experiments/selftrain_camvid/dev.sh     # about 45 min on 2 CPU cores (shared with other jobs when measured)
#
# Candidates (name: config + overrides):
#   tiny1500   student.yaml                   tiny FPN from scratch, 1,500 steps (the first student)
#   tiny750    student.yaml max_steps=750     the same, half the steps
#   dino_lin   student_dinov2s.yaml head=linear amp=none  frozen DINOv2-S + linear head, 300 steps
#   dino_fpn   student_dinov2s.yaml head=fpn amp=none     frozen DINOv2-S + FPN head, 300 steps
#   dino_fpn_bf16  student_dinov2s.yaml (head=fpn amp=bf16: bf16 autocast; the frozen ViT runs
#              2.4x faster on this CPU, which has native bf16) -- the chosen student
# The devtrain store is the train store's labels of those images under a store.json that names
# split devtrain: a pseudo-label depends on its image only (labelless.selftrain.label), so it
# equals labelling devtrain alone.
# Output: RUNS/dev/<name>/eval/results.json; dev_results.{json,md} here (the table, beside this script).
# Env: as run.sh (PY, LABELLESS_DATA, DINO, RUNS, JOBS, THREADS, LABEL_PROCS, LABEL_THREADS, KEEP, TRAIN_OVERRIDES).
TEACHERS=sseg
source "$(dirname "$0")/common.sh"
D=$RUNS/dev
[ "${KEEP:-0}" = 1 ] || rm -rf "$D"
mkdir -p "$D"
label sseg train "$D/store_train"
rm -rf "$D/store_devtrain"; mkdir -p "$D/store_devtrain"
ln -s "$D/store_train/labels" "$D/store_train/confidence" "$D/store_devtrain/"
"$PY" - "$D/store_train/store.json" "$D/store_devtrain/store.json" <<'PYEOF'
import json, sys
meta = json.load(open(sys.argv[1]))
meta["split"] = "devtrain"
json.dump(meta, open(sys.argv[2], "w"), indent=1)
PYEOF

declare -A CONFIG=([tiny1500]=student.yaml [tiny750]=student.yaml [dino_lin]=student_dinov2s.yaml
                   [dino_fpn]=student_dinov2s.yaml [dino_fpn_bf16]=student_dinov2s.yaml)
declare -A OVERRIDES=([tiny1500]="" [tiny750]="max_steps=750" [dino_lin]="head=linear amp=none"
                   [dino_fpn]="head=fpn amp=none" [dino_fpn_bf16]="")
NAMES="dino_lin dino_fpn dino_fpn_bf16 tiny1500 tiny750"
fail=0
for n in $NAMES; do
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || fail=1; done
  TRAIN_OVERRIDES="${OVERRIDES[$n]} ${TRAIN_OVERRIDES:-}" \
    student "$D/$n" "$EXP/${CONFIG[$n]}" "$D/store_devtrain" devtrain dev 0 &
done
inference sseg
stage "$D" teacher_eval "$D/teacher_eval/results.json" "${LL[@]}" eval --dataset camvid --data-root "$CV" \
  --split dev --pretrained "${CKPT[sseg]}" "${INF[@]}" --out "$D/teacher_eval" || fail=1
while [ "$(jobs -rp | wc -l)" -gt 0 ]; do wait -n || fail=1; done
[ "$fail" = 0 ] || { echo "a run failed" >&2; exit 1; }

"$PY" - "$D" "$EXP" $NAMES <<'PYEOF'
import json, sys
from pathlib import Path
d, out, names = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
def row(n, sub):
    r = json.loads((d / sub / "results.json").read_text())
    t = {}
    for line in (d / n / "times.tsv").read_text().splitlines() if (d / n / "times.tsv").is_file() else []:
        k, v = line.split("\t")[:2]
        t[k] = float(v)
    return {"name": n, "mIoU": r["mIoU"], "images": r["num_images"], "train_s": t.get("train"), "eval_s": t.get("eval")}
rows = [row("teacher", "teacher_eval")] + [row(n, f"{n}/eval") for n in names]
(out / "dev_results.json").write_text(json.dumps(rows, indent=1) + "\n")
lines = ["| model | dev mIoU | train s | eval s |", "|:---|---:|---:|---:|"]
lines += [f"| {r['name']} | {r['mIoU']:.2f} | {r['train_s'] or ''} | {r['eval_s'] or ''} |" for r in rows]
(out / "dev_results.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PYEOF
