#!/usr/bin/env bash
# labelless compare on CamVid val: the methods of compare.yaml (a tiny CLIP trained on CamVid
# train captions in every training-free dense mode, ProxyCLIP with the real DINOv2-S, that CLIP
# tuned with PixelCLIP, S-Seg on the frozen DINOv2-S; each plain and refined: PAMR, DINO k-means
# masks, ground-truth masks) × its presets × CamVid val, every cell a `labelless eval` run,
# resumable per cell; then the table is copied here.
#
#   experiments/compare_camvid/run.sh            # models (models.sh, kept once made), then every cell
#   LIMIT=2 experiments/compare_camvid/run.sh    # smoke test: 2 images per cell, table not copied
#
# Env: PY (python, default .venv/bin/python), LABELLESS_DATA (folder holding camvid/, default
#      ../shared/data), DINO (DINOv2-S folder, default ../shared/weights/dinov2-small), RUNS (the
#      models and cells, default experiments/compare_camvid/runs, git-ignored; finished cells with
#      unchanged settings are kept and skipped), LIMIT (images per cell), ONLY (cell / method
#      patterns for --only), THREADS (torch threads, default 2).
# Output: experiments/compare_camvid/compare.md, compare.json, compare.png (without LIMIT)
set -euo pipefail

EXP=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$EXP/../.." && pwd)
PY=${PY:-$REPO/.venv/bin/python}
DATA=${LABELLESS_DATA:-$REPO/../shared/data}
RUNS=${RUNS:-$EXP/runs}
THREADS=${THREADS:-2}
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS

[ -f "$DATA/camvid/val.txt" ] || { echo "CamVid not found at $DATA/camvid (set LABELLESS_DATA)" >&2; exit 2; }
DINO=$(cd "${DINO:-$REPO/../shared/weights/dinov2-small}" && pwd)
cd "$REPO"
RUNS="$RUNS" DINO="$DINO" THREADS="$THREADS" bash "$EXP/models.sh"
RUNS=$(cd "$RUNS" && pwd)
sed -e "s|@MODELS@|$RUNS/models|g" -e "s|@DINO@|$DINO|g" "$EXP/compare.yaml" > "$RUNS/compare.yaml"
args=("$RUNS/compare.yaml" --data-dir "$DATA" --out "$RUNS")
[ -z "${LIMIT:-}" ] || args+=(--limit "$LIMIT")
# shellcheck disable=SC2206
[ -z "${ONLY:-}" ] || args+=(--only $ONLY)
status=0
"$PY" -m labelless compare "${args[@]}" || status=$?
[ "$status" = 2 ] && exit 2  # bad config: no table
if [ -z "${LIMIT:-}" ]; then
  cp "$RUNS/compare.md" "$RUNS/compare.json" "$RUNS/compare.png" "$EXP/"
  echo "table: $EXP/compare.md"
fi
exit "$status"
