"""Tracking solver (frame -> keyframe Sim(3) IRLS): Jacobians, recovery of known poses, Huber,
equivalence of the no-sync loop with the original's early-stopping loop, CUDA against PyTorch."""
from __future__ import annotations

import math

import pytest
import torch

from mast3r_slam import ops
from mast3r_slam.lie import Sim3
from mast3r_slam.ops import _torch_tracking as tt
from mast3r_slam.ops._torch_gn import huber_weight

from kernel_helpers import random_sim3, requires_cuda, surface_points

H, W = 24, 32
K = torch.tensor([[30.0, 0.0, 15.5], [0.0, 30.0, 11.5], [0.0, 0.0, 1.0]])
RAYS = dict(sigma_ray=0.003, sigma_dist=10.0, huber=1.345, max_iters=50, rel_error=1e-3, delta_norm=1e-3)
CALIB = dict(sigma_pixel=1.0, sigma_depth=10.0, pixel_border=-10, depth_eps=1e-6, huber=1.345, max_iters=50, rel_error=1e-3,
             delta_norm=1e-3)


def _problem(seed: int, noise: float = 0.0, outliers: float = 0.0, dtype=torch.float32):
    """Keyframe points on a surface, a known T_CkCf (scale != 1) and the frame points it maps onto them."""
    gen = torch.Generator().manual_seed(seed)
    X_k = surface_points(H, W, K.double(), torch.float64)
    T_true = Sim3.exp(torch.tensor([0.08, -0.05, 0.1, 0.04, -0.03, 0.06, 0.2], dtype=torch.float64))  # scale 1.22
    X_f = Sim3.act(Sim3.inv(T_true), X_k)
    X_f = X_f + noise * torch.randn(X_f.shape, generator=gen, dtype=torch.float64)
    n_out = int(outliers * H * W)
    if n_out:
        sel = torch.randperm(H * W, generator=gen)[:n_out]
        X_f[sel] += 0.3 * torch.randn(n_out, 3, generator=gen, dtype=torch.float64)
    q = 1.5 + 2.0 * torch.rand(H * W, 1, generator=gen, dtype=torch.float64)
    sqrt_w = q.sqrt()
    sqrt_w[torch.rand(H * W, generator=gen) < 0.1] = 0.0  # unmatched pixels
    return T_true, X_f.to(dtype), X_k.to(dtype), sqrt_w.to(dtype)


def _pose_error(T, T_true):
    e = Sim3.log(Sim3.mul(T.reshape(8).double(), Sim3.inv(T_true.reshape(8).double())))
    return e[:3].norm().item(), e[3:6].norm().item(), abs(e[6].item())


def _solve(variant, T0, X_f, X_k, sqrt_w, **over):
    if variant == "rays":
        return ops.track_rays(T0, X_f, X_k, sqrt_w, **{**RAYS, **over})
    meas, vmeas = ops.calib_measurements(X_k, H, W, 1e-6)
    return ops.track_calib(T0, X_f, meas, vmeas, sqrt_w, K.to(X_f), H, W, **{**CALIB, **over})


@pytest.mark.parametrize("variant", ["rays", "calib"])
def test_jacobians_match_autograd(variant):
    T_true, X_f, X_k, sqrt_w = _problem(0, noise=0.01, dtype=torch.float64)
    T = Sim3.retr(T_true, torch.tensor([0.02, -0.01, 0.03, 0.01, 0.02, -0.01, 0.05], dtype=torch.float64))
    meas, vmeas = ops.calib_measurements(X_k, H, W, 1e-6)

    def lin(T_):
        if variant == "rays":
            return tt.linearize_rays(T_, X_f, X_k, sqrt_w, 0.003, 10.0)
        return tt.linearize_calib(T_, X_f, meas, vmeas, sqrt_w, K.double(), H, W, 1.0, 10.0, -10, 1e-6)

    r, J, s = lin(T)
    J_auto = torch.autograd.functional.jacobian(lambda xi: lin(Sim3.retr(T, xi))[0], torch.zeros(7, dtype=torch.float64),
                                                vectorize=True)
    used = s[:, 0] > 0
    assert used.float().mean() > 0.8
    torch.testing.assert_close(J[used], J_auto[used], atol=1e-7, rtol=1e-6)
    assert torch.equal(J[~used], torch.zeros_like(J[~used])) and torch.equal(r[~used], torch.zeros_like(r[~used]))


@pytest.mark.parametrize("variant", ["rays", "calib"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_recovers_known_sim3(variant, dtype):
    T_true, X_f, X_k, sqrt_w = _problem(1, dtype=dtype)
    assert abs(T_true[7].item() - 1.22) < 0.01  # scale is part of the unknown
    T0 = Sim3.identity(1, dtype=dtype)
    res = _solve(variant, T0, X_f, X_k, sqrt_w)
    assert res.T_CkCf.shape == (1, 8) and res.T_CkCf.dtype == dtype
    assert bool(res.converged) and not bool(res.failed) and 1 < int(res.num_iters) < 20
    e_t, e_r, e_s = _pose_error(res.T_CkCf, T_true)
    # measured (3 iterations from the identity, stop on ||xi|| < 1e-3): errors ~1e-7 in translation,
    # rotation (rad) and log-scale for float32 and float64 alike
    assert e_t < 1e-6 and e_r < 1e-6 and e_s < 1e-6


@pytest.mark.parametrize("variant", ["rays", "calib"])
def test_huber_limits_outliers(variant):
    T_true, X_f, X_k, sqrt_w = _problem(2, noise=0.002, outliers=0.2)
    T0 = Sim3.identity()
    robust = _solve(variant, T0, X_f, X_k, sqrt_w)
    plain = _solve(variant, T0, X_f, X_k, sqrt_w, huber=1e9)
    e_rob = _pose_error(robust.T_CkCf, T_true)
    e_plain = _pose_error(plain.T_CkCf, T_true)
    # 20% gross outliers. Measured (translation, rotation rad, log-scale): rays (0.008, 0.003, 0.014)
    # with Huber vs (0.36, 0.13, 0.11) without; calib (0.05, 0.017, 0.020) vs (0.39, 0.14, 0.14)
    assert all(a < 0.25 * b for a, b in zip(e_rob, e_plain))
    assert e_rob[1] < 0.03 and bool(robust.converged)


def test_huber_weight_values():
    e = torch.tensor([0.0, -1.0, 1.345, -2.69, 13.45])
    torch.testing.assert_close(huber_weight(e, 1.345), torch.tensor([1.0, 1.0, 1.0, 0.5, 0.1]))


def _normal_equations(variant, X_f, X_k, sqrt_w, compact=None):
    meas, vmeas = ops.calib_measurements(X_k, H, W, 1e-6)
    if variant == "rays":
        return tt.NormalEquations("rays", X_f, sqrt_w, 1.345, X_k=X_k, sigma_ray=0.003, sigma_dist=10.0, compact=compact)
    return tt.NormalEquations("calib", X_f, sqrt_w, 1.345, meas_k=meas, valid_meas_k=vmeas, K=K.to(X_f), height=H, width=W,
                              sigma_pixel=1.0, sigma_depth=10.0, pixel_border=-10, depth_eps=1e-6, compact=compact)


@pytest.mark.parametrize("variant", ["rays", "calib"])
def test_planar_normal_equations_match_reference(variant):
    """The solver's normal equations (planar rows, blocked sums) equal those of the straightforward
    linearisation (r, J, s per pixel) + irls_normal_equations: in float64 to rounding, in float32
    within the accuracy of float32 residuals; with the used pixels only (compact, the CPU default)
    and with all pixels (the GPU layout), also when unused pixels hold NaN or zero points."""
    T_true, X_f, X_k, sqrt_w = _problem(6, noise=0.003, outliers=0.1, dtype=torch.float64)
    T = Sim3.retr(T_true, torch.tensor([0.01, -0.02, 0.01, 0.02, -0.01, 0.01, 0.03], dtype=torch.float64))
    meas, vmeas = ops.calib_measurements(X_k, H, W, 1e-6)
    X_f_bad = X_f.clone()
    X_f_bad[sqrt_w[:, 0] == 0] = float("nan")
    X_f_bad[:3] = 0.0
    sqrt_w_bad = sqrt_w.clone()
    sqrt_w_bad[:3] = 0.0
    for xf, sw in ((X_f, sqrt_w), (X_f_bad, sqrt_w_bad)):
        if variant == "rays":
            ref = tt.irls_normal_equations(*tt.linearize_rays(T, xf, X_k, sw, 0.003, 10.0), 1.345)
        else:
            ref = tt.irls_normal_equations(*tt.linearize_calib(T, xf, meas, vmeas, sw, K.double(), H, W, 1.0, 10.0, -10, 1e-6),
                                           1.345)
        assert all(torch.isfinite(r).all() for r in ref)
        for dtype, rtol in ((torch.float64, 1e-10), (torch.float32, 2e-4)):
            for compact in (True, False):
                ne = _normal_equations(variant, xf.to(dtype), X_k.to(dtype), sw.to(dtype), compact=compact)
                out = ne(T.to(dtype))
                for a, b in zip(out, ref):
                    assert a.dtype == torch.float64
                    scale = b.abs().max()
                    assert (a - b).abs().max() <= rtol * scale, (dtype, compact, (a - b).abs().max() / scale)


def _reference_loop(normal_eqs, T, max_iters, rel_error, delta_norm):
    """The original's loop: host-side cost and convergence test, break after the update."""
    old_cost = float("inf")
    iters = 0
    converged = False
    for _ in range(max_iters):
        iters += 1
        Hm, g, cost_t = normal_eqs(T)
        new_cost = cost_t.item()
        L = torch.linalg.cholesky(Hm)  # raises on failure, as the original
        xi = torch.cholesky_solve(g[:, None], L)[:, 0]
        T = tt.retract(T, xi)
        rel = math.fabs((old_cost - new_cost) / old_cost) if math.isfinite(old_cost) else math.nan
        if rel < rel_error or torch.linalg.norm(xi).item() < delta_norm:
            converged = True
            break
        old_cost = new_cost
    return T, iters, converged


@pytest.mark.parametrize("variant", ["rays", "calib"])
@pytest.mark.parametrize("max_iters,rel_error,delta_norm", [(50, 1e-3, 1e-3), (3, 1e-12, 1e-12), (50, 0.3, 1e-12), (50, 1e-12, 1e-2)])
def test_no_sync_loop_equals_early_stopping_loop(variant, max_iters, rel_error, delta_norm):
    T_true, X_f, X_k, sqrt_w = _problem(3, noise=0.003, outliers=0.05)
    T0 = Sim3.identity()
    T_ref, it_ref, conv_ref = _reference_loop(_normal_equations(variant, X_f, X_k, sqrt_w), T0, max_iters, rel_error, delta_norm)
    tol = dict(max_iters=max_iters, rel_error=rel_error, delta_norm=delta_norm)
    results = [_solve(variant, T0, X_f, X_k, sqrt_w, **tol)]  # the CPU default: host loop
    meas, vmeas = ops.calib_measurements(X_k, H, W, 1e-6)
    for sync_every in (0, 1, 4):  # the masked no-sync loop (the GPU's PyTorch path)
        if variant == "rays":
            res = tt._track_rays(T0, X_f, X_k, sqrt_w, 0.003, 10.0, 1.345, max_iters, rel_error, delta_norm, sync_every,
                                 host_loop=False)
        else:
            res = tt._track_calib(T0, X_f, meas, vmeas, sqrt_w, K, H, W, 1.0, 10.0, -10, 1e-6, 1.345, max_iters, rel_error,
                                  delta_norm, sync_every, host_loop=False)
        results.append(res)
    for res in results:
        assert torch.equal(res.T_CkCf, T_ref)
        assert int(res.num_iters) == it_ref and bool(res.converged) == conv_ref and not bool(res.failed)


def test_failed_factorisation_is_flagged():
    T_true, X_f, X_k, _ = _problem(4)
    T0 = Sim3.identity()
    res = _solve("rays", T0, X_f, X_k, torch.zeros(H * W, 1))
    assert bool(res.failed) and not bool(res.converged) and int(res.num_iters) == 1
    assert torch.equal(res.T_CkCf, T0)


def test_tracking_argument_errors():
    T_true, X_f, X_k, sqrt_w = _problem(5)
    T0 = Sim3.identity()
    with pytest.raises(ops.KernelArgumentError, match="X_k"):
        ops.track_rays(T0, X_f, X_k[:-1], sqrt_w, **RAYS)
    with pytest.raises(ops.KernelArgumentError, match="sqrt_w"):
        ops.track_rays(T0, X_f, X_k, sqrt_w.double(), **RAYS)
    with pytest.raises(ops.KernelArgumentError, match="T_CkCf"):
        ops.track_rays(torch.zeros(2, 8), X_f, X_k, sqrt_w, **RAYS)
    meas, vmeas = ops.calib_measurements(X_k, H, W, 1e-6)
    with pytest.raises(ops.KernelArgumentError, match="height \\* width"):
        ops.track_calib(T0, X_f, meas, vmeas, sqrt_w, K, H, W + 1, **CALIB)
    with pytest.raises(ops.KernelArgumentError, match="valid_meas_k"):
        ops.track_calib(T0, X_f, meas, vmeas.float(), sqrt_w, K, H, W, **CALIB)


# ----------------------------------------------------------------------------------------------
# CUDA kernels
# ----------------------------------------------------------------------------------------------
@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("variant", ["rays", "calib"])
@pytest.mark.parametrize("max_iters,rel_error,delta_norm", [(50, 1e-3, 1e-3), (3, 1e-12, 1e-12)])
def test_cuda_tracking_matches_torch(variant, max_iters, rel_error, delta_norm, monkeypatch):
    T_true, X_f, X_k, sqrt_w = _problem(6, noise=0.003, outliers=0.05)
    T0 = Sim3.identity(1)
    kw = dict(max_iters=max_iters, rel_error=rel_error, delta_norm=delta_norm)
    monkeypatch.setenv("MAST3R_SLAM_OPS", "cuda")
    res_c = _solve(variant, T0.cuda(), X_f.cuda(), X_k.cuda(), sqrt_w.cuda(), **kw)
    monkeypatch.setenv("MAST3R_SLAM_OPS", "torch")
    res_t = _solve(variant, T0, X_f, X_k, sqrt_w, **kw)
    assert res_c.T_CkCf.is_cuda and res_c.num_iters.is_cuda
    assert (res_c.T_CkCf.cpu() - res_t.T_CkCf).abs().max().item() < 1e-5
    assert int(res_c.num_iters) == int(res_t.num_iters)
    assert bool(res_c.converged) == bool(res_t.converged) and not bool(res_c.failed)
    assert abs(res_c.cost.item() - res_t.cost.item()) <= 1e-4 * max(1.0, res_t.cost.item())
    # failure flag on the GPU
    monkeypatch.setenv("MAST3R_SLAM_OPS", "cuda")
    bad = _solve(variant, T0.cuda(), X_f.cuda(), X_k.cuda(), torch.zeros_like(sqrt_w).cuda(), **kw)
    assert bool(bad.failed) and int(bad.num_iters) == 1 and torch.equal(bad.T_CkCf.cpu(), T0)


@requires_cuda
@pytest.mark.cuda
def test_cuda_tracking_recovers_known_sim3_large(monkeypatch):
    """512 x 384 keyframe (the real size), exact correspondences."""
    monkeypatch.setenv("MAST3R_SLAM_OPS", "cuda")
    Hl, Wl = 384, 512
    Kl = torch.tensor([[400.0, 0, 255.5], [0, 400.0, 191.5], [0, 0, 1]], dtype=torch.float64)
    X_k = surface_points(Hl, Wl, Kl, torch.float64)
    T_true = random_sim3(torch.Generator().manual_seed(9), 0.08, 0.1, 0.2)
    X_f = Sim3.act(Sim3.inv(T_true), X_k)
    sqrt_w = torch.full((Hl * Wl, 1), 1.5, dtype=torch.float64)
    res = ops.track_rays(Sim3.identity(1).cuda(), X_f.float().cuda(), X_k.float().cuda(), sqrt_w.float().cuda(), **RAYS)
    assert bool(res.converged) and not bool(res.failed)
    e = _pose_error(res.T_CkCf.cpu(), T_true)
    assert max(e) < 1e-4
