"""Shared fixtures of the network tests."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def torch_threads(request):
    """Run a module's tests with ``request.param`` intra-op threads (restored afterwards).

    Tiny networks are faster on one thread, and one thread does not collapse when other
    processes compete for the 2 CI cores.
    """
    old = torch.get_num_threads()
    torch.set_num_threads(getattr(request, "param", 1))
    yield
    torch.set_num_threads(old)
