#!/usr/bin/env bash
# Refinement and zero-shot mask classification on CamVid val (101 images, 11 classes), one
# trained tiny CLIP: the base CLIP of experiments/pixelclip_camvid (tiny-vit trained
# contrastively on CamVid train crops captioned with their class names, clip.yaml, seed 0),
# scored as that experiment scores it (dense mode pixelclip, 64-px windows sliding over the
# image at short side 96, stride 32, template "a photo of {}"), with
#   none             the plain labels
#   pamr             --refine pamr (10 iterations, dilations 8,16: SCLIP / NACLIP), and dilations 2,4
#   dino-k16-224     --refine masks, DINOv2-S k-means k = 16 at short side 224, computed per image
#                    (the val masks of pixelclip_camvid's ceiling.py: its "averaged in each val DINO mask")
#   dino-k8-448      --refine masks, DINOv2-S k-means k = 8 at short side 448
#   slic-16          --refine masks, SLIC (n_segments 17, compactness 19: about 16 masks, no weights)
#   gt               --refine masks --masks gt: zero-shot mask classification (each ground-truth
#                    class region of an image takes the class of its mean scores)
#
# Usage: experiments/refine_camvid/run.sh     (about 35 min on 2 shared CPU cores, 24 of them the CLIP
#        training; CLIP=path/clip.pt skips it)
# Env:   PY (python, default .venv/bin/python), LABELLESS_DATA (folder holding camvid/), DINO
#        (DINOv2-S folder, default ../shared/weights/dinov2-small), RUNS (default
#        experiments/refine_camvid/runs, git-ignored), CLIP (a trained CLIP to use), KEEP=1 resumes.
# Output: experiments/refine_camvid/results.md, results.json
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
EXP=$REPO/experiments/refine_camvid
PY=${PY:-$REPO/.venv/bin/python}
DATA=${LABELLESS_DATA:-$REPO/../shared/data}
CAMVID=$(cd "$DATA/camvid" 2>/dev/null && pwd || echo "$DATA/camvid")
DINO=$(cd "${DINO:-$REPO/../shared/weights/dinov2-small}" 2>/dev/null && pwd || echo "${DINO:-}")
RUNS=${RUNS:-$EXP/runs}
[ -f "$CAMVID/val.txt" ] || { echo "CamVid not found at $CAMVID (set LABELLESS_DATA)" >&2; exit 2; }
[ -f "$DINO/config.json" ] || { echo "DINOv2-S folder not found at $DINO (set DINO)" >&2; exit 2; }
cd "$REPO"
source "$REPO/experiments/stage.sh"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
LL=("$PY" -m labelless)
[ "${KEEP:-0}" = 1 ] || rm -rf "$RUNS"
mkdir -p "$RUNS"

if [ -z "${CLIP:-}" ]; then
  CLIP=$RUNS/clip/clip.pt
  stage "$RUNS" train_clip "$CLIP" "${LL[@]}" train clip --config "$REPO/experiments/pixelclip_camvid/clip.yaml" \
    seed=0 run_dir="$RUNS/clip" data_root="$CAMVID"
fi
EVAL=(eval --dataset camvid --data-root "$CAMVID" --split val --model tiny-vit --pretrained "$CLIP" --mode pixelclip
      --protocol slide --short-side 96 --input-size 64 --stride 32 --templates "a photo of {}" --device cpu
      --workers 0)
run() {  # run NAME [refinement options...]
  local name=$1; shift
  stage "$RUNS" "$name" "$RUNS/$name/results.json" "${LL[@]}" "${EVAL[@]}" --out "$RUNS/$name" "$@"
}
run none
run pamr --refine pamr
run pamr-2-4 --refine pamr --pamr-dilations 2,4
run dino-k16-224 --refine masks --masks dino --mask-options "model=$DINO,k=16,size=224"
run dino-k8-448 --refine masks --masks dino --mask-options "model=$DINO,k=8,size=448"
run slic-16 --refine masks --masks slic --mask-options "n_segments=17,compactness=19"
run gt --refine masks --masks gt

"$PY" - "$RUNS" "$EXP" <<'PYEOF'
import json, sys
from pathlib import Path

runs, out = Path(sys.argv[1]), Path(sys.argv[2])
names = ["none", "pamr", "pamr-2-4", "dino-k16-224", "dino-k8-448", "slic-16", "gt"]
res = {n: json.loads((runs / n / "results.json").read_text()) for n in names}
base = res["none"]["mIoU"]


def setting(r):
    ref = r["refine"]
    if ref is None:
        return "none"
    if ref["method"] == "pamr":
        return f"pamr, {ref['iterations']} iterations, dilations {ref['dilations']}"
    m = ref["masks"]
    params = {k: v for k, v in m.get("params", {}).items() if k in ("k", "size", "n_segments", "compactness")}
    return f"masks ({m['source']}{', ' + ', '.join(f'{k}={v}' for k, v in params.items()) if params else ''}), " \
           f"overlap {ref['overlap']}"


rows = [{"run": n, "refine": res[n]["refine"], "mIoU": res[n]["mIoU"], "pAcc": res[n]["pAcc"],
         "mAcc": res[n]["mAcc"], "gain": res[n]["mIoU"] - base, "seconds": res[n]["seconds"],
         "per_class": res[n]["per_class"]} for n in names]
(out / "results.json").write_text(json.dumps({"protocol": res["none"]["protocol"], "model": res["none"]["model"],
                                              "pretrained": Path(res["none"]["pretrained"]).name,
                                              "runs": rows}, indent=2) + "\n")
md = ["# Refinement and zero-shot mask classification, CamVid val (101 images, 11 classes)", "",
      "Produced by `experiments/refine_camvid/run.sh`: the base tiny CLIP of `experiments/pixelclip_camvid` "
      "(seed 0), dense mode pixelclip, slide (short side 96, 64-px windows, stride 32), template "
      "\"a photo of {}\"; one CPU thread (`seconds`: the eval loop, masks and refinement included).", "",
      "| run | refinement | mIoU | Δ | pAcc | mAcc | seconds |", "|:---|:---|---:|---:|---:|---:|---:|"]
for r, n in zip(rows, names):
    md.append(f"| {n} | {setting(res[n])} | **{r['mIoU']:.2f}** | {r['gain']:+.2f} | {r['pAcc']:.2f} | "
              f"{r['mAcc']:.2f} | {r['seconds']:.1f} |")
classes = list(rows[0]["per_class"])
md += ["", "Per-class IoU:", "", "| run | " + " | ".join(classes) + " |", "|:---|" + "---:|" * len(classes)]
for r in rows:
    md.append(f"| {r['run']} | " + " | ".join("—" if r["per_class"][c] is None else f"{r['per_class'][c]:.1f}"
                                               for c in classes) + " |")
(out / "results.md").write_text("\n".join(md) + "\n")
print((out / "results.md").read_text())
PYEOF
