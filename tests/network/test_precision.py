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


def test_paired_decoder_streams_equal_one_by_one(fp32_model):
    m = copy.deepcopy(fp32_model)
    torch.manual_seed(1)
    a, b = torch.rand(2, 2, 3, 48, 64) * 2 - 1
    fa, pa = m.encode(a)
    fb, pb = m.encode(b)
    paired = m.decode(fa, pa, fb, pb, (48, 64), (48, 64), return_tokens=True)
    st = m.decoder._stacks
    assert st is not None and st[0]["mlp.fc1.weight"].shape == (2, 4 * TINY.dec_embed_dim, TINY.dec_embed_dim)
    # the per-stream parameters are views of the stacked tensors (no duplicated memory)
    assert m.decoder.blocks2[0].mlp.fc1.weight.data_ptr() == st[0]["mlp.fc1.weight"][1].data_ptr()
    m.decoder.paired = False
    single = m.decode(fa, pa, fb, pb, (48, 64), (48, 64), return_tokens=True)
    for t_p, t_s in zip(paired[2] + paired[3], single[2] + single[3]):
        torch.testing.assert_close(t_p, t_s, rtol=1e-5, atol=1e-5)
    for r_p, r_s in zip(paired[:2], single[:2]):
        for k in r_p:
            torch.testing.assert_close(r_p[k], r_s[k], rtol=1e-4, atol=1e-5)
    # views with different token counts run the streams one by one
    m.decoder.paired = True
    c = torch.rand(2, 3, 64, 64) * 2 - 1
    fc, pc = m.encode(c)
    r1, r2 = m.decode(fa, pa, fc, pc, (48, 64), (64, 64))
    assert r1["pts3d"].shape == (2, 48, 64, 3) and r2["pts3d"].shape == (2, 64, 64, 3)


def test_stacked_weights_follow_configure(fp32_model):
    m = copy.deepcopy(fp32_model)
    m.configure(dtype="bf16")
    st = m.decoder._stacks
    assert st[0]["attn.qkv.weight"].dtype == torch.bfloat16 and st[0]["norm1.weight"].dtype == torch.float32
    assert m.decoder.blocks1[3].attn.qkv.weight.data_ptr() == st[3]["attn.qkv.weight"][0].data_ptr()
    # a change of the weights behind the decoder's back is noticed: stacks are rebuilt
    m.decoder.blocks2[1].mlp.fc2.bias = torch.nn.Parameter(torch.zeros_like(m.decoder.blocks2[1].mlp.fc2.bias))
    f, p = m.encode(torch.zeros(1, 3, 48, 64))
    m.decode(f, p, f, p, (48, 64), (48, 64))
    assert float(m.decoder._stacks[1]["mlp.fc2.bias"][1].abs().max()) == 0.0


def test_share_memory_keeps_stacked_views(fp32_model):
    m = copy.deepcopy(fp32_model)
    f, p = m.encode(torch.zeros(1, 3, 48, 64))
    m.decode(f, p, f, p, (48, 64), (48, 64))
    m.share_memory()
    w = m.decoder.blocks1[2].attn.proj.weight
    assert w.is_shared() and w.data_ptr() == m.decoder._stacks[2]["attn.proj.weight"][0].data_ptr()


def test_channels_last_heads_equal(fp32_model):
    m = copy.deepcopy(fp32_model)
    torch.manual_seed(2)
    a = torch.rand(1, 3, 80, 48) * 2 - 1  # odd 5x3 grid
    ref = _run(m, a, a)
    m.set_channels_last(True)
    assert m.head1.dpt.scratch.refinenet1.out_conv.weight.is_contiguous(memory_format=torch.channels_last)
    out = _run(m, a, a)
    for r_ref, r in zip(ref, out):
        for k in r:
            torch.testing.assert_close(r[k], r_ref[k], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("head, pts_median, cos_mean", [("fp16", 1e-2, 0.99999), ("bf16", 6e-2, 0.9999)])
def test_half_heads(fp32_model, head, pts_median, cos_mean):
    """Heads computing in fp16 / bf16 (fp32 trunk): half weights, fp32 outputs, bounded error.

    Bounds from the CPU emulation of the ViT-L heads on the fixture inputs and a 192x256 pair
    (docs/NETWORK.md): fp16 pts3d median 2.7e-3, desc cos 0.9999999; bf16 1.9e-2, 0.99999.
    """
    torch.manual_seed(3)
    a, b = torch.rand(2, 1, 3, 48, 64) * 2 - 1
    ref = _run(fp32_model, a, b)
    m = copy.deepcopy(fp32_model).configure(head_dtype=head)
    dt = as_dtype(head)
    assert m.head_dtype == dt and m.trunk_dtype == torch.float32
    assert m.head1.head_local_features.fc2.weight.dtype == dt and m.head2.dpt.head[2].weight.dtype == dt
    assert m.decoder.blocks1[0].mlp.fc1.weight.dtype == torch.float32
    out = _run(m, a, b)
    for r_ref, r in zip(ref, out):
        assert all(v.dtype == torch.float32 for v in r.values())
        rel = ((r["pts3d"] - r_ref["pts3d"]).norm(dim=-1) / r_ref["pts3d"].norm(dim=-1)).median()
        cos = (r["desc"] * r_ref["desc"]).sum(-1).mean()
        crel = ((r["conf"] - r_ref["conf"]).abs() / r_ref["conf"]).median()
        assert 0 < rel < pts_median and cos > cos_mean and crel < pts_median
    # back to fp32 heads: exact again (weights were rounded to half, so compare with a rounded model)
    m.configure(head_dtype="fp32")
    assert m.head_dtype == torch.float32 and m.head1.head_local_features.fc1.weight.dtype == torch.float32


def test_head_weight_storage_follows_head_dtype(fp32_model):
    m = copy.deepcopy(fp32_model).configure(dtype="fp16", head_dtype="bf16")
    assert m.head1.dpt.scratch.refinenet2.out_conv.weight.dtype == torch.bfloat16
    m = copy.deepcopy(fp32_model).configure(dtype="fp16", head_dtype="fp16", head_weight_dtype="fp32")
    assert m.head1.dpt.head[0].weight.dtype == torch.float32 and m.head_dtype == torch.float16
    m = copy.deepcopy(fp32_model).configure(dtype="fp16")  # fp32 heads, half storage (as before)
    assert m.head_dtype == torch.float32 and m.head1.dpt.head[0].weight.dtype == torch.float16


def test_half_heads_channels_last_equal(fp32_model):
    m = copy.deepcopy(fp32_model).configure(head_dtype="bf16")
    torch.manual_seed(4)
    a = torch.rand(1, 3, 80, 48) * 2 - 1
    ref = _run(m, a, a)
    m.set_channels_last(True)
    out = _run(m, a, a)
    for r_ref, r in zip(ref, out):
        rel = ((r["pts3d"] - r_ref["pts3d"]).norm(dim=-1) / r_ref["pts3d"].norm(dim=-1)).median()
        assert rel < 2e-2  # same function, bf16 rounding at different points of the sums


@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_patchwise_conv_transpose(k, channels_last, bias):
    from mast3r_slam.network.heads import F32ConvTranspose2d

    torch.manual_seed(k)
    conv = F32ConvTranspose2d(12, 7, k, stride=k, bias=bias)
    x = torch.randn(2, 12, 3, 5)
    ref = torch.nn.functional.conv_transpose2d(x, conv.weight, conv.bias, stride=k)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        conv.weight = torch.nn.Parameter(conv.weight.detach().contiguous(memory_format=torch.channels_last))
    out = conv(x)
    assert out.shape == ref.shape and out.is_contiguous(memory_format=torch.channels_last) == channels_last
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    conv.use_matmul = False  # cuDNN / native path still available
    torch.testing.assert_close(conv(x), ref, rtol=1e-5, atol=1e-6)


def test_out_conv_fp32_from_half():
    from mast3r_slam.network.heads import F32OutConv

    torch.manual_seed(5)
    conv = F32OutConv(16, 4, 1)
    x = torch.randn(2, 16, 6, 8)
    ref = conv(x)
    out = conv(x.to(torch.bfloat16))
    assert out.dtype == torch.float32 and out.shape == ref.shape
    xr = x.to(torch.bfloat16).float()
    torch.testing.assert_close(out, torch.nn.functional.conv2d(xr, conv.weight, conv.bias), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("hw", [(1, 3), (6, 8), (24, 32)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_up2_matmul_equals_interpolate(hw, channels_last):
    from mast3r_slam.network.heads import _up2_matmul

    torch.manual_seed(hw[0])
    x = torch.randn(2, 5, *hw)
    ref = torch.nn.functional.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
    xx = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    out = _up2_matmul(xx)  # fp32 here (the model uses it for half inputs only)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    if channels_last and hw[0] > 1:
        assert out.is_contiguous(memory_format=torch.channels_last)
    outh = _up2_matmul(xx.to(torch.bfloat16)).float()  # one extra rounding against the exact interpolation
    assert float(((outh - ref).abs() / ref.abs().clamp_min(0.1)).median()) < 1e-2


def test_shuffle_local_equals_pixel_shuffle():
    from mast3r_slam.network.heads import shuffle_local

    torch.manual_seed(6)
    loc = torch.randn(2, 3 * 5, 7 * 4 * 4)
    ref = torch.nn.functional.pixel_shuffle(loc.transpose(1, 2).reshape(2, -1, 3, 5), 4).permute(0, 2, 3, 1)
    out = shuffle_local(loc.to(torch.bfloat16), 3, 5, 4)
    assert out.dtype == torch.float32 and out.shape == (2, 12, 20, 7) and out.is_contiguous()
    assert torch.equal(out, ref.to(torch.bfloat16).float())


def test_half_paired_decoder_equals_one_by_one(fp32_model):
    """Half-precision paired streams (fused per-stream LayerNorm, no swapped copy) == streams one by one."""
    m = copy.deepcopy(fp32_model).configure(dtype="bf16")
    torch.manual_seed(8)
    a, b = torch.rand(2, 2, 3, 48, 64) * 2 - 1
    fa, pa = m.encode(a)
    fb, pb = m.encode(b)
    paired = m.decode(fa, pa, fb, pb, (48, 64), (48, 64), return_tokens=True)
    m.decoder.paired = False
    single = m.decode(fa, pa, fb, pb, (48, 64), (48, 64), return_tokens=True)
    for t_p, t_s in zip(paired[2] + paired[3], single[2] + single[3]):
        rel = float((t_p - t_s).norm() / t_s.norm())
        assert rel < 1e-2, rel  # bf16 rounding at different points only
