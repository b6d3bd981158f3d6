# Shared set-up of dev.sh and run.sh (sourced): paths, the CamVid folder with the dev split,
# the model configs with this DINO folder, and a timed stage runner.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
EXP=$REPO/experiments/sseg_camvid
# shellcheck source=../stage.sh
source "$REPO/experiments/stage.sh"  # experiment_env, elapsed, stage, camvid_folder
experiment_env

# RUNS/camvid: CamVid with its list files plus the dev split of the training images
# (devtrain.txt = train sequences 0006R0 + 0016E5, dev.txt = train sequence 0001TP).
CV=$RUNS/camvid
camvid_folder "$CAMVID_SRC" "$CV"

# model configs: DINOv2-S (frozen, this folder) and the small backbone from scratch
"$PY" - "$EXP/model_dinov2s.json" "$RUNS/model_dinov2s.json" "hf:$DINO" <<'PYEOF'
import json, sys
m = json.load(open(sys.argv[1]))
m["image"]["backbone"] = sys.argv[3]
json.dump(m, open(sys.argv[2], "w"), indent=2)
PYEOF
cp "$EXP/model_small.json" "$RUNS/model_small.json"

# the cache of one split (crops, captions, DINOv2-S tokens, pseudo-masks): cache SPLIT OUT [key=value ...]
# (CACHE_THREADS torch threads, default 2: it runs alone)
cache() {
  OMP_NUM_THREADS=${CACHE_THREADS:-2} MKL_NUM_THREADS=${CACHE_THREADS:-2} \
    stage "$2" cache "$2/cache.pt" "${LL[@]}" train sseg-cache --config "$EXP/train.yaml" --out "$2" \
    model="$RUNS/model_dinov2s.json" data=benchmark data_root="$CV" split="$1" seed=0 "${@:3}"
}

# evaluate DIR MODEL SPLIT SHORT_SIDE: labelless eval, slide protocol (image resized to the
# short side, 224-px windows at stride STRIDE, default 149), the caption template
# -> DIR/eval_SPLIT_SHORT_SIDE/results.json
evaluate() {
  local out=$1/eval_$3_$4
  stage "$1" "eval_$3_$4" "$out/results.json" "${LL[@]}" eval --dataset camvid --data-root "$CV" --split "$3" \
    --protocol slide --short-side "$4" --input-size 224 --stride "${STRIDE:-149}" --templates "a photo of {}" \
    --device cpu --pretrained "$2" --out "$out"
}
