"""Dispatch rules of mast3r_slam.ops and the lazy extension loader."""
from __future__ import annotations

import warnings

import pytest
import torch

from mast3r_slam import ops
from mast3r_slam.errors import Mast3rSlamError
from mast3r_slam.ops import _backend

from kernel_helpers import requires_cuda


def test_public_api_is_exported():
    for name in ops.__all__:
        assert hasattr(ops, name), name
    for op in ("iter_proj", "refine_matches", "gauss_newton_rays", "gauss_newton_calib", "gauss_newton_points", "track_rays", "track_calib"):
        assert op in ops.__all__
    assert issubclass(ops.KernelArgumentError, Mast3rSlamError) and issubclass(ops.KernelArgumentError, ValueError)


def test_cpu_tensors_use_torch_without_touching_the_extension(monkeypatch):
    _backend._reset_for_tests()
    for mode in ("auto", "torch", "cuda"):
        monkeypatch.setenv("MAST3R_SLAM_OPS", mode)
        assert ops.backend_for("cpu") == "torch"
    assert _backend.extension_status() == "not loaded"  # importing / CPU calls never build anything


def test_bad_mode_is_reported(monkeypatch):
    monkeypatch.setenv("MAST3R_SLAM_OPS", "gpu")
    with pytest.raises(ops.KernelArgumentError, match="MAST3R_SLAM_OPS"):
        ops.backend_for("cpu")


def test_failed_load_is_cached_with_one_warning(monkeypatch):
    _backend._reset_for_tests()
    monkeypatch.setenv("MAST3R_SLAM_JIT", "0")
    monkeypatch.setattr(_backend.importlib, "import_module", lambda name: (_ for _ in ()).throw(ImportError("no _C")))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _backend.get_extension() is None
        assert _backend.get_extension() is None
    assert len([w for w in caught if "PyTorch implementations" in str(w.message)]) == 1
    status = _backend.extension_status()
    assert status.startswith("unavailable") and "MAST3R_SLAM_JIT=0" in status
    _backend._reset_for_tests()


def test_forcing_cuda_without_extension_raises(monkeypatch):
    _backend._reset_for_tests()
    monkeypatch.setenv("MAST3R_SLAM_JIT", "0")
    monkeypatch.setattr(_backend.importlib, "import_module", lambda name: (_ for _ in ()).throw(ImportError("no _C")))
    monkeypatch.setenv("MAST3R_SLAM_OPS", "cuda")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(Mast3rSlamError, match="MAST3R_SLAM_OPS=cuda"):
            ops._extension("iter_proj", torch.device("cuda", 0))
    monkeypatch.setenv("MAST3R_SLAM_OPS", "auto")
    assert ops._extension("iter_proj", torch.device("cuda", 0)) is None
    _backend._reset_for_tests()


@requires_cuda
@pytest.mark.cuda
def test_extension_loads_on_gpu_machine():
    _backend._reset_for_tests()
    ext = _backend.get_extension()
    assert ext is not None, _backend.extension_status()
    assert ext.ABI_VERSION == _backend.ABI_VERSION
    for name in ("iter_proj", "refine_matches", "gauss_newton_rays", "gauss_newton_calib", "gauss_newton_points", "track_rays", "track_calib"):
        assert hasattr(ext, name), name
    assert ops.backend_for("cuda") == "cuda"
