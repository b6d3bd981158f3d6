# Shared set-up of dev.sh and run.sh (sourced): paths, the CamVid folder with the dev split,
# the DINO k-means mask stores, and one function per step (train base, tune, evaluate, ceiling).
#
# Models: "tiny" = (a) the tiny CLIP of ../pixelclip_camvid (its clip.yaml / pixelclip.yaml),
#         "lit"  = (b) LiT DINOv2-S at 112 px (lit.yaml / pixelclip_lit.yaml).
# Evaluation of each (dense mode pixelclip, template "a photo of {}", windows of the training
# crop size at 2/3 of the image height): tiny 64-px windows at short side 96, stride 32;
# lit 112-px windows at short side 168, stride 56.
# Env: PY, LABELLESS_DATA (folder holding camvid/), DINO (DINOv2-S folder), RUNS (git-ignored
#      run folder, default experiments/pixelclip_lit_camvid/runs), JOBS (runs side by side,
#      default 2), THREADS (torch threads per run, default 1), MASK_THREADS (default 2), KEEP=1
#      (resume finished stages), TINY_CLIP / TINY_PC / LIT_CLIP / LIT_PC (extra key=value for the
#      four trainings, e.g. a smoke run: LIT_CLIP="max_steps=5" LIT_PC="max_steps=2").
#
# Fixed by the 45-min budget of run.sh on 2 CPU cores, not tuned (NOTES.md): the tiny CLIP trains
# 1000 steps (../pixelclip_camvid: 2000) and its PixelCLIP 100 steps (there: 300); the LiT model
# trains from a cache of the locked DINOv2-S's class tokens for 8 fixed crops per image
# (`image_cache`, labelless/train/clip/cache.py: RUNS/lit_cache_SPLIT.pt, built once by lit_cache,
# shared by every seed), so its steps cost only the text tower and the head.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
EXP=$REPO/experiments/pixelclip_lit_camvid
OLD=$REPO/experiments/pixelclip_camvid
# shellcheck source=../stage.sh
source "$REPO/experiments/stage.sh"  # experiment_env, elapsed, stage, camvid_folder
experiment_env

# RUNS/camvid: CamVid with its list files plus the dev split of the training images
# (devtrain.txt = train sequences 0006R0 + 0016E5, 305 images; dev.txt = train sequence 0001TP, 62).
CV=$RUNS/camvid
camvid_folder "$CAMVID_SRC" "$CV"

# DINO k-means masks (DINOv2-S, k = 16, short side 224; images only, labels never read), one store
# for all train images and one for val (resumable); masks_devtrain and masks_dev are the train
# store's records of those splits (links: PixelCLIP trains on every image of its store).
masks() {
  local split name f
  for split in train val; do
    OMP_NUM_THREADS=${MASK_THREADS:-2} "${LL[@]}" masks generate --source dino --images "$CV/$split" \
      --out "$RUNS/masks_$split" --model "$DINO" --k 16 --size 224 --device cpu --quiet --json
  done
  for split in devtrain dev; do
    rm -rf "$RUNS/masks_$split"
    mkdir -p "$RUNS/masks_$split/masks"
    cp "$RUNS/masks_train/store.json" "$RUNS/masks_$split/"
    while read -r f; do
      name=$(basename "${f%% *}"); name=${name%.*}
      ln -s "$RUNS/masks_train/masks/$name.json" "$RUNS/masks_$split/masks/$name.json"
    done < "$CV/$split.txt"
  done
}

TINY_CLIP_FIXED="max_steps=1000"
TINY_PC_FIXED="max_steps=100"
LIT_STEPS=${LIT_STEPS:-100}  # LiT steps, chosen on dev: 100 -> 10.14, 400 -> 9.72, 1600 -> 9.77 (NOTES.md)

# lit_cache SPLIT: RUNS/lit_cache_SPLIT.pt, the locked tower's features of the SPLIT crops (built by a
# one-step LiT run before the seeds start, so that parallel runs do not build it twice)
lit_cache() {
  stage "$RUNS" "lit_cache_$1" "$RUNS/lit_cache_$1.pt" "${LL[@]}" train clip --config "$EXP/lit.yaml" \
    image_tower="$DINO" image_cache="$RUNS/lit_cache_$1.pt" run_dir="$RUNS/lit_cache_$1.run" data_root="$CV" \
    split="$1" max_steps=1 tensorboard=false
  rm -rf "$RUNS/lit_cache_$1.run"
}
# protocol MODEL: the eval options of one model (header)
protocol() {
  case $1 in
    tiny) echo "--short-side 96 --input-size 64 --stride 32" ;;
    lit)  echo "--short-side 168 --input-size 112 --stride 56" ;;
    *) echo "unknown model $1" >&2; return 2 ;;
  esac
}
# base MODEL DIR SPLIT SEED [key=value ...]: DIR/clip/clip.pt, the base CLIP trained on SPLIT
base() {
  local m=$1 d=$2 split=$3 s=$4 cfg; shift 4
  case $m in tiny) cfg=$OLD/clip.yaml ;; lit) cfg=$EXP/lit.yaml ;; esac
  case $m in
    tiny) set -- $TINY_CLIP_FIXED "$@" ;;
    lit) set -- image_tower="$DINO" image_cache="$RUNS/lit_cache_$split.pt" max_steps="$LIT_STEPS" "$@" ;;
  esac
  stage "$d" train_clip "$d/clip/clip.pt" "${LL[@]}" train clip --config "$cfg" seed="$s" run_dir="$d/clip" \
    data_root="$CV" split="$split" "$@"
}
# tune MODEL DIR BASE_PT STORE SEED [key=value ...]: DIR/pixelclip/clip.pt
tune() {
  local m=$1 d=$2 pt=$3 store=$4 s=$5 cfg; shift 5
  case $m in tiny) cfg=$OLD/pixelclip.yaml ;; lit) cfg=$EXP/pixelclip_lit.yaml ;; esac
  [ "$m" = tiny ] && set -- $TINY_PC_FIXED "$@"
  stage "$d" train_pixelclip "$d/pixelclip/clip.pt" "${LL[@]}" train pixelclip --config "$cfg" seed="$s" \
    prompt_seed="$s" run_dir="$d/pixelclip" pretrained="$pt" mask_store="$store" "$@"
}
# evaluate MODEL DIR NAME PT SPLIT: DIR/NAME/results.json
evaluate() {
  local m=$1 d=$2 name=$3 pt=$4 split=$5
  # shellcheck disable=SC2046
  stage "$d" "$name" "$d/$name/results.json" "${LL[@]}" eval --dataset camvid --data-root "$CV" --split "$split" \
    --model tiny-vit --mode pixelclip --protocol slide $(protocol "$m") --templates "a photo of {}" --device cpu \
    --pretrained "$pt" --out "$d/$name"
}
# ceiling MODEL DIR SPLIT STORE: DIR/ceiling_SPLIT.json (per-pixel / mask-averaged / mask oracle)
ceiling() {
  local m=$1 d=$2 split=$3 store=$4
  # shellcheck disable=SC2046
  stage "$d" "ceiling_$split" "$d/ceiling_$split.json" "$PY" "$OLD/ceiling.py" --masks "$store" --data-root "$CV" \
    --split "$split" $(protocol "$m") --out "$d/ceiling_$split.json" base="$d/clip/clip.pt" tuned="$d/pixelclip/clip.pt"
}
