#!/usr/bin/env bash
# Download the Microsoft 7-Scenes scenes of the MASt3R-SLAM evaluation (seq-01 of each is used).
#   bash scripts/download_7scenes.sh [DEST]    (default DEST: datasets/7-scenes)
# Source: https://www.microsoft.com/en-us/research/project/rgb-d-dataset-7-scenes/
# Ground truth: the per-frame frame-XXXXXX.pose.txt files, read by the 7-Scenes loader.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST="${1:-datasets/7-scenes}"
URL="${SEVEN_SCENES_URL:-http://download.microsoft.com/download/2/8/5/28564B23-0828-408F-8631-23B1EFF1DAC8}"
SCENES=(chess fire heads office pumpkin redkitchen stairs)
fetch() { if command -v wget >/dev/null; then wget -q --show-progress -O "$2" "$1"; else curl -fL --progress-bar -o "$2" "$1"; fi; }
mkdir -p "$DEST"
for s in "${SCENES[@]}"; do
  if [ -d "$DEST/$s/seq-01" ]; then echo "$s: already there"; continue; fi
  echo "$s"
  fetch "$URL/$s.zip" "$DEST/$s.zip"
  unzip -q -o "$DEST/$s.zip" -d "$DEST"
  rm "$DEST/$s.zip"
  # each scene zip holds one zip per sequence; unpack them all (evaluation uses seq-01)
  for z in "$DEST/$s"/seq-*.zip; do
    unzip -q -o "$z" -d "$DEST/$s"
    rm "$z"
  done
done
echo "7-Scenes ready in $DEST"
