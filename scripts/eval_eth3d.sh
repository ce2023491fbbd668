#!/usr/bin/env bash
# Evaluate MASt3R-SLAM on ETH3D SLAM training (the 55 sequences that are not dark).
# Runs every sequence, then computes the ATE RMSE (metres) of the keyframe trajectory after
# Umeyama Sim(3) alignment (the protocol of `evo_ape tum GT EST -as`), also of the all-frame
# trajectory, and prints the table.
#   bash scripts/eval_eth3d.sh [--no-calib] [--data DIR] [--results DIR] [--align sim3|se3|none] [-- main.py args]
# ETH3D uses config/eth3d.yaml (center_principle_point False, reloc not strict) as the original;
# --no-calib runs it with use_calib=false.
# Data: bash scripts/download_eth3d.sh. Results: RESULTS/<calib|no_calib>/<sequence>/ (see docs/DATASETS.md).
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=calib
CONFIG=config/eth3d.yaml
NO_CALIB_ARGS=(--config config/eth3d.yaml --set use_calib=false)
DATA="datasets/eth3d/train"
RESULTS="results/eth3d"
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
  cables_1 cables_2 cables_3 camera_shake_1
  camera_shake_2 camera_shake_3 ceiling_1 ceiling_2
  desk_3 desk_changing_1 einstein_1 einstein_2
  einstein_flashlight einstein_global_light_changes_1 einstein_global_light_changes_2 einstein_global_light_changes_3
  kidnap_1 large_loop_1 mannequin_1 mannequin_3
  mannequin_4 mannequin_5 mannequin_7 mannequin_face_1
  mannequin_face_2 mannequin_face_3 mannequin_head motion_1
  planar_2 planar_3 plant_1 plant_2
  plant_3 plant_4 plant_5 plant_scene_1
  plant_scene_2 plant_scene_3 reflective_1 repetitive
  sfm_bench sfm_garden sfm_house_loop sfm_lab_room_1
  sfm_lab_room_2 sofa_1 sofa_2 sofa_3
  sofa_4 sofa_shake table_3 table_4
  table_7 vicon_light_1 vicon_light_2
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
