#!/usr/bin/env bash
# Download the EuRoC MAV sequences of the MASt3R-SLAM evaluation (ASL format, with ground truth
# in mav0/state_groundtruth_estimate0/data.csv, which the EuRoC loader and evaluation read).
#   bash scripts/download_euroc.sh [DEST]      (default DEST: datasets/euroc)
# Source: ETH Zurich ASL (https://projects.asl.ethz.ch/datasets/doku.php?id=kmavvisualinertialdatasets).
# Set EUROC_URL to use a mirror with the same layout (the ETH server has been moving).
set -euo pipefail
cd "$(dirname "$0")/.."
DEST="${1:-datasets/euroc}"
URL="${EUROC_URL:-http://robotics.ethz.ch/~asl-datasets/ijrr_euroc_mav_dataset}"
SEQS=(
  machine_hall/MH_01_easy machine_hall/MH_02_easy machine_hall/MH_03_medium
  machine_hall/MH_04_difficult machine_hall/MH_05_difficult
  vicon_room1/V1_01_easy vicon_room1/V1_02_medium vicon_room1/V1_03_difficult
  vicon_room2/V2_01_easy vicon_room2/V2_02_medium vicon_room2/V2_03_difficult
)
fetch() { if command -v wget >/dev/null; then wget -q --show-progress -O "$2" "$1"; else curl -fL --progress-bar -o "$2" "$1"; fi; }
mkdir -p "$DEST"
for room_seq in "${SEQS[@]}"; do
  s="${room_seq#*/}"
  if [ -f "$DEST/$s/mav0/cam0/data.csv" ]; then echo "$s: already there"; continue; fi
  echo "$s"
  fetch "$URL/$room_seq/$s.zip" "$DEST/$s.zip"
  mkdir -p "$DEST/$s"
  unzip -q -o "$DEST/$s.zip" -d "$DEST/$s"
  rm -rf "$DEST/$s/__MACOSX" "$DEST/$s.zip"
done
echo "EuRoC ready in $DEST"
