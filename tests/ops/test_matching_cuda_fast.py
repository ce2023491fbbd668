"""The fast CUDA matching kernels (packed planes, 16-byte loads, float16 intrinsics) against the
PyTorch reference: exact float16 refinement for every vector width, the generic fallbacks
(F not a multiple of 8, float32, misaligned views), bounds, and iter_proj edge cases."""
from __future__ import annotations

import pytest
import torch

from mast3r_slam import matching, ops
from mast3r_slam.ops._torch_matching import _iter_proj, _refine_matches

from kernel_helpers import requires_cuda

pytestmark = [requires_cuda, pytest.mark.cuda]


def _descriptors(gen, B, H, W, F, N):
    D11 = torch.nn.functional.normalize(torch.randn(B, H, W, F, generator=gen), dim=-1)
    # queries: noisy copies of shifted pixels, so that refinement moves and positive scores win
    src = torch.randint(0, H * W, (B, N), generator=gen)
    D21 = torch.nn.functional.normalize(D11.reshape(B, H * W, F).gather(1, src[..., None].expand(-1, -1, F)) + 0.4 * torch.randn(B, N, F, generator=gen), dim=-1)
    p1 = torch.stack([torch.randint(0, W, (B, N), generator=gen), torch.randint(0, H, (B, N), generator=gen)], -1)
    p1[:, :4] = torch.tensor([[0, 0], [W - 1, H - 1], [0, H - 1], [W - 1, 0]])  # corners: candidates outside
    return D11, D21, p1


def _misaligned(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of t whose data pointer is 2 bytes past a 16-byte boundary."""
    buf = torch.empty(t.numel() + 8, dtype=t.dtype, device=t.device)
    out = buf[1:1 + t.numel()].view(t.shape)
    out.copy_(t)
    assert out.is_contiguous() and out.data_ptr() % 16 != 0
    return out


@pytest.mark.parametrize("F", [8, 16, 24, 32, 12, 40])
def test_refine_fp16_equals_exact_emulation(monkeypatch, F):
    """F = 8..32: vector kernel; 12 and 40: generic kernel. Both round as c10::Half: bit-equal to
    the CPU float16 emulation, also for N != HW, B = 2 and queries at the image corners."""
    monkeypatch.setenv("MAST3R_SLAM_OPS", "cuda")
    gen = torch.Generator().manual_seed(F)
    B, H, W, N = 2, 37, 53, 1001  # N not a multiple of the block size
    D11, D21, p1 = _descriptors(gen, B, H, W, F, N)
    D11h, D21h = D11.half(), D21.half()
    ref = _refine_matches(D11h, D21h, p1, 3, 5, fp16_exact=True)
    out = ops.refine_matches(D11h.cuda(), D21h.cuda(), p1.cuda(), 3, 5)
    assert out.dtype == torch.int64 and out.shape == (B, N, 2)
    assert torch.equal(out.cpu(), ref)
    assert (ref != p1).any(-1).float().mean().item() > 0.3  # the refinement does move most queries
    # misaligned views take the copy fallbacks: same result
    out_mis = ops.refine_matches(_misaligned(D11h.cuda()), _misaligned(D21h.cuda()), p1.cuda(), 3, 5)
    assert torch.equal(out_mis.cpu(), ref)
    # other radius / dilation settings
    ref2 = _refine_matches(D11h, D21h, p1, 2, 3, fp16_exact=True)
    assert torch.equal(ops.refine_matches(D11h.cuda(), D21h.cuda(), p1.cuda(), 2, 3).cpu(), ref2)


@pytest.mark.parametrize("F", [8, 24])
def test_refine_fp16_many_ties_follow_scan_order(monkeypatch, F):
    """Coarsely quantised descriptors give many exactly equal float16 scores: the kernel visits
    candidates row by row but must pick, as the original, the first maximum in its scan order
    (u outer, v inner) and keep the previous levels' best on ties."""
    monkeypatch.setenv("MAST3R_SLAM_OPS", "cuda")
    gen = torch.Generator().manual_seed(100 + F)
    B, H, W, N = 2, 23, 31, 700
    D11 = (torch.nn.functional.normalize(torch.randn(B, H, W, F, generator=gen), dim=-1) * 2).round() / 2
    D21 = (torch.nn.functional.normalize(torch.randn(B, N, F, generator=gen), dim=-1) * 2).round() / 2
    p1 = torch.stack([torch.randint(0, W, (B, N), generator=gen), torch.randint(0, H, (B, N), generator=gen)], -1)
    ref = _refine_matches(D11.half(), D21.half(), p1, 3, 5, fp16_exact=True)
    out = ops.refine_matches(D11.half().cuda(), D21.half().cuda(), p1.cuda(), 3, 5)
    assert torch.equal(out.cpu(), ref)
    assert (ref != p1).any(-1).float().mean().item() > 0.5


def test_refine_fp16_ties_and_zero_floor(monkeypatch):
    """Equal scores: the first candidate in scan order (u outer, v inner, widest level) wins;
    negative scores never win (the best starts at 0)."""
    monkeypatch.setenv("MAST3R_SLAM_OPS", "cuda")
    H, W, F = 32, 48, 24
    D = torch.nn.functional.normalize(torch.ones(1, H, W, F), dim=-1).half().cuda()
    p1 = torch.tensor([[[20, 20], [0, 0], [47, 31]]]).cuda()
    out = ops.refine_matches(D, D[0, 0, 0].expand(1, 3, F).contiguous(), p1, 3, 5)
    assert out[0].tolist() == [[5, 5], [0, 0], [32, 16]]
    out = ops.refine_matches(D, (-D[0, 0, 0]).expand(1, 3, F).contiguous(), p1, 3, 5)
    assert torch.equal(out, p1)


def test_refine_fp32_unchanged(monkeypatch):
    monkeypatch.setenv("MAST3R_SLAM_OPS", "cuda")
    gen = torch.Generator().manual_seed(3)
    D11, D21, p1 = _descriptors(gen, 2, 29, 31, 24, 700)
    out = ops.refine_matches(D11.cuda(), D21.cuda(), p1.cuda(), 3, 5).cpu()
    ref = _refine_matches(D11, D21, p1, 3, 5)
    assert (out == ref).all(-1).float().mean().item() >= 0.99  # float32 sums in another order may flip near-ties


def test_iter_proj_edge_cases(monkeypatch):
    """Packed-plane iter_proj vs the PyTorch path: random starts (some outside the clamp box), NaN
    ray pixels, 0 / 1 / 10 iterations, N != HW and B = 2."""
    monkeypatch.setenv("MAST3R_SLAM_OPS", "cuda")
    gen = torch.Generator().manual_seed(7)
    B, H, W = 2, 41, 57
    X11 = torch.randn(B, H, W, 3, generator=gen) * 0.005 + torch.tensor([0.0, 0.0, 3.0])
    gy, gx = torch.meshgrid(torch.linspace(-1, 1, H), torch.linspace(-1.3, 1.3, W), indexing="ij")
    X11 = X11 + torch.stack([gx, gy, torch.zeros(H, W)], -1)
    X11[1, 5:8, 9:12] = float("nan")
    X21 = X11 + 0.01 * torch.randn(B, H, W, 3, generator=gen)
    rays, target = matching.prepare_rays(X11, X21)
    N = 1500
    target = target[:, :N].contiguous()
    p0 = torch.rand(B, N, 2, generator=gen) * torch.tensor([W + 6.0, H + 6.0]) - 3.0
    for it in (0, 1, 10):
        p, conv = ops.iter_proj(rays.cuda(), target.cuda(), p0.cuda(), it, 1e-8, 1e-6)
        p_t, conv_t = _iter_proj(rays, target, p0, it, 1e-8, 1e-6)
        assert p.shape == (B, N, 2) and conv.shape == (B, N) and conv.dtype == torch.bool
        assert torch.isfinite(p).all()
        close = ((p.cpu() - p_t).abs().amax(-1) < 1e-3).float().mean().item()
        assert close >= 0.995, (it, close)
        assert (conv.cpu() == conv_t).float().mean().item() >= 0.995
        if it == 0:
            assert torch.equal(p.cpu(), p_t) and not conv.any()
        assert p[..., 0].min() >= 1 and p[..., 0].max() <= W - 2 and p[..., 1].min() >= 1 and p[..., 1].max() <= H - 2


def test_match_cuda_equals_cpu_fp16_emulation(monkeypatch):
    """Whole match() on CUDA (float16 refinement) vs the CPU path with exact float16 emulation,
    with identity and explicit initialisation."""
    monkeypatch.setenv("MAST3R_SLAM_OPS", "cuda")
    gen = torch.Generator().manual_seed(11)
    B, H, W, F = 2, 48, 64, 24
    v, u = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    z = 2.0 + 0.3 * torch.sin(u / 7.0) + 0.2 * torch.cos(v / 5.0)
    X = torch.stack([(u - W / 2) / 50.0 * z, (v - H / 2) / 50.0 * z, z], -1)
    X11 = X.expand(B, -1, -1, -1).contiguous()
    X21 = X11 + torch.tensor([0.02, -0.01, 0.0])
    D11 = torch.nn.functional.normalize(torch.randn(B, H, W, F, generator=gen), dim=-1)
    D21 = torch.nn.functional.normalize(D11 + 0.3 * torch.randn(B, H, W, F, generator=gen), dim=-1)
    cfg = dict(max_iter=10, lambda_init=1e-8, convergence_thresh=1e-6, dist_thresh=0.1, radius=3, dilation_max=5)
    idx_c, valid_c = matching.match(X11.cuda(), X21.cuda(), D11.cuda(), D21.cuda(), **cfg)
    idx_t, valid_t = matching.match(X11, X21, D11, D21, fp16_descriptors=True, **cfg)
    assert (idx_c.cpu() == idx_t).float().mean().item() >= 0.995
    assert (valid_c.cpu() == valid_t).float().mean().item() >= 0.995
    init = torch.randint(0, H * W, (B, H * W), generator=gen)
    idx_c2, _ = matching.match(X11.cuda(), X21.cuda(), D11.cuda(), D21.cuda(), init.cuda(), **cfg)
    idx_t2, _ = matching.match(X11, X21, D11, D21, init, fp16_descriptors=True, **cfg)
    assert (idx_c2.cpu() == idx_t2).float().mean().item() >= 0.99


def _scene(gen, B, H, W, F):
    v, u = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    z = 2.0 + 0.3 * torch.sin(u / 7.0) + 0.2 * torch.cos(v / 5.0)
    X = torch.stack([(u - W / 2) / 50.0 * z, (v - H / 2) / 50.0 * z, z], -1)
    X11 = X.expand(B, -1, -1, -1).contiguous() + 0.002 * torch.randn(B, H, W, 3, generator=gen)
    X21 = X11 + torch.tensor([0.02, -0.01, 0.0])
    X11[1, 3:6, 7:9] = float("nan")
    X11[0, 0, 0] = 0.0
    D11 = torch.nn.functional.normalize(torch.randn(B, H, W, F, generator=gen), dim=-1)
    D21 = torch.nn.functional.normalize(D11 + 0.3 * torch.randn(B, H, W, F, generator=gen), dim=-1)
    return [t.cuda() for t in (X11, X21, D11, D21)]


def test_fused_paths_equal_op_by_op(monkeypatch):
    """The fused kernels (prepare_rays; match_project + refine_matches_lin) give exactly the results
    of the op-by-op path (F.normalize, reflect-padded conv2d, iter_proj, gather/norm distance check,
    cast + refine_matches), including NaN and zero points, idx_init with out-of-range values,
    revalidate, float16 inputs, radius 0 and the F = 12 / float32 fallbacks."""
    monkeypatch.setenv("MAST3R_SLAM_OPS", "cuda")
    ext = ops._backend.get_extension()
    if not hasattr(ext, "match_project"):
        pytest.skip("prebuilt extension without the fused entry points")
    gen = torch.Generator().manual_seed(21)
    B, H, W, F = 2, 40, 52, 24
    X11, X21, D11, D21 = _scene(gen, B, H, W, F)
    init = torch.randint(-3, H * W + 3, (B, H * W), generator=gen).cuda()
    cfg = dict(max_iter=10, lambda_init=1e-8, convergence_thresh=1e-6, dist_thresh=0.1, radius=3, dilation_max=5)
    variants = [
        ((X11, X21, D11, D21), cfg),
        ((X11, X21, D11, D21, init), dict(cfg, revalidate=True)),
        ((X11, X21, D11.half(), D21.half()), cfg),
        ((X11, X21, D11, D21), dict(cfg, radius=0)),
        ((X11, X21, D11[..., :12], D21[..., :12]), cfg),
        ((X11, X21, D11[..., :8], D21[..., :8], init), dict(cfg, fp16_descriptors=False, revalidate=True)),
    ]
    monkeypatch.setattr(matching, "_FUSED", False)
    ref_rays = matching.prepare_rays(X11, X21)
    refs = [matching.match(*a, **kw) for a, kw in variants]
    monkeypatch.setattr(matching, "_FUSED", True)
    rays = matching.prepare_rays(X11, X21)
    for a, b in zip(rays, ref_rays):  # bit-equal, NaN where PyTorch has NaN (torch.equal says NaN != NaN)
        assert torch.equal(torch.isnan(a), torch.isnan(b))
        assert torch.equal(torch.nan_to_num(a), torch.nan_to_num(b))
    for (a, kw), (idx_ref, valid_ref) in zip(variants, refs):
        idx, valid = matching.match(*a, **kw)
        assert idx.dtype == torch.int64 and idx.shape == (B, H * W) and valid.shape == (B, H * W, 1)
        assert torch.equal(idx, idx_ref) and torch.equal(valid, valid_ref)
    assert 0.0 < refs[0][1].float().mean().item() < 1.0  # valid and invalid matches both occur


def _lin_starts(gen, B, H, W, kind):
    """[B, HW, 2] int64 refinement starts: a smooth shift of the query pixel with 10% random
    outliers (some outside the image), or uniformly random ones."""
    n = torch.arange(H * W)
    u, v = n % W, n // W
    if kind == "random":
        return torch.stack([torch.randint(-3, W + 3, (B, H * W), generator=gen), torch.randint(-3, H + 3, (B, H * W), generator=gen)], -1)
    p = torch.stack([u + 4 + (v // 17), v - 3], -1)[None].repeat(B, 1, 1)
    m = torch.rand(B, H * W, generator=gen) < 0.1
    far = torch.stack([torch.randint(-20, W + 20, (B, H * W), generator=gen), torch.randint(-20, H + 20, (B, H * W), generator=gen)], -1)
    p[m] = far[m]
    return p


@pytest.mark.parametrize("variant", [1, 2, 3])
def test_refine_variants_equal_default(monkeypatch, variant):
    """MAST3R_SLAM_REFINE_VARIANT = 1..3 (refine_tile_kernel: unrolled global loads, shared-memory
    windows) gives exactly the linear indices of the default refine_half_kernel, for float32 and
    float16 descriptors, smooth starts with outliers and random ones, partial tiles, dilation_max
    1 / 5 / 7, tie-heavy descriptors, and the whole match(); variant 0 is also the exact float16
    emulation."""
    monkeypatch.setenv("MAST3R_SLAM_OPS", "cuda")
    ext = ops._backend.get_extension()
    if not hasattr(ext, "refine_matches_lin"):
        pytest.skip("prebuilt extension without refine_matches_lin")
    gen = torch.Generator().manual_seed(40 + variant)

    def both(fn):
        monkeypatch.setenv("MAST3R_SLAM_REFINE_VARIANT", "0")
        ref = fn()
        monkeypatch.setenv("MAST3R_SLAM_REFINE_VARIANT", str(variant))
        return ref, fn()

    for B, H, W in ((2, 37, 53), (1, 70, 100)):
        D11 = torch.nn.functional.normalize(torch.randn(B, H, W, 24, generator=gen), dim=-1)
        shifted = torch.roll(D11, shifts=(3, -4), dims=(1, 2)).reshape(B, H * W, 24)
        D21 = torch.nn.functional.normalize(shifted + 0.4 * torch.randn(B, H * W, 24, generator=gen), dim=-1)
        Dq11 = (D11 * 2).round() / 2  # coarse: many exactly equal float16 scores
        Dq21 = (torch.nn.functional.normalize(torch.randn(B, H * W, 24, generator=gen), dim=-1) * 2).round() / 2
        for kind in ("smooth", "random"):
            p1 = _lin_starts(gen, B, H, W, kind)
            p1c = p1.cuda()
            for d11, d21 in ((D11, D21), (D11.half(), D21.half()), (Dq11, Dq21)):
                a, q = d11.cuda(), d21.cuda()
                for dm in (1, 5, 7):
                    ref, out = both(lambda: ext.refine_matches_lin(a, q, p1c, 3, dm, True))
                    assert torch.equal(out, ref), (B, H, W, kind, d11.dtype, dm)
            if kind == "smooth":  # the variant = the exact float16 emulation (starts inside the image for it)
                pe = torch.stack([p1[..., 0].clamp(0, W - 1), p1[..., 1].clamp(0, H - 1)], -1)
                ref_px = _refine_matches(D11.half(), D21.half(), pe, 3, 5, fp16_exact=True)
                monkeypatch.setenv("MAST3R_SLAM_REFINE_VARIANT", str(variant))
                out = ext.refine_matches_lin(D11.cuda(), D21.cuda(), pe.cuda(), 3, 5, True).cpu()
                assert torch.equal(out, ref_px[..., 0] + W * ref_px[..., 1])
                assert (out != pe[..., 0] + W * pe[..., 1]).float().mean().item() > 0.3  # the refinement moves
    X11, X21, D11, D21 = _scene(gen, 2, 40, 52, 24)
    cfg = dict(max_iter=10, lambda_init=1e-8, convergence_thresh=1e-6, dist_thresh=0.1, radius=3, dilation_max=5)
    (i0, v0), (i1, v1) = both(lambda: matching.match(X11, X21, D11, D21, **cfg))
    assert torch.equal(i1, i0) and torch.equal(v1, v0)
    monkeypatch.setenv("MAST3R_SLAM_REFINE_VARIANT", "9")  # not a variant: the default runs
    i9, v9 = matching.match(X11, X21, D11, D21, **cfg)
    assert torch.equal(i9, i0) and torch.equal(v9, v0)
