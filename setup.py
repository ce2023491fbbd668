"""Build script.

`pip install -e .` compiles nothing unless a CUDA build of PyTorch *and* nvcc are visible to the
build (use `--no-build-isolation` so the build sees your installed torch). Otherwise the CUDA
extension in `csrc/` is compiled on first use and cached (see `mast3r_slam/ops/_backend.py`), and
without CUDA every kernel runs through its PyTorch implementation.

Environment:
  MAST3R_SLAM_BUILD_CUDA=0   never build the extension here
  MAST3R_SLAM_BUILD_CUDA=1   require it (fail loudly if CUDA torch or nvcc is missing)
  (unset)                    build it when possible, skip silently otherwise
"""
import glob
import os

from setuptools import setup


def _cuda_extension():
    flag = os.environ.get("MAST3R_SLAM_BUILD_CUDA", "auto").lower()
    if flag in ("0", "false", "no"):
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension
    except ImportError:
        if flag in ("1", "true", "yes"):
            raise RuntimeError("MAST3R_SLAM_BUILD_CUDA=1 needs torch in the build environment: use --no-build-isolation")
        return [], {}
    if torch.version.cuda is None or CUDA_HOME is None:
        if flag in ("1", "true", "yes"):
            raise RuntimeError("MAST3R_SLAM_BUILD_CUDA=1 needs a CUDA build of torch and nvcc (CUDA_HOME)")
        return [], {}
    here = os.path.dirname(os.path.abspath(__file__))
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "*.cu")))
    ext = CUDAExtension(
        name="mast3r_slam._C",
        sources=sources,
        include_dirs=[os.path.join(here, "csrc")],
        extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3", "-lineinfo"]},
    )
    return [ext], {"build_ext": BuildExtension}


ext_modules, cmdclass = _cuda_extension()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
