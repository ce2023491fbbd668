"""Lazy access to the CUDA extension ``mast3r_slam._C``.

Nothing is built or imported when :mod:`mast3r_slam.ops` is imported. The first op called with
CUDA tensors asks :func:`get_extension`, which tries, in this order:

1. the prebuilt module ``mast3r_slam._C`` (``setup.py`` builds it when CUDA and nvcc are present);
2. a JIT build of ``csrc/`` with :func:`torch.utils.cpp_extension.load` into torch's extension
   cache (``TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``); one message is
   printed before compiling; a ``lock`` file older than 10 minutes, left by an interrupted build,
   is removed first; ``MAST3R_SLAM_JIT=0`` disables this step;
3. nothing: one warning line, and the ops use their PyTorch implementations.

The outcome (module or failure reason) is cached for the process, so a failed build is not
retried on every call.
"""
from __future__ import annotations

import importlib
import os
import sys
import threading
import time
import warnings
from pathlib import Path

import torch

# Bumped whenever a binding's signature changes; a prebuilt module with another value is stale.
ABI_VERSION = 2
_EXT_NAME = "mast3r_slam_kernels"
_STALE_LOCK_S = 600.0
CSRC_DIR = Path(__file__).resolve().parents[2] / "csrc"

_lock = threading.Lock()
_state: dict = {"tried": False, "module": None, "source": None, "error": None}


def _check_abi(mod) -> None:
    found = getattr(mod, "ABI_VERSION", None)
    if found != ABI_VERSION:
        raise ImportError(f"{mod.__name__} has ABI_VERSION {found}, expected {ABI_VERSION} (rebuild it)")


def _sources() -> list[str]:
    files = sorted(CSRC_DIR.glob("*.cpp")) + sorted(CSRC_DIR.glob("*.cu"))
    if not files:
        raise RuntimeError(f"no CUDA sources in {CSRC_DIR} (the JIT build needs a source checkout)")
    return [str(f) for f in files]


def _remove_stale_lock() -> None:
    try:
        from torch.utils.cpp_extension import _get_build_directory

        lock = Path(_get_build_directory(_EXT_NAME, verbose=False)) / "lock"
    except Exception:  # private helper moved: leave locks to torch
        return
    try:
        if lock.exists() and time.time() - lock.stat().st_mtime > _STALE_LOCK_S:
            lock.unlink()
            print(f"mast3r_slam.ops: removed a stale build lock {lock}", file=sys.stderr)
    except OSError:
        pass


def _jit_build():
    if os.environ.get("MAST3R_SLAM_JIT", "1").lower() in ("0", "false", "no"):
        raise RuntimeError("JIT build disabled by MAST3R_SLAM_JIT=0")
    if torch.version.cuda is None:
        raise RuntimeError("this PyTorch build has no CUDA support")
    from torch.utils.cpp_extension import CUDA_HOME, load

    if CUDA_HOME is None:
        raise RuntimeError("nvcc not found (set CUDA_HOME)")
    sources = _sources()
    _remove_stale_lock()
    print(
        "mast3r_slam.ops: compiling the CUDA kernels (first use only, 1-2 minutes; cached in torch's extension directory)...",
        file=sys.stderr,
        flush=True,
    )
    verbose = os.environ.get("MAST3R_SLAM_BUILD_VERBOSE", "0") == "1"
    mod = load(
        name=_EXT_NAME,
        sources=sources,
        extra_include_paths=[str(CSRC_DIR)],
        extra_cflags=["-O3"],
        extra_cuda_cflags=["-O3", "-lineinfo"],
        verbose=verbose,
    )
    _check_abi(mod)
    return mod


def get_extension():
    """The CUDA extension module, or None if it cannot be had (reason: :func:`extension_status`)."""
    if _state["tried"]:
        return _state["module"]
    with _lock:
        if _state["tried"]:
            return _state["module"]
        errors = []
        try:
            mod = importlib.import_module("mast3r_slam._C")
            _check_abi(mod)
            _state.update(module=mod, source="prebuilt")
        except Exception as e:  # ImportError or a stale module
            errors.append(f"prebuilt: {e}")
            try:
                mod = _jit_build()
                _state.update(module=mod, source="jit")
            except Exception as e2:
                msg = str(e2).strip().splitlines()
                errors.append(f"jit: {msg[-1] if msg else type(e2).__name__}")
        if _state["module"] is None:
            _state["error"] = "; ".join(errors)
            warnings.warn(
                f"mast3r_slam.ops: CUDA kernels unavailable, using the PyTorch implementations ({_state['error']})",
                RuntimeWarning,
                stacklevel=3,
            )
        _state["tried"] = True
        return _state["module"]


def extension_status() -> str:
    """'prebuilt', 'jit', 'not loaded' (nothing tried yet) or 'unavailable: <reason>'."""
    if not _state["tried"]:
        return "not loaded"
    if _state["module"] is not None:
        return _state["source"]
    return f"unavailable: {_state['error']}"


def _reset_for_tests() -> None:
    _state.update(tried=False, module=None, source=None, error=None)
