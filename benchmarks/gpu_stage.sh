#!/usr/bin/env bash
# Stage, on this machine, what benchmarks/gpu_check.sh needs on a lent GPU machine, into .gpu/
# (git-ignored; name it in the device tool's `carry`; 64 MiB travel at most, the repo included: about
# 62 MiB with the defaults): wheels of the packages that machine's image lacks (open_clip_torch, ftfy,
# wcwidth; for its Python 3.12), the first N CamVid val images with their labels, the real DINOv2-S,
# and one trained tiny CamVid CLIP (experiments/pixelclip_lit_camvid, seed 0 base: make it first, or
# point CLIP at another).
#
#   bash benchmarks/gpu_stage.sh            # then: run(command="bash benchmarks/gpu_check.sh", carry=[".gpu"])
#
# Env: SHARED (default ../shared), CLIP (a labelless CLIP checkpoint), N (val images, default 24).
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED:-../shared}
CLIP=${CLIP:-experiments/pixelclip_lit_camvid/runs/tiny/seed0/clip/clip.pt}
N=${N:-24}
[ -f "$CLIP" ] || { echo "no CLIP checkpoint at $CLIP (run experiments/pixelclip_lit_camvid/run.sh or set CLIP)" >&2; exit 2; }
rm -rf .gpu
mkdir -p .gpu/whl .gpu/data/camvid/val .gpu/data/camvid/valannot .gpu/weights
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 -d .gpu/whl open_clip_torch ftfy wcwidth
CV=$SHARED/data/camvid
cp "$CV/classes.txt" "$CV/README.md" .gpu/data/camvid/
head -n "$N" "$CV/val.txt" > .gpu/data/camvid/val.txt
while read -r img lab; do
  cp "$CV/$img" ".gpu/data/camvid/$img"
  cp "$CV/$lab" ".gpu/data/camvid/$lab"
done < .gpu/data/camvid/val.txt
cp -r "$SHARED/weights/dinov2-small" .gpu/weights/
cp "$CLIP" .gpu/clip_tiny.pt
du -sh .gpu
