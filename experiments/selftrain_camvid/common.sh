# Shared set-up of dev.sh and run.sh (sourced): paths, the teachers and their labelling
# protocols, the CamVid folder with the dev split, and the stages both scripts run.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
EXP=$REPO/experiments/selftrain_camvid
TEACHERS=${TEACHERS:-"sseg pixelclip"}
declare -A CKPT=([sseg]=${SSEG_TEACHER:-$REPO/experiments/sseg_camvid/runs/seed0/dinov2s/model.pt}
                 [pixelclip]=${PIXELCLIP_TEACHER:-$REPO/experiments/pixelclip_camvid/runs/seed0/pixelclip/clip.pt})
declare -A PROTOCOL=([sseg]="--protocol slide --short-side 448 --input-size 224 --stride 149"
                     [pixelclip]="--mode pixelclip --protocol slide --short-side 96 --input-size 64 --stride 32")
# shellcheck source=../stage.sh
source "$REPO/experiments/stage.sh"  # experiment_env, elapsed, stage, camvid_folder
for t in $TEACHERS; do
  [ -f "${CKPT[$t]}" ] || { echo "no $t teacher at ${CKPT[$t]}: run experiments/${t}_camvid/run.sh first" >&2; exit 2; }
done
experiment_env
CV=$RUNS/camvid  # CamVid + devtrain.txt / dev.txt
camvid_folder "$CAMVID_SRC" "$CV"
max=()
[ -n "${MAX_IMAGES:-}" ] && max=(--max-images "$MAX_IMAGES")

inference() {  # inference TEACHER: the teacher's labelling (and scoring) options
  # shellcheck disable=SC2206
  INF=(${PROTOCOL[$1]} --templates "a photo of {}" --device cpu)
}

label() {  # label TEACHER SPLIT STORE: the teacher's pseudo-labels of CamVid SPLIT, sharded over
  # LABEL_PROCS processes (torchrun, default 2) of LABEL_THREADS torch threads (default 1): on 2
  # cores two 1-thread processes are about twice as fast as one 2-thread process, which spin-waits
  # whenever another job holds a core
  inference "$1"
  OMP_NUM_THREADS=${LABEL_THREADS:-1} MKL_NUM_THREADS=${LABEL_THREADS:-1} stage "$(dirname "$3")" \
    "label_$2" "$3.done" "$PY" -m torch.distributed.run --standalone --nproc_per_node "${LABEL_PROCS:-2}" \
    -m labelless selftrain label --dataset camvid --data-root "$CV" --split "$2" \
    --pretrained "${CKPT[$1]}" "${INF[@]}" "${max[@]}" --out "$3"
  touch "$3.done"
}

student() {  # student DIR CONFIG STORE SPLIT EVAL_SPLIT SEED: train on STORE's labels of SPLIT, score EVAL_SPLIT
  local d=$1 extra=()
  [[ "$(basename "$2")" == *dinov2s* ]] && extra=(backbone="hf:$DINO")
  # shellcheck disable=SC2086
  stage "$d" train "$d/model.pt" "${LL[@]}" train selftrain --config "$2" seed="$6" run_dir="$d" \
    data_root="$CV" split="$4" store="$3" "${extra[@]}" ${TRAIN_OVERRIDES:-}
  stage "$d" eval "$d/eval/results.json" "${LL[@]}" eval --dataset camvid --data-root "$CV" --split "$5" \
    --pretrained "$d/model.pt" --protocol whole --short-side 360 --device cpu --out "$d/eval"
}
