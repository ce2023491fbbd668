#!/usr/bin/env bash
# Download the TUM RGB-D freiburg1 sequences of the MASt3R-SLAM evaluation.
#   bash scripts/download_tum.sh [DEST]        (default DEST: datasets/tum)
# Source: the official TUM RGB-D benchmark (https://cvg.cit.tum.de/data/datasets/rgbd-dataset),
# CC BY 4.0. Set TUM_URL to use a mirror with the same layout.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST="${1:-datasets/tum}"
URL="${TUM_URL:-https://cvg.cit.tum.de/rgbd/dataset}"
SEQS=(
  rgbd_dataset_freiburg1_360 rgbd_dataset_freiburg1_desk rgbd_dataset_freiburg1_desk2
  rgbd_dataset_freiburg1_floor rgbd_dataset_freiburg1_plant rgbd_dataset_freiburg1_room
  rgbd_dataset_freiburg1_rpy rgbd_dataset_freiburg1_teddy rgbd_dataset_freiburg1_xyz
)
fetch() { if command -v wget >/dev/null; then wget -q --show-progress -O "$2" "$1"; else curl -fL --progress-bar -o "$2" "$1"; fi; }
mkdir -p "$DEST"
for s in "${SEQS[@]}"; do
  if [ -f "$DEST/$s/rgb.txt" ]; then echo "$s: already there"; continue; fi
  echo "$s"
  fetch "$URL/freiburg1/$s.tgz" "$DEST/$s.tgz"
  tar -xzf "$DEST/$s.tgz" -C "$DEST"
  rm "$DEST/$s.tgz"
done
echo "TUM RGB-D ready in $DEST"
