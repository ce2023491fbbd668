"""Precision switch on the CPU (toy network): weight dtypes, fp32 outputs, bounded error."""
from __future__ import annotations

import copy

import pytest
import torch

from mast3r_slam.network import TINY, as_dtype
from mast3r_slam.network.synthetic import synthetic_model

pytestmark = pytest.mark.usefixtures("torch_threads")


@pytest.fixture(scope="module")
def fp32_model():
    return synthetic_model(TINY)


def _run(m, a, b):
    fa, pa = m.encode(a)
    fb, pb = m.encode(b)
    return m.decode(fa, pa, fb, pb, tuple(a.shape[-2:]), tuple(b.shape[-2:]))


def test_bf16_trunk_keeps_norms_and_heads_fp32(fp32_model):
    torch.manual_seed(0)
    a, b = torch.rand(2, 1, 3, 48, 64) * 2 - 1
    ref = _run(fp32_model, a, b)
    m = copy.deepcopy(fp32_model).configure(dtype="bf16")
    assert m.trunk_dtype == torch.bfloat16
    assert m.decoder.blocks2[0].cross_attn.projk.weight.dtype == torch.bfloat16
    assert m.encoder.norm.weight.dtype == torch.float32 and m.decoder.blocks1[1].norm_y.weight.dtype == torch.float32
    assert m.head1.head_local_features.fc1.weight.dtype == torch.bfloat16  # stored half, computed fp32
    out = _run(m, a, b)
    for r_ref, r in zip(ref, out):
        assert all(v.dtype == torch.float32 for v in r.values())
        rel = ((r["pts3d"] - r_ref["pts3d"]).norm(dim=-1) / r_ref["pts3d"].norm(dim=-1)).median()
        cos = (r["desc"] * r_ref["desc"]).sum(-1).mean()
        assert 0 < rel < 5e-2 and cos > 0.99
    m32h = copy.deepcopy(fp32_model).configure(dtype=torch.bfloat16, head_weight_dtype=torch.float32)
    assert m32h.head2.dpt.head[0].weight.dtype == torch.float32
    nbytes = lambda mm: sum(p.numel() * p.element_size() for p in mm.parameters())  # noqa: E731
    assert nbytes(m) < 0.51 * nbytes(fp32_model) < nbytes(m32h)


def test_dtype_names():
    assert as_dtype("fp16") == torch.float16 and as_dtype("bfloat16") == torch.bfloat16
    with pytest.raises(ValueError, match="dtype"):
        as_dtype("int8")
    with pytest.raises(ValueError, match="dtype"):
        as_dtype(torch.float64)
