#!/usr/bin/env bash
# Self-training (S-Seg+) on CamVid, for two teachers: the S-Seg of experiments/sseg_camvid
# (DINOv2-S, seed 0) and the PixelCLIP-tuned tiny CLIP of experiments/pixelclip_camvid
# (seed 0). Each labels CamVid train (its class names; the train labels are never read), a
# small segmenter is trained from scratch on those pseudo-labels (3 seeds), and CamVid val
# scores teacher and students.
#
#   experiments/sseg_camvid/run.sh; experiments/pixelclip_camvid/run.sh   # first: the teachers
#   experiments/selftrain_camvid/run.sh             # about 35 min on 2 CPU cores (both teachers)
#   TEACHERS=sseg experiments/selftrain_camvid/run.sh
#
# Per teacher T (RUNS/T/):
#   1. labelless selftrain label --dataset camvid --split train --pretrained TEACHER <its protocol>
#        -> RUNS/T/store. S-Seg: slide, short side 448 (its eval's 560 would double the time),
#        224-px windows, stride 149; PixelCLIP: its eval protocol (--mode pixelclip, slide,
#        short side 96, 64-px windows, stride 32). Template "a photo of {}" for both.
#   2. label_quality.py: the pseudo-labels' mIoU against the train ground truth (read for this
#      analysis only), by confidence threshold -> RUNS/T/label_quality.json
#   3. per seed S (JOBS at a time): labelless train selftrain --config student.yaml seed=S
#        store=RUNS/T/store -> RUNS/T/seedS/model.pt; labelless eval on CamVid val, protocol
#        whole at the native 360x480 (--short-side 360) -> RUNS/T/seedS/eval/
#   4. labelless eval of the teacher at its labelling protocol -> RUNS/T/teacher_eval/
# Then summarize.py -> results.json, results.md (students vs teachers, mean ± std, gain).
#
# Env: PY, LABELLESS_DATA, RUNS (default experiments/selftrain_camvid/runs, git-ignored),
#      TEACHERS ("sseg pixelclip"; a teacher whose checkpoint is missing stops the run),
#      SSEG_TEACHER (default experiments/sseg_camvid/runs/seed0/dinov2s/model.pt),
#      PIXELCLIP_TEACHER (default experiments/pixelclip_camvid/runs/seed0/pixelclip/clip.pt),
#      SEEDS ("0 1 2"), JOBS (2), THREADS (1 per job), LABEL_THREADS (2), KEEP=1 keeps
#      finished stages, TRAIN_OVERRIDES (e.g. "max_steps=5"), MAX_IMAGES (label only N images).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
EXP=$REPO/experiments/selftrain_camvid
PY=${PY:-$REPO/.venv/bin/python}
DATA=${LABELLESS_DATA:-$REPO/../shared/data}
CAMVID=$(cd "$DATA/camvid" 2>/dev/null && pwd || echo "$DATA/camvid")
RUNS=${RUNS:-$EXP/runs}
TEACHERS=${TEACHERS:-"sseg pixelclip"}
declare -A CKPT=([sseg]=${SSEG_TEACHER:-$REPO/experiments/sseg_camvid/runs/seed0/dinov2s/model.pt}
                 [pixelclip]=${PIXELCLIP_TEACHER:-$REPO/experiments/pixelclip_camvid/runs/seed0/pixelclip/clip.pt})
declare -A PROTOCOL=([sseg]="--protocol slide --short-side 448 --input-size 224 --stride 149"
                     [pixelclip]="--mode pixelclip --protocol slide --short-side 96 --input-size 64 --stride 32")
SEEDS=${SEEDS:-"0 1 2"}
JOBS=${JOBS:-2}
THREADS=${THREADS:-1}
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
[ -f "$CAMVID/train.txt" ] || { echo "CamVid not found at $CAMVID (set LABELLESS_DATA)" >&2; exit 2; }
for t in $TEACHERS; do
  [ -f "${CKPT[$t]}" ] || { echo "no $t teacher at ${CKPT[$t]}: run experiments/${t}_camvid/run.sh first" >&2; exit 2; }
done
cd "$REPO"
LL=("$PY" -m labelless)
mkdir -p "$RUNS"
RUNS=$(cd "$RUNS" && pwd)
if [ "${KEEP:-0}" != 1 ]; then for t in $TEACHERS; do rm -rf "${RUNS:?}/$t"; done; rm -f "$RUNS/times.tsv"; fi
# shellcheck source=../stage.sh
source "$REPO/experiments/stage.sh"  # elapsed, stage
T0=$(date +%s.%N)
max=()
[ -n "${MAX_IMAGES:-}" ] && max=(--max-images "$MAX_IMAGES")

student() {  # student TEACHER SEED: train on the teacher's store, score val
  local t=$1 s=$2 d=$RUNS/$1/seed$2
  # shellcheck disable=SC2086
  stage "$d" train "$d/model.pt" "${LL[@]}" train selftrain --config "$EXP/student.yaml" seed="$s" run_dir="$d" \
    data_root="$CAMVID" store="$RUNS/$t/store" ${TRAIN_OVERRIDES:-}
  stage "$d" eval "$d/eval/results.json" "${LL[@]}" eval --dataset camvid --data-root "$CAMVID" --split val \
    --pretrained "$d/model.pt" --protocol whole --short-side 360 --device cpu --out "$d/eval"
}

fail=0
for t in $TEACHERS; do
  # shellcheck disable=SC2206
  inf=(${PROTOCOL[$t]} --templates "a photo of {}" --device cpu)
  OMP_NUM_THREADS=${LABEL_THREADS:-2} MKL_NUM_THREADS=${LABEL_THREADS:-2} stage "$RUNS/$t" label \
    "$RUNS/$t/store.done" "${LL[@]}" selftrain label --dataset camvid --data-root "$CAMVID" --split train \
    --pretrained "${CKPT[$t]}" "${inf[@]}" "${max[@]}" --out "$RUNS/$t/store"
  touch "$RUNS/$t/store.done"
  # the pseudo-labels against the train ground truth (analysis only; nothing trains on it)
  "$PY" "$EXP/label_quality.py" "$RUNS/$t/store" "$CAMVID" "$RUNS/$t/label_quality.json" > "$RUNS/$t/label_quality.log"
  for s in $SEEDS; do
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || fail=1; done
    student "$t" "$s" &
  done
  stage "$RUNS/$t" teacher_eval "$RUNS/$t/teacher_eval/results.json" "${LL[@]}" eval --dataset camvid \
    --data-root "$CAMVID" --split val --pretrained "${CKPT[$t]}" "${inf[@]}" --out "$RUNS/$t/teacher_eval" || fail=1
done
while [ "$(jobs -rp | wc -l)" -gt 0 ]; do wait -n || fail=1; done
[ "$fail" = 0 ] || { echo "a run failed" >&2; exit 1; }
printf 'total\t%s\n' "$(elapsed "$T0")" >> "$RUNS/times.tsv"
# shellcheck disable=SC2086
"$PY" "$EXP/summarize.py" "$RUNS" "$EXP" "$SEEDS" $TEACHERS
