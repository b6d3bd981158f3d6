#!/usr/bin/env bash
# labelless compare on CamVid val: the methods of compare.yaml (one tiny random CLIP in the
# dense modes vanilla, maskclip, sclip, clearclip, naclip, pixelclip) × its presets × CamVid
# val, every cell a `labelless eval` run, resumable per cell; then the table is copied here.
#
#   experiments/compare_camvid/run.sh            # every cell, all 101 val images
#   LIMIT=2 experiments/compare_camvid/run.sh    # smoke test: 2 images per cell, table not copied
#
# Env: PY (python, default .venv/bin/python), LABELLESS_DATA (folder holding camvid/, default
#      ../shared/data), RUNS (the cells, default experiments/compare_camvid/runs, git-ignored;
#      finished cells with unchanged settings are kept and skipped), LIMIT (images per cell),
#      ONLY (cell / method patterns for --only), THREADS (torch threads, default 2).
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
cd "$REPO"
args=("$EXP/compare.yaml" --data-dir "$DATA" --out "$RUNS")
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
