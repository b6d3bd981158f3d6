#!/usr/bin/env bash
# The trained methods of experiments/compare_camvid, made on CamVid train (labels only ever make
# captions; masks are DINO k-means), seed 0, each stage skipped when its output exists:
#   RUNS/models/clip/clip.pt       tiny CLIP (experiments/pixelclip_camvid/clip.yaml: captions of crops)
#   RUNS/models/masks_dino_k16     DINOv2-S k-means masks of the train images (k = 16, short side 224)
#   RUNS/models/masks_dino_k16_val the same masks of the val images (the table's --refine masks)
#   RUNS/models/pixelclip/clip.pt  that CLIP tuned with PixelCLIP on those masks (.../pixelclip.yaml)
#   RUNS/models/sseg/seed0/dinov2s/model.pt  S-Seg, frozen DINOv2-S (experiments/sseg_camvid, seed 0)
# The same commands and configs as those experiments' run.sh for seed 0.
#
# Env: PY, LABELLESS_DATA, DINO, RUNS (default experiments/compare_camvid/runs), THREADS (default 2).
set -euo pipefail

EXP=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$EXP/../.." && pwd)
THREADS=${THREADS:-2}
# shellcheck source=../stage.sh
source "$REPO/experiments/stage.sh"  # experiment_env, elapsed, stage
experiment_env
CAMVID=$CAMVID_SRC
M=$RUNS/models
mkdir -p "$M"
PCC=$REPO/experiments/pixelclip_camvid
source "$REPO/experiments/stage.sh"  # elapsed, stage
export KEEP=1  # every stage is skipped once its output exists

stage "$M" train_clip "$M/clip/clip.pt" "${LL[@]}" train clip --config "$PCC/clip.yaml" \
  seed=0 run_dir="$M/clip" data_root="$CAMVID"
# masks generate resumes by itself (images in the store are skipped); masks.done marks a finished store
stage "$M" masks "$M/masks.done" "${LL[@]}" masks generate --source dino --images "$CAMVID/train" \
  --out "$M/masks_dino_k16" --model "$DINO" --k 16 --size 224 --device cpu --quiet --json
touch "$M/masks.done"
# the same masks of the val images, for --refine masks in the table (computed once, read by image name)
stage "$M" masks_val "$M/masks_val.done" "${LL[@]}" masks generate --source dino --images "$CAMVID/val" \
  --out "$M/masks_dino_k16_val" --model "$DINO" --k 16 --size 224 --device cpu --quiet --json
touch "$M/masks_val.done"
stage "$M" train_pixelclip "$M/pixelclip/clip.pt" "${LL[@]}" train pixelclip --config "$PCC/pixelclip.yaml" \
  seed=0 prompt_seed=0 run_dir="$M/pixelclip" pretrained="$M/clip/clip.pt" mask_store="$M/masks_dino_k16"
if [ ! -f "$M/sseg/seed0/dinov2s/model.pt" ]; then
  RUNS="$M/sseg" SEEDS=0 BACKBONES=dinov2s DIAGNOSE=0 JOBS=1 THREADS="$THREADS" SUMMARIZE=0 \
    bash "$REPO/experiments/sseg_camvid/run.sh"
fi
echo "models in $M"
