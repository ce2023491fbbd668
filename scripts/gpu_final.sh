#!/usr/bin/env bash
# One-call GPU verification + benchmarks (docs/GPU.md): CUDA tests, kernel, end-to-end and network benchmarks.
set -u
OUT="${OUT:-gpu_results}"; mkdir -p "$OUT"
PY="${PYTHON:-python3}"
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
$PY -c "from mast3r_slam.ops import _backend as b; print(b.get_extension())" >> "$OUT/gpu.txt" 2>&1
$PY -m pytest -q -m cuda tests/ops tests/priors tests/dynamic tests/network tests/test_lie.py -p no:cacheprovider > "$OUT/pytest_cuda.txt" 2>&1; echo "pytest rc=$?"; tail -3 "$OUT/pytest_cuda.txt"
timeout 150 $PY benchmarks/bench_kernels.py --check --out "$OUT/bench_kernels.json" > "$OUT/bench_kernels.txt" 2>&1; echo "bench_kernels rc=$?"; tail -14 "$OUT/bench_kernels.txt"
mkdir -p /tmp/e2e; timeout 200 $PY benchmarks/bench_e2e.py --device cuda --out /tmp/e2e/bench_e2e.json > "$OUT/bench_e2e.txt" 2>&1; echo "bench_e2e rc=$?"; cp /tmp/e2e/bench_e2e.json "$OUT/" 2>/dev/null; grep -v "^NOTE\|^mast3r_slam.ops" "$OUT/bench_e2e.txt" | tail -60
timeout 200 $PY benchmarks/bench_e2e.py --device cuda --set dynamic.enabled=false --out /tmp/e2e/bench_e2e_static_world.json > "$OUT/bench_e2e_static_world.txt" 2>&1; echo "bench_e2e (dynamic off) rc=$?"; cp /tmp/e2e/bench_e2e_static_world.json "$OUT/" 2>/dev/null; grep "^|" "$OUT/bench_e2e_static_world.txt" | head -4
timeout 150 $PY benchmarks/profile_frame.py --device cuda --set dynamic.enabled=true --top 15 --out "$OUT/profile_dynamic.json" > "$OUT/profile_dynamic.txt" 2>&1; echo "profile_dynamic rc=$?"; grep -A22 "^## " "$OUT/profile_dynamic.txt"
timeout 150 $PY benchmarks/bench_network.py ${NETWORK_ARGS:---variants original,fp16-h16-cl --pairs 1,4} --out "$OUT/bench_network.json" > "$OUT/bench_network.txt" 2>&1; echo "bench_network rc=$?"; grep "^|" "$OUT/bench_network.txt" | head -8
