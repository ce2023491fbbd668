#!/usr/bin/env bash
# GPU tests and benchmarks in one go (used on the lent H100; see docs/GPU.md).
#   bash scripts/gpu_suite.sh [network] [ops] [e2e] [all]      results under ${OUT:-gpu_results}
# Optional: wheels in .whl/ are installed to /tmp/site first (for machines without internet).
set -u
OUT="${OUT:-gpu_results}"; mkdir -p "$OUT"
stages="${*:-all}"
has() { [[ " $stages " == *" $1 "* || " $stages " == *" all "* ]]; }
PY="${PYTHON:-python3}"
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
$PY -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, torch.version.cuda, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt"
$PY -c "import importlib; [print(m, 'ok' if importlib.util.find_spec(m) else 'MISSING') for m in ('cv2','yaml','PIL','tqdm','pytest','einops','numpy')]" | tee -a "$OUT/gpu.txt"
if has network; then
  $PY -m pytest -q -m cuda tests/network -p no:cacheprovider 2>&1 | tail -25 | tee "$OUT/pytest_network.txt"
  timeout 420 $PY benchmarks/bench_network.py --out "$OUT/bench_network.json" 2>&1 | tee "$OUT/bench_network.txt" | tail -40
fi
if has ops; then
  ( time $PY -c "from mast3r_slam.ops import _backend as b; print(b.get_extension())" ) 2>&1 | tail -5 | tee "$OUT/build.txt"
  $PY -m pytest -q -m cuda tests/ops tests/test_lie.py tests/priors -p no:cacheprovider 2>&1 | tail -25 | tee "$OUT/pytest_ops.txt"
  timeout 300 $PY benchmarks/bench_kernels.py --check --out "$OUT/bench_kernels.json" 2>&1 | tee "$OUT/bench_kernels.txt" | tail -30
fi
if has e2e; then
  timeout 420 $PY benchmarks/bench_e2e.py --device cuda --out "$OUT/bench_e2e.json" 2>&1 | tee "$OUT/bench_e2e.txt" | tail -40
fi
