# Shared by the experiment scripts (sourced): elapsed seconds and a timed, skippable stage.
#
# elapsed T0: seconds since T0 (date +%s.%N), one decimal.
# stage DIR NAME DONE_FILE command...: run the command (log DIR/NAME.log, seconds appended to
#   DIR/times.tsv) unless KEEP=1 and DONE_FILE exists; on failure print the log's tail and
#   return 1. The progress line names DIR relative to $RUNS.
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
