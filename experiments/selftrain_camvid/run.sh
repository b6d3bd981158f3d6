#!/usr/bin/env bash
# Self-training (S-Seg+) on CamVid, for two teachers: the S-Seg of experiments/sseg_camvid
# (DINOv2-S, seed 0) and the PixelCLIP-tuned tiny CLIP of experiments/pixelclip_camvid
# (seed 0). Each labels CamVid train (its class names; the train labels are never read), a
# student (student_dinov2s.yaml: frozen DINOv2-S + FPN head, chosen on the dev split by
# dev.sh) is trained on those pseudo-labels (3 seeds), and CamVid val scores teacher and students.
#
#   experiments/sseg_camvid/run.sh; experiments/pixelclip_camvid/run.sh   # first: the teachers
#     (only the models are needed: SEEDS=0 BACKBONES=dinov2s DIAGNOSE=0 SUMMARIZE=0 for the first,
#      SEEDS=0 JOBS=1 SUMMARIZE=0 for the second)
#   experiments/selftrain_camvid/run.sh             # under 30 min on 2 CPU cores (both teachers)
#   TEACHERS=sseg experiments/selftrain_camvid/run.sh
#
# Stages (RUNS/T/ per teacher T):
#   1. per teacher: labelless selftrain label --dataset camvid --split train --pretrained TEACHER
#        <its protocol>, sharded over LABEL_PROCS torchrun processes -> RUNS/T/store. S-Seg:
#        slide, short side 448 (its eval's 560 would double the time), 224-px windows, stride
#        149; PixelCLIP: its eval protocol (--mode pixelclip, slide, short side 96, 64-px windows,
#        stride 32). Template "a photo of {}" for both. Then label_quality.py: the labels' mIoU
#        against the train ground truth (read for this analysis only), by confidence threshold
#        -> RUNS/T/label_quality.json
#   2. JOBS at a time: per teacher and seed S, labelless train selftrain --config STUDENT seed=S
#        store=RUNS/T/store -> RUNS/T/seedS/model.pt and labelless eval on CamVid val, protocol
#        whole at the native 360x480 (--short-side 360) -> RUNS/T/seedS/eval/; per teacher,
#        labelless eval of the teacher at its labelling protocol -> RUNS/T/teacher_eval/
# Then summarize.py -> results.json, results.md (students vs teachers, mean ± std, gain).
#
# Env: PY, LABELLESS_DATA, DINO (DINOv2-S folder, default ../shared/weights/dinov2-small),
#      RUNS (default experiments/selftrain_camvid/runs, git-ignored),
#      TEACHERS ("sseg pixelclip"; a teacher whose checkpoint is missing stops the run),
#      SSEG_TEACHER (default experiments/sseg_camvid/runs/seed0/dinov2s/model.pt),
#      PIXELCLIP_TEACHER (default experiments/pixelclip_camvid/runs/seed0/pixelclip/clip.pt),
#      STUDENT (default student_dinov2s.yaml; student.yaml: the tiny FPN from scratch),
#      SEEDS ("0 1 2"), JOBS (2), THREADS (1 per job), LABEL_PROCS (2), LABEL_THREADS (1 per
#      process), KEEP=1 keeps finished stages, TRAIN_OVERRIDES (e.g. "max_steps=5"),
#      MAX_IMAGES (label only N images).
source "$(dirname "$0")/common.sh"
SEEDS=${SEEDS:-"0 1 2"}
STUDENT=${STUDENT:-$EXP/student_dinov2s.yaml}
if [ "${KEEP:-0}" != 1 ]; then for t in $TEACHERS; do rm -rf "${RUNS:?}/$t"; done; rm -f "$RUNS/times.tsv"; fi
T0=$(date +%s.%N)

# 1. every teacher labels CamVid train (both cores, LABEL_PROCS processes);
#    the labels' quality against the train ground truth (analysis only; nothing trains on it)
for t in $TEACHERS; do
  label "$t" train "$RUNS/$t/store"
  "$PY" "$EXP/label_quality.py" "$RUNS/$t/store" "$CV" "$RUNS/$t/label_quality.json" > "$RUNS/$t/label_quality.log"
done
# 2. students and the teachers' own val scores, JOBS at a time
fail=0
queue() { while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || fail=1; done; "$@" & }
teacher_eval() {
  inference "$1"
  stage "$RUNS/$1" teacher_eval "$RUNS/$1/teacher_eval/results.json" "${LL[@]}" eval --dataset camvid \
    --data-root "$CV" --split val --pretrained "${CKPT[$1]}" "${INF[@]}" --out "$RUNS/$1/teacher_eval"
}
for t in $TEACHERS; do
  for s in $SEEDS; do queue student "$RUNS/$t/seed$s" "$STUDENT" "$RUNS/$t/store" train val "$s"; done
  queue teacher_eval "$t"
done
while [ "$(jobs -rp | wc -l)" -gt 0 ]; do wait -n || fail=1; done
[ "$fail" = 0 ] || { echo "a run failed" >&2; exit 1; }
printf 'total\t%s\n' "$(elapsed "$T0")" >> "$RUNS/times.tsv"
# shellcheck disable=SC2086
"$PY" "$EXP/summarize.py" "$RUNS" "$EXP" "$SEEDS" $TEACHERS
