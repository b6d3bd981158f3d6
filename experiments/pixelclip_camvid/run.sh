#!/usr/bin/env bash
# Learning evidence on real images: a tiny CLIP pretrained on CamVid train (class-name captions
# of random crops), scored on CamVid val, then tuned with PixelCLIP on the same train images
# using only DINO k-means masks (no labels), and scored again; N seeds.
#
#   experiments/pixelclip_camvid/run.sh                # seeds 0 1 2 (about 40 min on 2 CPU cores)
#   SEEDS="0 1 2 3 4" experiments/pixelclip_camvid/run.sh
#
# Steps
#   1. DINO k-means masks of CamVid train images into one mask store (shared by all seeds;
#      images only, labels never read): DINOv2-S/14 patch tokens, k = 16 per image (the
#      paper's DINO setting), input short side 224.
#   2. per seed S (seeds run in parallel, JOBS at a time, THREADS torch threads each):
#        labelless train clip      --config clip.yaml      seed=S          -> seedS/clip/clip.pt
#        labelless eval  (base)                                            -> seedS/eval_base/
#        labelless train pixelclip --config pixelclip.yaml seed=S prompt_seed=S
#                                  pretrained=seedS/clip/clip.pt mask_store=STORE -> seedS/pixelclip/clip.pt
#        labelless eval  (tuned), same protocol                            -> seedS/eval_tuned/
#        ceiling.py base= tuned=  (the same windows read per pixel, averaged in the DINO
#                                   masks of the val images, and the masks' oracle) -> seedS/ceiling.json
#   3. summarize.py -> experiments/pixelclip_camvid/results.json, results.md
#
# Evaluation (both models, every seed, all 101 val images): dense mode pixelclip, sliding
# 64-px windows (the CLIP input) on the image resized to short side 96 (stride 32), one
# template "a photo of {}" (the caption template of the CLIP training).
#
# Env: PY (python, default .venv/bin/python), LABELLESS_DATA (folder holding camvid/), DINO
#      (DINOv2-S folder, default ../shared/weights/dinov2-small), RUNS (run folder, default
#      experiments/pixelclip_camvid/runs, git-ignored), SEEDS, JOBS (seeds at a time, default 3),
#      THREADS (torch threads per job, default 1: on 2 shared cores more threads per process
#      only add spin-waiting), MASK_THREADS (for the mask step, default 2), STORE (mask store,
#      default RUNS/masks_dino_k16), KEEP=1 to resume finished stages instead of starting fresh,
#      CLIP_OVERRIDES / PC_OVERRIDES (extra key=value for the two trainings, e.g. a smoke test:
#      CLIP_OVERRIDES="max_steps=5" PC_OVERRIDES="max_steps=2"), SUMMARIZE=0 leaves results.* alone.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
EXP=$REPO/experiments/pixelclip_camvid
SEEDS=${SEEDS:-"0 1 2"}
JOBS=${JOBS:-3}
# shellcheck source=../stage.sh
source "$REPO/experiments/stage.sh"  # experiment_env, elapsed
experiment_env
export JOBS
CAMVID=$CAMVID_SRC
STORE=${STORE:-$RUNS/masks_dino_k16}
VAL_STORE=${VAL_STORE:-$RUNS/masks_dino_k16_val}

if [ "${KEEP:-0}" != 1 ]; then
  for s in $SEEDS; do rm -rf "$RUNS/seed$s"; done
  rm -f "$RUNS/times.tsv"
fi
T0=$(date +%s.%N)

# 1. masks (resumable: images already in the store are skipped)
t=$(date +%s.%N)
echo "[masks] DINO k-means masks of CamVid train -> $STORE"
OMP_NUM_THREADS=${MASK_THREADS:-2} "${LL[@]}" masks generate --source dino --images "$CAMVID/train" --out "$STORE" \
  --model "$DINO" --k 16 --size 224 --device cpu --quiet --json
# the same masks of the val images: only read by ceiling.py (the analysis), never in training
OMP_NUM_THREADS=${MASK_THREADS:-2} "${LL[@]}" masks generate --source dino --images "$CAMVID/val" --out "$VAL_STORE" \
  --model "$DINO" --k 16 --size 224 --device cpu --quiet --json
printf 'masks\t%s\n' "$(elapsed "$t")" >> "$RUNS/times.tsv"

# 2. one seed, start to end
EVAL=(--dataset camvid --data-root "$CAMVID" --split val --model tiny-vit --mode pixelclip
      --protocol slide --short-side 96 --input-size 64 --stride 32 --templates "a photo of {}" --device cpu)
one_seed() {
  local s=$1 d=$RUNS/seed$1 t
  mkdir -p "$d"
  stage() {  # stage NAME DONE_FILE command...: run unless KEEP=1 and DONE_FILE exists; time it
    local name=$1 done=$2; shift 2
    if [ "${KEEP:-0}" = 1 ] && [ -f "$done" ]; then return 0; fi
    t=$(date +%s.%N)
    "$@" > "$d/$name.log" 2>&1 || { echo "seed $s: $name failed, see $d/$name.log" >&2; tail -5 "$d/$name.log" >&2; return 1; }
    printf '%s\t%s\n' "$name" "$(elapsed "$t")" >> "$d/times.tsv"
    echo "[seed $s] $name done ($(elapsed "$t") s)"
  }
  stage train_clip "$d/clip/clip.pt" "${LL[@]}" train clip --config "$EXP/clip.yaml" \
    seed="$s" run_dir="$d/clip" data_root="$CAMVID" ${CLIP_OVERRIDES:-}
  stage eval_base "$d/eval_base/results.json" "${LL[@]}" eval "${EVAL[@]}" \
    --pretrained "$d/clip/clip.pt" --out "$d/eval_base"
  stage train_pixelclip "$d/pixelclip/clip.pt" "${LL[@]}" train pixelclip --config "$EXP/pixelclip.yaml" \
    seed="$s" prompt_seed="$s" run_dir="$d/pixelclip" pretrained="$d/clip/clip.pt" mask_store="$STORE" ${PC_OVERRIDES:-}
  stage eval_tuned "$d/eval_tuned/results.json" "${LL[@]}" eval "${EVAL[@]}" \
    --pretrained "$d/pixelclip/clip.pt" --out "$d/eval_tuned"
  stage ceiling "$d/ceiling.json" "$PY" "$EXP/ceiling.py" --masks "$VAL_STORE" --data-root "$CAMVID" \
    --out "$d/ceiling.json" base="$d/clip/clip.pt" tuned="$d/pixelclip/clip.pt"
  grep -h '"mIoU"' "$d/eval_base/results.json" "$d/eval_tuned/results.json" >/dev/null
}

pids=()
fail=0
for s in $SEEDS; do
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || fail=1; done
  one_seed "$s" &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || fail=1; done
[ "$fail" = 0 ] || { echo "a seed failed" >&2; exit 1; }
printf 'total\t%s\n' "$(elapsed "$T0")" >> "$RUNS/times.tsv"

# 3. summary (SUMMARIZE=0: only the models are wanted, e.g. as selftrain_camvid's teacher)
[ "${SUMMARIZE:-1}" = 0 ] || "$PY" "$EXP/summarize.py" "$RUNS" "$EXP" $SEEDS
