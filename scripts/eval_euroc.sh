#!/usr/bin/env bash
# Evaluate MASt3R-SLAM on EuRoC MAV (cam0).
# Runs every sequence, then computes the ATE RMSE (metres) of the keyframe trajectory after
# Umeyama Sim(3) alignment (the protocol of `evo_ape tum GT EST -as`), also of the all-frame
# trajectory, and prints the table.
#   bash scripts/eval_euroc.sh [--no-calib] [--data DIR] [--results DIR] [--align sim3|se3|none] [-- main.py args]
# Data: bash scripts/download_euroc.sh. Results: RESULTS/<calib|no_calib>/<sequence>/ (see docs/DATASETS.md).
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=calib
CONFIG=config/eval_calib.yaml
NO_CALIB_ARGS=(--config config/eval_no_calib.yaml)
DATA="datasets/euroc"
RESULTS="results/euroc"
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
  MH_01_easy MH_02_easy MH_03_medium MH_04_difficult
  MH_05_difficult V1_01_easy V1_02_medium V1_03_difficult
  V2_01_easy V2_02_medium V2_03_difficult
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
