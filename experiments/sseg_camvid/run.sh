#!/usr/bin/env bash
# Learning evidence for S-Seg on real images: S-Seg trained on CamVid train crops with class-name
# captions (the labels make the captions and nothing else) and DINOv2-S k-means pseudo-masks,
# scored on CamVid val; two backbones (the real DINOv2-S, frozen; a small conv net from
# scratch), 3 seeds. Settings were chosen on a dev split of the training images (dev.sh, NOTES.md).
#
#   experiments/sseg_camvid/run.sh                 # seeds 0 1 2, both backbones (about 40 min on 2 CPU cores)
#   SEEDS="0" experiments/sseg_camvid/run.sh
#
# Steps
#   1. RUNS/camvid: a CamVid folder with its list files (common.sh).
#   2. one feature cache of CamVid train, shared by every seed and both backbones:
#        labelless train sseg-cache --config train.yaml model=<DINOv2-S json> split=train -> RUNS/cache_train
#      (crops, captions "a photo of <classes of the crop>", frozen DINOv2-S tokens, pseudo-masks =
#      cosine k-means, K = 8, of those tokens). The DINOv2-S model trains on the cached tokens;
#      the small backbone on the cached crops (images) and the same pseudo-masks.
#   3. per seed S and backbone B (JOBS jobs at a time, THREADS torch threads each; the seed sets
#      the initialisation and the order of the crops):
#        labelless train sseg --config train.yaml model=<B json> seed=S data=cache -> RUNS/seedS/B/model.pt
#        labelless eval (protocol below)                          -> RUNS/seedS/B/eval_val_560/results.json
#        diagnose.py (same windows: labels, mask vote, mask oracle, pseudo-mask oracle; first
#                     seed only)                                  -> RUNS/seedS/B/diagnose.json
#   4. summarize.py -> experiments/sseg_camvid/results.json, results.md
#
# Evaluation (both backbones, every seed, all 101 val images): mask classification (MaskFormer
# semantic inference), slide protocol: image resized to short side 560, 224-px windows at
# stride 149, one template "a photo of {}" (the caption template of the training):
#   labelless eval --dataset camvid --split val --protocol slide --short-side 560 --input-size 224
#                  --stride 149 --templates "a photo of {}"
#
# Env: PY (python, default .venv/bin/python), LABELLESS_DATA (folder holding camvid/, default
#      ../shared/data), DINO (DINOv2-S folder, default ../shared/weights/dinov2-small), RUNS (run
#      folder, default experiments/sseg_camvid/runs, git-ignored), SEEDS (default "0 1 2"),
#      JOBS (jobs at a time, default 2), THREADS (torch threads per job, default 1),
#      CACHE_THREADS (for the cache, default 2), KEEP=1 to keep finished stages (and the cache)
#      instead of starting fresh, TRAIN_OVERRIDES (extra key=value for both trainings, e.g. a
#      smoke test: TRAIN_OVERRIDES="max_steps=5"), SHORT_SIDE / STRIDE (eval, default 560 / 149),
#      BACKBONES (default "dinov2s small"), DIAGNOSE (0 skips diagnose.py; default 1). The
#      self-training teacher alone: SEEDS=0 BACKBONES=dinov2s DIAGNOSE=0 JOBS=1 THREADS=2. SUMMARIZE=0
#      leaves results.json / results.md as they are (experiments/compare_camvid borrows a model).
source "$(dirname "$0")/common.sh"
SEEDS=${SEEDS:-"0 1 2"}
SHORT_SIDE=${SHORT_SIDE:-560}
export JOBS THREADS
if [ "${KEEP:-0}" != 1 ]; then
  for s in $SEEDS; do rm -rf "$RUNS/seed$s"; done
  rm -rf "$RUNS/cache_train"
  rm -f "$RUNS/times.tsv"
fi
T0=$(date +%s.%N)

t=$(date +%s.%N)
cache train "$RUNS/cache_train"
printf 'cache\t%s\n' "$(elapsed "$t")" >> "$RUNS/times.tsv"

one_run() {  # one_run SEED BACKBONE: train, eval, diagnose
  local s=$1 b=$2 d=$RUNS/seed$1/$2
  local dino_arg=()
  [ "$b" = dinov2s ] && dino_arg=(--dino "$DINO")  # pseudo-mask oracle: the model's own ViT, no extra cost
  # shellcheck disable=SC2086
  stage "$d" train "$d/model.pt" "${LL[@]}" train sseg --config "$EXP/train.yaml" model="$RUNS/model_$b.json" \
    seed="$s" run_dir="$d" data=cache cache="$RUNS/cache_train" ${TRAIN_OVERRIDES:-}
  evaluate "$d" "$d/model.pt" val "$SHORT_SIDE"
  [ "$s" = "${SEEDS%% *}" ] && [ "${DIAGNOSE:-1}" != 0 ] || return 0  # the diagnosis on the first seed only (the 40-min budget)
  stage "$d" diagnose "$d/diagnose.json" "$PY" "$EXP/diagnose.py" --checkpoint "$d/model.pt" --data-root "$CV" \
    --split val --short-side "$SHORT_SIDE" --input-size 224 --stride "${STRIDE:-149}" --templates "a photo of {}" \
    "${dino_arg[@]}" --k 8 --out "$d/diagnose.json"
}

# the long DINOv2-S runs first, then the small ones (JOBS at a time)
fail=0
for b in ${BACKBONES:-dinov2s small}; do
  for s in $SEEDS; do
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || fail=1; done
    one_run "$s" "$b" &
  done
done
while [ "$(jobs -rp | wc -l)" -gt 0 ]; do wait -n || fail=1; done
[ "$fail" = 0 ] || { echo "a run failed" >&2; exit 1; }
printf 'total\t%s\n' "$(elapsed "$T0")" >> "$RUNS/times.tsv"

# shellcheck disable=SC2086
[ "${SUMMARIZE:-1}" = 0 ] || "$PY" "$EXP/summarize.py" "$RUNS" "$EXP" $SEEDS  # SUMMARIZE=0: another experiment borrows the runs
