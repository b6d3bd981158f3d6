# Shared by the experiment scripts (sourced): elapsed seconds and a timed, skippable stage.
#
# elapsed T0: seconds since T0 (date +%s.%N), one decimal.
# stage DIR NAME DONE_FILE command...: run the command (log DIR/NAME.log, seconds appended to
#   DIR/times.tsv) unless KEEP=1 and DONE_FILE exists; on failure print the log's tail and
#   return 1. The progress line names DIR relative to $RUNS.
# camvid_folder SRC DEST: DEST = CamVid (SRC) with its list files plus the dev split of the
#   training images: devtrain.txt = train sequences 0006R0 + 0016E5 (305 images), dev.txt =
#   train sequence 0001TP (62 images). Every experiment chooses its settings on it.
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
