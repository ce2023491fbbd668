"""Decode batches split into captured chunk sizes (CUDA graphs), checked on the CPU with an eager stand-in graph."""
from __future__ import annotations

import copy

import pytest
import torch

from mast3r_slam.network import TINY
from mast3r_slam.network.cuda_graphs import CudaGraphRunner, _Entry, _tree_map
from mast3r_slam.network.mast3r import plan_chunks
from mast3r_slam.network.synthetic import synthetic_model

pytestmark = pytest.mark.usefixtures("torch_threads")


def test_plan_chunks():
    sizes = (1, 2, 4, 8)
    assert plan_chunks(1, sizes) == [(0, 1, 1)]
    assert plan_chunks(6, sizes) == [(0, 4, 4), (4, 6, 2)]
    assert plan_chunks(11, sizes) == [(0, 8, 8), (8, 10, 2), (10, 11, 1)]
    assert plan_chunks(16, sizes) == [(0, 8, 8), (8, 16, 8)]
    # without size 1 the remainder is padded up to the smallest size
    assert plan_chunks(5, (2, 4)) == [(0, 4, 4), (4, 5, 2)]
    assert plan_chunks(3, (8,)) == [(0, 3, 8)]
    for n in range(1, 40):
        ch = plan_chunks(n, sizes)
        assert ch[0][0] == 0 and ch[-1][1] == n and all(a[1] == b[0] for a, b in zip(ch, ch[1:]))
        assert all(stop - start == size for start, stop, size in ch)  # no padding with size 1 present
    with pytest.raises(ValueError):
        plan_chunks(0, sizes)


class _EagerGraph:
    """Stands in for a CUDA graph on the CPU: replay() recomputes fn on the static inputs in place."""

    def __init__(self, fn, inputs, kwargs, outputs):
        self.fn, self.inputs, self.kwargs, self.outputs = fn, inputs, kwargs, outputs
        self.replays = 0

    def replay(self):
        self.replays += 1
        new = self.fn(*self.inputs, **self.kwargs)
        flat_new, flat_out = [], []
        _tree_map(flat_new.append, new)
        _tree_map(flat_out.append, self.outputs)
        for o, n in zip(flat_out, flat_new):
            o.copy_(n)


def _eager_capture(self, tensors, kwargs):
    inputs = tuple(t.clone() for t in tensors)
    outputs = self.fn(*inputs, **kwargs)
    return _Entry(_EagerGraph(self.fn, inputs, kwargs, outputs), inputs, outputs)


@pytest.fixture
def model_with_fake_graphs(monkeypatch):
    torch.manual_seed(0)
    m = synthetic_model(TINY)
    monkeypatch.setattr(CudaGraphRunner, "_capture", _eager_capture)
    m._dec_graphs = CudaGraphRunner(m._decode_fn)  # enable_cuda_graphs refuses a CPU model
    return m


def test_chunked_decode_equals_eager(model_with_fake_graphs):
    m = model_with_fake_graphs
    eager = copy.deepcopy(m)
    eager._dec_graphs = None
    torch.manual_seed(1)
    imgs = torch.rand(6, 3, 48, 64) * 2 - 1
    f, p = m.encode(imgs)
    j = torch.tensor([1, 2, 3, 4, 5, 0])
    sh = (48, 64)
    for n in (1, 2, 3, 6, 5, 6):  # 3 = 2 + 1, 6 = 4 + 2, 5 = 4 + 1; repeated sizes replay
        ref = eager.decode(f[:n], p[:n], f[j][:n], p[j][:n], sh, sh)
        out = m.decode(f[:n], p[:n], f[j][:n], p[j][:n], sh, sh)
        for r_ref, r in zip(ref, out):
            for k in r_ref:
                assert r[k].shape == r_ref[k].shape
                torch.testing.assert_close(r[k], r_ref[k], rtol=1e-4, atol=1e-4)  # batch-size dependent GEMM rounding
    keys = sorted(k[0] for k in m._dec_graphs._graphs)
    assert keys == [1, 2, 4]  # only the chunk sizes were captured
    # returned tensors are not the static buffers (a later replay must not change them)
    out1 = m.decode(f[:1], p[:1], f[1:2], p[1:2], sh, sh)
    keep = out1[0]["pts3d"].clone()
    m.decode(f[2:3], p[2:3], f[3:4], p[3:4], sh, sh)
    assert torch.equal(out1[0]["pts3d"], keep)


def test_chunked_decode_with_padding(model_with_fake_graphs):
    m = model_with_fake_graphs
    m.graph_batch_sizes = (4,)
    eager = copy.deepcopy(m)
    eager._dec_graphs = None
    torch.manual_seed(2)
    f, p = m.encode(torch.rand(5, 3, 48, 64) * 2 - 1)
    sh = (48, 64)
    for n in (3, 5, 1):  # first capture with padded rows, then partial chunks
        ref = eager.decode(f[:n], p[:n], f[:n].flip(0), p[:n].flip(0), sh, sh)
        out = m.decode(f[:n], p[:n], f[:n].flip(0), p[:n].flip(0), sh, sh)
        for r_ref, r in zip(ref, out):
            for k in r_ref:
                torch.testing.assert_close(r[k], r_ref[k], rtol=1e-4, atol=1e-4)  # batch-size dependent GEMM rounding
    assert list(m._dec_graphs._graphs) and all(k[0] == 4 for k in m._dec_graphs._graphs)


def test_enable_cuda_graphs_batch_sizes_checked():
    m = synthetic_model(TINY)
    with pytest.raises(ValueError, match="CUDA"):
        m.enable_cuda_graphs(True, batch_sizes=(1, 2))
