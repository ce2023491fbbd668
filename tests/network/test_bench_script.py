"""The network benchmark's CPU path (--small) runs and writes sensible JSON."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("torch_threads")

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_network.py"


def test_bench_network_small(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_network", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "bench.json"
    rc = mod.main(["--small", "--device", "cpu", "--iters", "1", "--warmup", "1", "--pairs", "1",
                   "--variants", "original,bf16", "--out", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert set(res["variants"]) == {"original", "bf16"}
    for name, v in res["variants"].items():
        assert "error" not in v, v.get("traceback")
        assert set(v["timings"]) == {"encode", "pair", "frame", "sym1"}
        assert all(t["median_ms"] > 0 for t in v["timings"].values())
    orig = res["variants"]["original"]["errors_vs_fp32"]["fixtures"]
    assert orig["pts3d_rel_max"] < 1e-5 and orig["desc_cos_min"] > 0.99999  # fp32 on the CPU == reference
    bf16 = res["variants"]["bf16"]["errors_vs_fp32"]["synthetic_pair"]
    assert 0 < bf16["pts3d_rel_median"] < 0.1 and bf16["desc_cos_mean"] > 0.99
    assert res["variants"]["bf16"]["weight_bytes"] * 2 < res["variants"]["original"]["weight_bytes"] * 1.01
    table = capsys.readouterr().out
    assert "| original |" in table and "| bf16 |" in table
