#!/usr/bin/env bash
# How run.sh's settings are chosen: every model trained on the dev-train images (CamVid train
# sequences 0006R0 + 0016E5, 305 images; stage.sh's camvid_folder) and scored on the dev images
# (train sequence 0001TP, 62 images); CamVid val plays no part. Seed 0, one run per setting.
#
#   experiments/pixelclip_lit_camvid/dev.sh                      # both models, every candidate
#   MODELS=lit CANDIDATES="x1 x0.1" experiments/pixelclip_lit_camvid/dev.sh
#
# LiT steps: LIT_BASES="100 400 1600" trains one LiT base per step count (DEV/lit/stepsN, from the
# devtrain feature cache) and scores each on dev; the PixelCLIP candidates of lit then tune the base
# of LIT_STEPS steps (common.sh's default: the step count chosen this way).
#
# Per model (tiny, lit; common.sh): the base CLIP on devtrain, scored on dev; then one PixelCLIP
# tuning per candidate (DINO k-means masks of the devtrain images only), scored on dev with the
# same protocol:
#   x1      clip_lr_mult=1.0  (CLIP lr 2e-4; ../pixelclip_camvid's val-chosen setting)
#   x0.1    clip_lr_mult=0.1
#   x0.01   clip_lr_mult=0.01 (the paper's CLIP multiplier, strong augmentation off)
#   x0.001  clip_lr_mult=0.001
#   paper   clip_lr_mult=0.01 strong_aug=true (the paper's multipliers and augmentation)
# Writes RUNS/dev/summary.json and prints a table. Env: common.sh's.
source "$(dirname "$0")/common.sh"
DEV=$RUNS/dev
[ "${KEEP:-0}" = 1 ] || rm -rf "$DEV"
MODELS=${MODELS:-"tiny lit"}
CANDIDATES=${CANDIDATES:-"x1 x0.1 paper"}
declare -A KEYS=([x1]="clip_lr_mult=1.0" [x0.1]="clip_lr_mult=0.1" [x0.01]="clip_lr_mult=0.01" [x0.001]="clip_lr_mult=0.001" [paper]="clip_lr_mult=0.01 strong_aug=true")
T0=$(date +%s.%N)
masks
if [[ " $MODELS " == *" lit "* ]]; then lit_cache devtrain; fi
for n in ${LIT_BASES:-}; do  # LiT step-count candidates (bases only), JOBS at a time
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n; done
  (LIT_STEPS=$n base lit "$DEV/lit/steps$n" devtrain 0 ${LIT_CLIP:-} &&
   evaluate lit "$DEV/lit/steps$n" eval_base "$DEV/lit/steps$n/clip/clip.pt" dev) &
done
wait

extra() { case $1 in tiny) echo "${TINY_PC:-}" ;; lit) echo "${LIT_PC:-}" ;; esac; }
one_model() {  # the base CLIP, then its candidates JOBS at a time
  local m=$1 d=$DEV/$1 c fail=0
  local clip_extra
  case $m in tiny) clip_extra=${TINY_CLIP:-} ;; lit) clip_extra=${LIT_CLIP:-} ;; esac
  # shellcheck disable=SC2086
  base "$m" "$d" devtrain 0 $clip_extra
  evaluate "$m" "$d" eval_base "$d/clip/clip.pt" dev
  for c in $CANDIDATES; do
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || fail=1; done
    (
      # shellcheck disable=SC2086
      tune "$m" "$d/$c" "$d/clip/clip.pt" "$RUNS/masks_devtrain" 0 ${KEYS[$c]} $(extra "$m") &&
      evaluate "$m" "$d/$c" eval_tuned "$d/$c/pixelclip/clip.pt" dev
    ) &
  done
  while [ "$(jobs -rp | wc -l)" -gt 0 ]; do wait -n || fail=1; done
  return $fail
}
fail=0
for m in $MODELS; do one_model "$m" || fail=1; done
[ "$fail" = 0 ] || { echo "a dev run failed" >&2; exit 1; }
printf 'dev total\t%s\n' "$(elapsed "$T0")" >> "$DEV/times.tsv"
"$PY" - "$DEV" <<'PYEOF'
import json, sys
from pathlib import Path
dev = Path(sys.argv[1])
miou = lambda p: json.loads(p.read_text())["mIoU"]
rows = {}
for b in sorted(dev.glob("*/steps*/eval_base/results.json")):
    print(f"lit   base {b.parent.parent.name:10s} (devtrain -> dev) {miou(b):6.2f}")
for b in sorted(dev.glob("*/eval_base/results.json")):
    m = b.parent.parent
    rows[m.name] = {"base": miou(b), "tuned": {c.parent.parent.name: miou(c) for c in sorted(m.glob("*/eval_tuned/results.json"))}}
(dev / "summary.json").write_text(json.dumps(rows, indent=2) + "\n")
for m, r in rows.items():
    print(f"{m:5s} base (devtrain -> dev) {r['base']:6.2f}")
    for c, v in r["tuned"].items():
        print(f"      {c:8s} tuned {v:6.2f}  gain {v - r['base']:+6.2f}")
PYEOF
