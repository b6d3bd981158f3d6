# Shared by the experiment scripts (sourced): their common set-up, elapsed seconds and a timed,
# skippable stage.
#
# experiment_env (REPO and EXP set): PY, DATA (LABELLESS_DATA), CAMVID_SRC, DINO (resolved),
#   RUNS (default EXP/runs; made, absolute), JOBS (default 2), THREADS (default 1; exported as
#   OMP_NUM_THREADS / MKL_NUM_THREADS), LL (the labelless command); exits 2 with the setting to
#   change when CamVid or the DINOv2-S folder is missing; then cd REPO.
# elapsed T0: seconds since T0 (date +%s.%N), one decimal.
# stage DIR NAME DONE_FILE command...: run the command (log DIR/NAME.log, seconds appended to
#   DIR/times.tsv) unless KEEP=1 and DONE_FILE exists; on failure print the log's tail and
#   return 1. The progress line names DIR relative to $RUNS.
# camvid_folder SRC DEST: DEST = CamVid (SRC) with its list files plus the dev split of the
#   training images: devtrain.txt = train sequences 0006R0 + 0016E5 (305 images), dev.txt =
#   train sequence 0001TP (62 images). Every experiment chooses its settings on it.
experiment_env() {
  PY=${PY:-$REPO/.venv/bin/python}
  DATA=${LABELLESS_DATA:-$REPO/../shared/data}
  CAMVID_SRC=$(cd "$DATA/camvid" 2>/dev/null && pwd || echo "$DATA/camvid")
  DINO=${DINO:-$REPO/../shared/weights/dinov2-small}
  RUNS=${RUNS:-$EXP/runs}
  JOBS=${JOBS:-2}
  THREADS=${THREADS:-1}
  export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
  [ -f "$CAMVID_SRC/train.txt" ] || { echo "CamVid not found at $CAMVID_SRC (set LABELLESS_DATA)" >&2; exit 2; }
  [ -f "$DINO/config.json" ] || { echo "DINOv2-S folder not found at $DINO (set DINO)" >&2; exit 2; }
  DINO=$(cd "$DINO" && pwd)
  cd "$REPO"
  LL=("$PY" -m labelless)
  mkdir -p "$RUNS"
  RUNS=$(cd "$RUNS" && pwd)
}
elapsed() { awk "BEGIN{printf \"%.1f\", $(date +%s.%N) - $1}"; }
stage() {
  local d=$1 name=$2 done=$3 t; shift 3
  if [ "${KEEP:-0}" = 1 ] && [ -f "$done" ]; then return 0; fi
  mkdir -p "$d"
  t=$(date +%s.%N)
  "$@" > "$d/$name.log" 2>&1 || { echo "$d: $name failed, see $d/$name.log" >&2; tail -5 "$d/$name.log" >&2; return 1; }
  printf '%s\t%s\n' "$name" "$(elapsed "$t")" >> "$d/times.tsv"
  echo "[${d#"$RUNS"/}] $name done ($(elapsed "$t") s)"
}
camvid_folder() {
  local src=$1 cv=$2 f
  mkdir -p "$cv"
  for f in classes.txt train trainannot val valannot; do ln -sfn "$src/$f" "$cv/$f"; done
  for f in train.txt val.txt; do rm -f "$cv/$f"; cp "$src/$f" "$cv/$f"; done
  grep -E '^train/(0006R0|0016E5)_' "$cv/train.txt" > "$cv/devtrain.txt"
  grep -E '^train/0001TP_' "$cv/train.txt" > "$cv/dev.txt"
}
