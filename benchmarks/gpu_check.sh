#!/usr/bin/env bash
# Issue 12's CUDA checks in one prepared run on a lent GPU machine (≈ 10 min at most): the CUDA
# tests, the side-by-side benchmark (default batch, batch 1, fp32), reduced-precision label
# agreement (real DINOv2-S, the trained tiny CamVid CLIP), eval in one process against torchrun
# (NCCL, one rank), dense inference and an S-Seg step. Stage .gpu/ first (benchmarks/gpu_stage.sh);
# there: run(command="bash benchmarks/gpu_check.sh", carry=[".gpu"], timeout_s=600). Results: $OUT
# (gpu_check.log with everything, and 6 result files: 7 of the 8 that come back).
#
# Env: OUT (default /tmp/gpu_check), DEVICE (default cuda), IMAGES (benchmark images, default 16),
# PY (default python3), BUDGET (seconds for all steps, default 560; a step past it is skipped).
# A CPU rehearsal here: DEVICE=cpu IMAGES=2 PY=.venv/bin/python OUT=/tmp/gc bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}
DEVICE=${DEVICE:-cuda}
IMAGES=${IMAGES:-16}
PY=${PY:-python3}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu_site \
  .gpu/whl/*.whl || exit 1
export PYTHONPATH=$PWD:/tmp/gpu_site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
[ -e ../shared ] || ln -s "$PWD/.gpu" ../shared  # the tests' and benchmarks' default data / weights
CV=$PWD/.gpu/data/camvid

DEADLINE=$(( $(date +%s) + ${BUDGET:-560} ))  # the device tool stops a command at 600 s
step() {  # step NAME SECONDS FILE|- COMMAND...: run with a time limit, output also into $OUT/FILE
  local name=$1 limit=$2 file=$3 t rc
  shift 3
  t=$(date +%s)
  (( limit > DEADLINE - t )) && limit=$(( DEADLINE - t ))
  if (( limit < 10 )); then echo "=== $name: skipped, the budget is spent"; return; fi
  echo "=== $name (at most $limit s): $*"
  if [ "$file" = - ]; then timeout "$limit" "$@"; else timeout "$limit" "$@" | tee "$OUT/$file"; fi
  rc=${PIPESTATUS[0]}
  echo "=== $name: rc $rc, $(( $(date +%s) - t )) s"
}
TINY=(--model tiny-vit --mode pixelclip --protocol slide --short-side 96 --input-size 64 --stride 32
      --templates "a photo of {}" --pretrained "$PWD/.gpu/clip_tiny.pt" --device "$DEVICE")

step env 60 - "$PY" -c "import torch, open_clip, timm; print(torch.__version__, open_clip.__version__, \
timm.__version__, torch.cuda.is_available() and torch.cuda.get_device_name(0))"
command -v nvidia-smi >/dev/null && nvidia-smi
step tests 150 - "$PY" -m pytest -q -p no:cacheprovider tests/test_slide.py tests/test_evaluate.py \
  tests/test_labelmaps.py -k "cuda or window or bilinear"
step bench_default 150 bench_default.txt "$PY" benchmarks/inference_vs_reference.py --device "$DEVICE" \
  --images "$IMAGES" --data-root "$CV"
step bench_bs1 120 bench_bs1.txt "$PY" benchmarks/inference_vs_reference.py --device "$DEVICE" \
  --images "$IMAGES" --data-root "$CV" --batch-size 1
step bench_fp32 120 bench_fp32.txt "$PY" benchmarks/inference_vs_reference.py --device "$DEVICE" \
  --images "$IMAGES" --data-root "$CV" --precision fp32
step precision 90 precision.txt "$PY" benchmarks/precision_agreement.py --device "$DEVICE" --images 24 \
  --data-root "$CV" --dino "$PWD/.gpu/weights/dinov2-small" --clip "$PWD/.gpu/clip_tiny.pt"
step eval_one 60 - "$PY" -m labelless eval --dataset camvid --data-root "$CV" --split val "${TINY[@]}" \
  --out "$OUT/eval_one"
step eval_torchrun 90 - "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 -m labelless eval \
  --dataset camvid --data-root "$CV" --split val "${TINY[@]}" --out "$OUT/eval_torchrun"
[ -f "$OUT/eval_one/results.json" ] && [ -f "$OUT/eval_torchrun/results.json" ] &&
  "$PY" - "$OUT" <<'PYEOF' | tee "$OUT/eval_compare.txt"
import json, sys
a, b = (json.load(open(f"{sys.argv[1]}/{n}/results.json")) for n in ("eval_one", "eval_torchrun"))
print("eval mIoU one process", a["mIoU"], "torchrun", b["mIoU"], "equal", a["mIoU"] == b["mIoU"])
PYEOF
rm -rf "$OUT/eval_one" "$OUT/eval_torchrun"  # 8 files come back at most: the comparison is kept
step dense 90 dense.txt "$PY" benchmarks/dense_inference.py --device "$DEVICE" --images "$IMAGES"
step sseg_step 60 - "$PY" benchmarks/sseg_step.py --device "$DEVICE" --steps 3
echo "=== done"
