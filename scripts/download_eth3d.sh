#!/usr/bin/env bash
# Download the ETH3D SLAM training sequences (monocular archives: rgb/, rgb.txt, calibration.txt,
# groundtruth.txt). The 6 dark sequences are downloaded too but not evaluated (see eval_eth3d.sh).
#   bash scripts/download_eth3d.sh [DEST] [--rgbd]   (default DEST: datasets/eth3d/train)
# --rgbd also fetches the depth archives. Source: https://www.eth3d.net/slam_datasets
# (the original downloaded to datasets/eth3d/train2 but evaluated datasets/eth3d/train; both
# scripts here use datasets/eth3d/train).
set -euo pipefail
cd "$(dirname "$0")/.."
DEST="datasets/eth3d/train"
KINDS=(mono)
for a in "$@"; do
  case "$a" in
    --rgbd) KINDS=(mono rgbd) ;;
    -*) echo "unknown option $a (expected --rgbd)" >&2; exit 2 ;;
    *) DEST="$a" ;;
  esac
done
URL="${ETH3D_URL:-https://www.eth3d.net/data/slam/datasets}"
SEQS=(
  cables_1 cables_2 cables_3 camera_shake_1 camera_shake_2 camera_shake_3 ceiling_1 ceiling_2
  desk_3 desk_changing_1 einstein_1 einstein_2 einstein_dark einstein_flashlight
  einstein_global_light_changes_1 einstein_global_light_changes_2 einstein_global_light_changes_3
  kidnap_1 kidnap_dark large_loop_1 mannequin_1 mannequin_3 mannequin_4 mannequin_5 mannequin_7
  mannequin_face_1 mannequin_face_2 mannequin_face_3 mannequin_head motion_1 planar_2 planar_3
  plant_1 plant_2 plant_3 plant_4 plant_5 plant_dark plant_scene_1 plant_scene_2 plant_scene_3
  reflective_1 repetitive sfm_bench sfm_garden sfm_house_loop sfm_lab_room_1 sfm_lab_room_2
  sofa_1 sofa_2 sofa_3 sofa_4 sofa_dark_1 sofa_dark_2 sofa_dark_3 sofa_shake
  table_3 table_4 table_7 vicon_light_1 vicon_light_2
)
fetch() { if command -v wget >/dev/null; then wget -q --show-progress -O "$2" "$1"; else curl -fL --progress-bar -o "$2" "$1"; fi; }
mkdir -p "$DEST"
for s in "${SEQS[@]}"; do
  for k in "${KINDS[@]}"; do
    marker="$DEST/$s/rgb.txt"; [ "$k" = rgbd ] && marker="$DEST/$s/depth.txt"
    if [ -f "$marker" ]; then echo "$s ($k): already there"; continue; fi
    echo "$s ($k)"
    fetch "$URL/${s}_$k.zip" "$DEST/${s}_$k.zip"
    unzip -q -o "$DEST/${s}_$k.zip" -d "$DEST"
    rm "$DEST/${s}_$k.zip"
  done
done
echo "ETH3D SLAM ready in $DEST"
