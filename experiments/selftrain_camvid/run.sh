#!/usr/bin/env bash
# Self-training (S-Seg+) on CamVid: the S-Seg of experiments/sseg_camvid (DINOv2-S, seed 0)
# labels CamVid train (its class names; the train labels are never read), a small segmenter
# is trained from scratch on those pseudo-labels (3 seeds), and CamVid val scores both.
#
#   experiments/sseg_camvid/run.sh                  # first: the teacher (or SEEDS=0 for one seed)
#   experiments/selftrain_camvid/run.sh             # about 28 min on 2 CPU cores
#
# Steps
#   1. labelless selftrain label --dataset camvid --split train --pretrained TEACHER
#        --protocol slide --short-side 448 --input-size 224 --stride 149 --templates "a photo of {}"
#        -> RUNS/store_sseg   (the teacher's windows; short side 448 rather than its eval's 560
#                              to halve the labelling time; its val score at 448 is measured too)
#   2. per seed S (JOBS at a time): labelless train selftrain --config student.yaml seed=S
#        store=RUNS/store_sseg -> RUNS/seedS/model.pt
#   3. labelless eval of every student on CamVid val, protocol whole at the native 360x480
#      (--short-side 360); of the teacher at 448 (the labelling protocol; its 560 figure comes
#      from experiments/sseg_camvid)
#   4. label_quality.py: the pseudo-labels' mIoU against the train ground truth (read for this
#      analysis only), by confidence threshold -> RUNS/label_quality.json
#   5. summarize.py -> results.json, results.md (student vs teacher, mean ± std, gain)
#
# Env: PY, LABELLESS_DATA, RUNS (default experiments/selftrain_camvid/runs, git-ignored),
#      TEACHER (default experiments/sseg_camvid/runs/seed0/dinov2s/model.pt), SEEDS ("0 1 2"),
#      JOBS (2), THREADS (1 per job), LABEL_THREADS (2), KEEP=1 keeps finished stages,
#      TRAIN_OVERRIDES (e.g. "max_steps=5" for a smoke test), MAX_IMAGES (label only N images).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
EXP=$REPO/experiments/selftrain_camvid
PY=${PY:-$REPO/.venv/bin/python}
DATA=${LABELLESS_DATA:-$REPO/../shared/data}
CAMVID=$(cd "$DATA/camvid" 2>/dev/null && pwd || echo "$DATA/camvid")
RUNS=${RUNS:-$EXP/runs}
TEACHER=${TEACHER:-$REPO/experiments/sseg_camvid/runs/seed0/dinov2s/model.pt}
SEEDS=${SEEDS:-"0 1 2"}
JOBS=${JOBS:-2}
THREADS=${THREADS:-1}
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
[ -f "$CAMVID/train.txt" ] || { echo "CamVid not found at $CAMVID (set LABELLESS_DATA)" >&2; exit 2; }
[ -f "$TEACHER" ] || { echo "no teacher at $TEACHER: run experiments/sseg_camvid/run.sh first (or set TEACHER)" >&2; exit 2; }
cd "$REPO"
LL=("$PY" -m labelless)
mkdir -p "$RUNS"
RUNS=$(cd "$RUNS" && pwd)
if [ "${KEEP:-0}" != 1 ]; then rm -rf "$RUNS"/seed* "$RUNS/store_sseg" "$RUNS/store_sseg.done" "$RUNS/teacher_eval" "$RUNS/times.tsv"; fi
elapsed() { awk "BEGIN{printf \"%.1f\", $(date +%s.%N) - $1}"; }
stage() {  # stage NAME LOG DONE_FILE command...
  local name=$1 log=$2 done=$3 t; shift 3
  if [ "${KEEP:-0}" = 1 ] && [ -f "$done" ]; then return 0; fi
  t=$(date +%s.%N)
  "$@" > "$log" 2>&1 || { echo "$name failed, see $log" >&2; tail -5 "$log" >&2; return 1; }
  printf '%s\t%s\n' "$name" "$(elapsed "$t")" >> "$RUNS/times.tsv"
  echo "[$name] done ($(elapsed "$t") s)"
}
T0=$(date +%s.%N)
TEACH=(--protocol slide --short-side 448 --input-size 224 --stride 149 --templates "a photo of {}" --device cpu)
max=()
[ -n "${MAX_IMAGES:-}" ] && max=(--max-images "$MAX_IMAGES")
OMP_NUM_THREADS=${LABEL_THREADS:-2} MKL_NUM_THREADS=${LABEL_THREADS:-2} stage label "$RUNS/label.log" \
  "$RUNS/store_sseg.done" "${LL[@]}" selftrain label --dataset camvid --data-root "$CAMVID" \
  --split train --pretrained "$TEACHER" "${TEACH[@]}" "${max[@]}" --out "$RUNS/store_sseg"
touch "$RUNS/store_sseg.done"
# the pseudo-labels against the train ground truth (analysis only; nothing trains on it)
"$PY" "$EXP/label_quality.py" "$RUNS/store_sseg" "$CAMVID" "$RUNS/label_quality.json" > "$RUNS/label_quality.log"

one() {
  local s=$1 d=$RUNS/seed$1
  mkdir -p "$d"
  # shellcheck disable=SC2086
  stage "train_seed$s" "$d/train.log" "$d/model.pt" "${LL[@]}" train selftrain --config "$EXP/student.yaml" \
    seed="$s" run_dir="$d" data_root="$CAMVID" store="$RUNS/store_sseg" ${TRAIN_OVERRIDES:-}
  stage "eval_seed$s" "$d/eval.log" "$d/eval/results.json" "${LL[@]}" eval --dataset camvid --data-root "$CAMVID" \
    --split val --pretrained "$d/model.pt" --protocol whole --short-side 360 --device cpu --out "$d/eval"
}
fail=0
for s in $SEEDS; do
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || fail=1; done
  one "$s" &
done
# the teacher at the labelling protocol, beside the students
stage teacher_eval "$RUNS/teacher_eval.log" "$RUNS/teacher_eval/results.json" "${LL[@]}" eval --dataset camvid \
  --data-root "$CAMVID" --split val --pretrained "$TEACHER" "${TEACH[@]}" --out "$RUNS/teacher_eval" || fail=1
while [ "$(jobs -rp | wc -l)" -gt 0 ]; do wait -n || fail=1; done
[ "$fail" = 0 ] || { echo "a run failed" >&2; exit 1; }
printf 'total\t%s\n' "$(elapsed "$T0")" >> "$RUNS/times.tsv"
# shellcheck disable=SC2086
"$PY" "$EXP/summarize.py" "$RUNS" "$EXP" "$TEACHER" $SEEDS
