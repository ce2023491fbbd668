#!/usr/bin/env bash
# Evaluate MASt3R-SLAM on TUM RGB-D freiburg1.
# Runs every sequence, then computes the ATE RMSE (metres) of the keyframe trajectory after
# Umeyama Sim(3) alignment (the protocol of `evo_ape tum GT EST -as`), also of the all-frame
# trajectory, and prints the table.
#   bash scripts/eval_tum.sh [--no-calib] [--data DIR] [--results DIR] [--align sim3|se3|none] [-- main.py args]
# Data: bash scripts/download_tum.sh. Results: RESULTS/<calib|no_calib>/<sequence>/ (see docs/DATASETS.md).
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=calib
CONFIG=config/eval_calib.yaml
NO_CALIB_ARGS=(--config config/eval_no_calib.yaml)
DATA="datasets/tum"
RESULTS="results/tum"
ALIGN=sim3
EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --no-calib) MODE=no_calib ;;
    --data) DATA="$2"; shift ;;
    --results) RESULTS="$2"; shift ;;
    --align) ALIGN="$2"; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    *) echo "unknown option $1 (expected --no-calib, --data DIR, --results DIR, --align MODE, -- main.py args)" >&2; exit 2 ;;
  esac
  shift
done
ARGS=(--config "$CONFIG")
[ "$MODE" = no_calib ] && ARGS=("${NO_CALIB_ARGS[@]}")
PY="${PYTHON:-python}"
SEQS=(
  rgbd_dataset_freiburg1_360 rgbd_dataset_freiburg1_desk rgbd_dataset_freiburg1_desk2
  rgbd_dataset_freiburg1_floor rgbd_dataset_freiburg1_plant rgbd_dataset_freiburg1_room
  rgbd_dataset_freiburg1_rpy rgbd_dataset_freiburg1_teddy rgbd_dataset_freiburg1_xyz
)
failed=()
for s in "${SEQS[@]}"; do
  seq_path="$DATA/$s"
  out="$RESULTS/$MODE/$s"
  echo "== $s ($MODE)"
  if ! "$PY" main.py --dataset "$seq_path" "${ARGS[@]}" --no-viz --output "$out" ${EXTRA[@]+"${EXTRA[@]}"}; then
    failed+=("$s"); continue
  fi
  "$PY" -m mast3r_slam.eval.ate "$out/trajectory_keyframes.txt" --dataset "$seq_path" --align "$ALIGN" \
    --metrics "$out/metrics.json" --key keyframes || failed+=("$s")
  if [ -f "$out/trajectory.txt" ]; then
    "$PY" -m mast3r_slam.eval.ate "$out/trajectory.txt" --dataset "$seq_path" --align "$ALIGN" \
      --metrics "$out/metrics.json" --key frames || true
  fi
done
"$PY" -m mast3r_slam.eval.table "$RESULTS/$MODE" --csv-out "$RESULTS/$MODE/table.csv"
if [ ${#failed[@]} -gt 0 ]; then echo "failed: ${failed[*]}" >&2; exit 1; fi
