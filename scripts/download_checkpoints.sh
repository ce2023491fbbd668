#!/usr/bin/env bash
# Download the three official MASt3R files into checkpoints/ (or the folder given as $1).
#   bash scripts/download_checkpoints.sh [DIR]
# Resumable: re-running continues partial downloads and skips finished files.
# Licence of the weights: CC BY-NC-SA 4.0 plus NAVER's CHECKPOINTS_NOTICE (non-commercial use).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="${1:-checkpoints}"
BASE="${MAST3R_CHECKPOINT_URL:-https://download.europe.naverlabs.com/ComputerVision/MASt3R}"  # override for a mirror
# name and minimum plausible size in bytes (a smaller file is an incomplete download)
FILES=(
  "MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric.pth 2700000000"
  "MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric_retrieval_trainingfree.pth 4000000"
  "MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric_retrieval_codebook.pkl 260000000"
)
mkdir -p "$DIR"

fetch() {  # fetch URL OUT (resuming OUT.part)
  local url="$1" out="$2"
  if command -v wget >/dev/null 2>&1; then
    wget -c --tries=5 -O "$out.part" "$url"
  elif command -v curl >/dev/null 2>&1; then
    curl -fL --retry 5 -C - -o "$out.part" "$url"
  else
    echo "error: neither wget nor curl is installed" >&2
    exit 1
  fi
  mv "$out.part" "$out"
}

for entry in "${FILES[@]}"; do
  read -r name min_size <<<"$entry"
  out="$DIR/$name"
  if [ -f "$out" ] && [ "$(stat -c %s "$out")" -ge "$min_size" ]; then
    echo "ok: $out"
    continue
  fi
  echo "downloading $name"
  fetch "$BASE/$name" "$out"
  size="$(stat -c %s "$out")"
  if [ "$size" -lt "$min_size" ]; then
    echo "error: $out has $size bytes, expected at least $min_size; delete it and run again" >&2
    exit 1
  fi
done
echo "all MASt3R files are in $DIR"
