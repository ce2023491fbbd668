"""Fixtures of the kernel tests: the golden npz files of the original kernels."""
from __future__ import annotations

import pytest

from kernel_helpers import load_npz


@pytest.fixture(scope="session")
def golden_matching() -> dict:
    return load_npz("golden_matching.npz")


@pytest.fixture(scope="session")
def golden_gn() -> dict:
    return load_npz("golden_gn.npz")


@pytest.fixture(autouse=True)
def _one_thread():
    """The kernel tests use small tensors: one intra-op thread is faster than two, and far faster
    when the (2-core) machine is loaded. The previous setting is restored after each test."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
