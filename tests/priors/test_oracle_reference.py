"""The ground-truth prior after its per-frame work moved to torch (issue 7) gives the outputs of
the original numpy/OpenCV implementation, saved in tests/fixtures/oracle/reference.npz by
tests/fixtures/oracle/make_reference.py (same seeds -> same outputs, to float32 rounding)."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "oracle"
_spec = importlib.util.spec_from_file_location("oracle_make_reference", FIX / "make_reference.py")
mr = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mr)


@pytest.fixture(scope="module")
def ref():
    return np.load(FIX / "reference.npz")


def _compare(out: dict, ref, name: str) -> dict:
    worst = {}
    for k, v in out.items():
        r = ref[f"{name}/{k}"]
        v = np.asarray(v, np.float64)
        assert v.shape == r.shape, (name, k)
        if k.endswith("_sum"):  # sums over all pixels of every output
            np.testing.assert_allclose(v, r, rtol=2e-6, atol=1e-3, err_msg=f"{name}/{k}")
        else:
            np.testing.assert_allclose(v, r, rtol=1e-5, atol=1e-5, err_msg=f"{name}/{k}")
        worst[k] = float(np.abs(v - r).max())
    return worst


@pytest.mark.parametrize("case", ["loop", "dyn", "lost"])
def test_synthetic_outputs_equal_the_original_implementation(case, make_seq, ref):
    spec, img, pairs, ov = mr.CASES[case]
    worst = _compare(mr.outputs(make_seq(spec), img, pairs, ov), ref, case)
    assert worst["X"] < 1e-5 and worst["D"] < 1e-6 and worst["median_depth"] < 1e-6, worst


@pytest.mark.skipif(not (FIX.parents[1] / "data" / "tum_fr1_rpy" / "rgb.txt").is_file(), reason="tests/data/tum_fr1_rpy not present")
def test_real_depth_with_holes_equals_the_original_implementation(ref):
    spec, img, pairs, ov = mr.CASES["tum"]
    _compare(mr.outputs(mr.open_dataset(spec), img, pairs, ov), ref, "tum")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_outputs_equal_the_original_implementation(make_seq, ref):
    """On the GPU the descriptors go through cuDNN convolutions (TF32 allowed), so D/Q get a looser bound."""
    spec, img, pairs, ov = mr.CASES["loop"]
    out = mr.outputs(make_seq(spec), img, pairs, ov, device="cuda")
    for k in ("X", "Xm", "C", "Cm", "median_depth"):
        np.testing.assert_allclose(out[k], ref[f"loop/{k}"], rtol=1e-4, atol=1e-4, err_msg=k)
    np.testing.assert_allclose(out["D"], ref["loop/D"], atol=2e-2)
    np.testing.assert_allclose(out["Q"], ref["loop/Q"], rtol=2e-2, atol=2e-2)
