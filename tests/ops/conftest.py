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
