"""Helpers of the kernel tests (imported as a top-level module: pytest puts this folder on sys.path)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mast3r_slam.lie import Sim3

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "kernels"

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def load_npz(name: str) -> dict:
    with np.load(FIXTURES / name) as d:
        return {k: torch.from_numpy(np.array(d[k])) for k in d.files}


def surface_points(H: int, W: int, K: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """A smooth depth surface on the pixel rays of K, [HW, 3] (row-major)."""
    v, u = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    z = 2.0 + 0.5 * torch.sin(u / 5.0) + 0.3 * torch.cos(v / 4.0)
    X = torch.stack([(u - K[0, 2]) / K[0, 0] * z, (v - K[1, 2]) / K[1, 1] * z, z], -1).reshape(-1, 3)
    return X.to(dtype)


def random_sim3(gen: torch.Generator, rot: float = 0.1, trans: float = 0.1, log_scale: float = 0.1) -> torch.Tensor:
    xi = torch.cat(
        [
            (torch.rand(3, generator=gen, dtype=torch.float64) - 0.5) * 2 * trans,
            (torch.rand(3, generator=gen, dtype=torch.float64) - 0.5) * 2 * rot,
            (torch.rand(1, generator=gen, dtype=torch.float64) - 0.5) * 2 * log_scale,
        ]
    )
    return Sim3.exp(xi)
