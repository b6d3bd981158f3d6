#!/usr/bin/env bash
# How run.sh's settings were chosen: S-Seg (DINOv2-S, frozen, cached) trained on the dev-train
# images (CamVid train sequences 0006R0 + 0016E5, 305 images) and scored on the dev images
# (train sequence 0001TP, 62 images); CamVid val plays no part. Seed 0, one run per setting.
#
#   experiments/sseg_camvid/dev.sh            # about 30 min on 2 CPU cores
#
# Crops and captions (one cache each):
#   wide   train.yaml's crop keys overridden to 0.3-1.0 of the image area, captions naming up
#          to 3 classes ("a photo of road, building and sky")
#   small  0.05-0.3 of the area, one class per caption (the largest)
# Settings compared (cache + training overrides):
#   wide, wide_cw2 (contrastive_weight 2), small, small_cw2
# each scored on dev with 224-px windows at stride 149 after resizing the short side to 560;
# and the eval short side (448 vs 560) for the first two.
# Writes RUNS/dev/summary.json and prints a table. Env: as run.sh (common.sh).
source "$(dirname "$0")/common.sh"
DEV=$RUNS/dev
[ "${KEEP:-0}" = 1 ] || rm -rf "$DEV"

declare -A CACHE_KEYS=([wide]="crop_scale_min=0.3 crop_scale_max=1.0 max_names=3"
                       [small]="crop_scale_min=0.05 crop_scale_max=0.3 max_names=1")
declare -A CANDIDATES=([wide]="wide" [wide_cw2]="wide contrastive_weight=2"
                       [small]="small" [small_cw2]="small contrastive_weight=2")
for c in wide small; do
  # shellcheck disable=SC2086
  cache devtrain "$DEV/cache_$c" ${CACHE_KEYS[$c]}
done

one() {
  local name=$1 d=$DEV/$1
  # shellcheck disable=SC2206
  local words=(${CANDIDATES[$name]})
  # shellcheck disable=SC2086
  stage "$d" train "$d/model.pt" "${LL[@]}" train sseg --config "$EXP/train.yaml" model="$RUNS/model_dinov2s.json" \
    seed=0 run_dir="$d" data=cache cache="$DEV/cache_${words[0]}" "${words[@]:1}" ${TRAIN_OVERRIDES:-}
  evaluate "$d" "$d/model.pt" dev 560
  case $name in wide|small) evaluate "$d" "$d/model.pt" dev 448 ;; esac
}
fail=0
for name in wide wide_cw2 small small_cw2; do
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || fail=1; done
  one "$name" &
done
while [ "$(jobs -rp | wc -l)" -gt 0 ]; do wait -n || fail=1; done
[ "$fail" = 0 ] || { echo "a dev run failed" >&2; exit 1; }
"$PY" - "$DEV" <<'PYEOF'
import json, sys
from pathlib import Path
dev = Path(sys.argv[1])
rows = {f"{r.parent.parent.name} @ short side {r.parent.name.split('_')[-1]}": json.loads(r.read_text())["mIoU"]
        for r in sorted(dev.glob("*/eval_dev_*/results.json"))}
(dev / "summary.json").write_text(json.dumps(rows, indent=2) + "\n")
for k, v in rows.items():
    print(f"{k:32s} dev mIoU {v:6.2f}")
PYEOF
