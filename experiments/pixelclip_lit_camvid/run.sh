#!/usr/bin/env bash
# Learning evidence on CamVid val with settings chosen on the dev split (dev.sh, NOTES.md):
# for each model of MODELS (common.sh: tiny = the tiny CLIP of ../pixelclip_camvid, lit = LiT
# DINOv2-S at 112 px) and each seed of SEEDS: the base CLIP trained on all of CamVid train,
# scored on val; PixelCLIP-tuned on the DINO k-means masks of the train images (no labels) with
# the chosen setting, scored on val once; the teacher's mask-level bound (ceiling.py on the val
# masks). summarize.py writes results.json / results.md (paired gains mean ± std over seeds).
#
#   experiments/pixelclip_lit_camvid/run.sh                     # 5 seeds, both models
#   SEEDS="0 1" MODELS=lit experiments/pixelclip_lit_camvid/run.sh
#   LIT_CLIP="max_steps=5" LIT_PC="max_steps=2" TINY_CLIP="max_steps=5" TINY_PC="max_steps=2" \
#     SEEDS=0 RUNS=/tmp/smoke OUT=/tmp/smoke experiments/pixelclip_lit_camvid/run.sh   # smoke run
#
# TINY_CHOICE / LIT_CHOICE: the PixelCLIP keys chosen on dev (defaults below, from NOTES.md).
# Env: common.sh's, SEEDS (default 0 1 2 3 4), MODELS (default "tiny lit"), CEILING=0 to skip
# the bound, OUT (where results.json / .md go, default this folder; a smoke run: OUT=RUNS).
# Runs JOBS (seed, model) pairs side by side; the LiT feature cache of the train crops (built once
# for every seed) is one job of that pool, the lit runs wait for it.
source "$(dirname "$0")/common.sh"
SEEDS=${SEEDS:-"0 1 2 3 4"}
MODELS=${MODELS:-"tiny lit"}
TINY_CHOICE=${TINY_CHOICE:-"clip_lr_mult=0.1"}  # dev: x0.1 +0.40, x0.01 +0.04, x1 -0.50 (NOTES.md)
LIT_CHOICE=${LIT_CHOICE:-"clip_lr_mult=0.001"}  # dev: x0.001 -0.01, x0.01 -0.41, paper -0.55 (NOTES.md)
if [ "${KEEP:-0}" != 1 ]; then
  for m in $MODELS; do for s in $SEEDS; do rm -rf "$RUNS/$m/seed$s"; done; done
  rm -f "$RUNS/times.tsv"
fi
T0=$(date +%s.%N)
t=$(date +%s.%N)
masks
printf 'masks\t%s\n' "$(elapsed "$t")" >> "$RUNS/times.tsv"
# the locked DINOv2-S's features of the train crops, once for every seed: one job of the pool (the
# first tiny seed trains beside it); the lit seeds wait for RUNS/lit_cache.ok
rm -f "$RUNS/lit_cache.ok" "$RUNS/lit_cache.failed"
if [[ " $MODELS " == *" lit "* ]]; then
  (
    t=$(date +%s.%N)
    if lit_cache train; then touch "$RUNS/lit_cache.ok"; else touch "$RUNS/lit_cache.failed"; exit 1; fi
    printf 'lit_cache\t%s\n' "$(elapsed "$t")" >> "$RUNS/times.tsv"
  ) &
fi
wait_cache() {
  until [ -e "$RUNS/lit_cache.ok" ]; do
    [ -e "$RUNS/lit_cache.failed" ] && { echo "the LiT feature cache failed" >&2; return 1; }
    sleep 2
  done
}

one() {  # one MODEL SEED
  local m=$1 s=$2 d=$RUNS/$1/seed$2 clip_extra pc_extra choice
  case $m in
    tiny) clip_extra=${TINY_CLIP:-}; pc_extra=${TINY_PC:-}; choice=$TINY_CHOICE ;;
    lit)  clip_extra=${LIT_CLIP:-};  pc_extra=${LIT_PC:-};  choice=$LIT_CHOICE ;;
  esac
  if [ "$m" = lit ]; then wait_cache; fi
  # shellcheck disable=SC2086
  base "$m" "$d" train "$s" $clip_extra
  evaluate "$m" "$d" eval_base "$d/clip/clip.pt" val
  # shellcheck disable=SC2086
  tune "$m" "$d" "$d/clip/clip.pt" "$RUNS/masks_train" "$s" $choice $pc_extra
  evaluate "$m" "$d" eval_tuned "$d/pixelclip/clip.pt" val
  if [ "${CEILING:-1}" = 1 ]; then ceiling "$m" "$d" val "$RUNS/masks_val"; fi
}
fail=0
for s in $SEEDS; do
  for m in $MODELS; do
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || fail=1; done
    one "$m" "$s" &
  done
done
while [ "$(jobs -rp | wc -l)" -gt 0 ]; do wait -n || fail=1; done
[ "$fail" = 0 ] || { echo "a run failed" >&2; exit 1; }
printf 'total\t%s\n' "$(elapsed "$T0")" >> "$RUNS/times.tsv"
"$PY" "$EXP/summarize.py" "$RUNS" "${OUT:-$EXP}" --models $MODELS --seeds $SEEDS
