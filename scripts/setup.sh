#!/usr/bin/env bash
# Set up a virtual environment in .venv for MASt3R-SLAM on a fresh Linux machine.
#   bash scripts/setup.sh          runtime (+ viewer + RealSense extras)
#   bash scripts/setup.sh --test   the same plus the test tools
# CPU machines get the CPU build of PyTorch (pinned, small); on a GPU machine install your CUDA
# build of torch into .venv first and this script keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."

# System libraries: Mesa EGL for the headless viewer, libusb for pyrealsense2.
if command -v apt-get >/dev/null 2>&1 && command -v dpkg >/dev/null 2>&1; then
  need=""
  for p in libegl1 libegl-mesa0 libgl1-mesa-dri libusb-1.0-0; do
    dpkg -s "$p" >/dev/null 2>&1 || need="$need $p"
  done
  if [ -n "$need" ]; then
    SUDO=""; [ "$(id -u)" != 0 ] && SUDO="sudo"
    echo "installing system packages:$need"
    ($SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends $need >/dev/null) \
      || echo "warning: could not install$need (viewer/RealSense features will be unavailable)"
  fi
fi

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for c in python3.11 python3.12 python3.10 python3; do command -v "$c" >/dev/null 2>&1 && PY="$c" && break; done
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  .venv/bin/python -m pip install -q "torch==2.13.0" \
    || .venv/bin/python -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu
fi
extras="viz,realsense"
[ "${1:-}" = "--test" ] && extras="$extras,test"
.venv/bin/python -m pip install -q -e ".[$extras]"
echo "environment ready: .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
