"""PyTorch implementation of the tracking solver: frame -> keyframe Sim(3) IRLS (spec 4.2-4.4).

Mirrors ``ops.track_rays`` / ``ops.track_calib``. The unknown is T = T_{CkCf}; every keyframe
pixel n gives residual rows ``r = z_n - h(T X_f[n])`` with ``J = -dh/dxi`` (left perturbation),
square-root information ``s`` (zero where the pixel is not used), per-row Huber weights on
``s r``. Each iteration solves ``(A^T A) xi = -A^T b`` (``A = s sqrt(rho) J``, ``b = s sqrt(rho) r``)
by Cholesky and retracts ``T <- Exp(xi) T``; the original stops after the iteration in which
``|old - new| / old < rel_error`` or ``||xi|| < delta_norm`` (cost = 0.5 b^T b before the step).

Without host synchronisation the loop runs a fixed number of iterations and freezes the pose
once converged (or once a factorisation failed) through ``torch.where`` masks; the results are
those of the early-stopping loop. ``sync_every`` optionally checks on the host every k iterations
whether everything has stopped, to skip the remaining (masked) iterations.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from ..lie import Sim3
from ._torch_gn import calib_residual, huber_weight, ray_dist_residual

Tensor = torch.Tensor


class TrackResult(NamedTuple):
    """Result of a tracking solve; every field is a tensor on the input's device."""

    T_CkCf: Tensor  # [..., 8] solved relative pose (shape of the input pose)
    num_iters: Tensor  # [] int32: Gauss-Newton iterations run (the failing one included)
    converged: Tensor  # [] bool: a convergence test fired before the iteration cap
    failed: Tensor  # [] bool: a Cholesky factorisation failed (the original raises: tracking failure)
    cost: Tensor  # [] float64: IRLS cost 0.5 b^T b at the last linearisation


# ----------------------------------------------------------------------------------------------
# linearisation (r = z - h, J = -dh/dxi, s = sqrt information per row)
# ----------------------------------------------------------------------------------------------
def linearize_rays(T: Tensor, X_f: Tensor, X_k: Tensor, sqrt_w: Tensor, sigma_ray: float, sigma_dist: float):
    """Ray + distance residuals of T [8] on X_f [HW, 3] against X_k [HW, 3] with weights
    sqrt_w [HW, 1]. Returns (r [HW, 4], J [HW, 4, 7], s [HW, 4])."""
    P = Sim3.act(T, X_f)
    err, Jh = ray_dist_residual(P, X_k)
    use = sqrt_w[..., 0] > 0
    w = sqrt_w[..., 0]
    s = torch.stack([w / sigma_ray, w / sigma_ray, w / sigma_ray, w / sigma_dist], dim=-1)
    r = torch.where(use[:, None], -err, torch.zeros_like(err))
    J = torch.where(use[:, None, None], -Jh, torch.zeros_like(Jh))
    return r, J, s


def linearize_calib(
    T: Tensor,
    X_f: Tensor,
    meas_k: Tensor,
    valid_meas_k: Tensor,
    sqrt_w: Tensor,
    K: Tensor,
    height: int,
    width: int,
    sigma_pixel: float,
    sigma_depth: float,
    pixel_border: float,
    depth_eps: float,
):
    """Pixel + log-depth residuals of T [8] on X_f [HW, 3] against meas_k [HW, 3] = (u, v, log z)
    with valid_meas_k [HW, 1]. Rows are zeroed where the projection leaves the border or a depth is
    below depth_eps. Returns (r [HW, 3], J [HW, 3, 7], s [HW, 3])."""
    P = Sim3.act(T, X_f)
    err, Jh, valid = calib_residual(
        P, meas_k[:, :2], meas_k[:, 2:3], valid_meas_k[:, 0], K.to(P.dtype), height, width, pixel_border, depth_eps
    )
    valid = valid & (sqrt_w[..., 0] > 0)
    w = torch.where(valid, sqrt_w[..., 0], torch.zeros_like(sqrt_w[..., 0]))
    s = torch.stack([w / sigma_pixel, w / sigma_pixel, w / sigma_depth], dim=-1)
    r = torch.where(valid[:, None], -err, torch.zeros_like(err))
    J = torch.where(valid[:, None, None], -Jh, torch.zeros_like(Jh))
    return r, J, s


def irls_normal_equations(r: Tensor, J: Tensor, s: Tensor, huber: float):
    """H = A^T A [7, 7], g = -A^T b [7], cost = 0.5 b^T b [] (float64) with A = s sqrt(rho) J."""
    st = s * torch.sqrt(huber_weight(s * r, huber))
    A = (st[..., None] * J).reshape(-1, 7).double()
    b = (st * r).reshape(-1).double()
    H = A.t() @ A
    g = -(A.t() @ b)
    cost = 0.5 * (b * b).sum()
    return H, g, cost


def _solve_loop(linearize, T0: Tensor, max_iters: int, huber: float, rel_error: float, delta_norm: float, sync_every):
    shape = T0.shape
    T = T0.reshape(8)
    dev = T.device
    active = torch.ones((), dtype=torch.bool, device=dev)
    converged = torch.zeros((), dtype=torch.bool, device=dev)
    failed = torch.zeros((), dtype=torch.bool, device=dev)
    iters = torch.zeros((), dtype=torch.int32, device=dev)
    old_cost = torch.full((), float("inf"), dtype=torch.float64, device=dev)
    cost = torch.zeros((), dtype=torch.float64, device=dev)
    if sync_every is None:
        sync_every = 8 if T.is_cuda else 1
    for it in range(max_iters):
        r, J, s = linearize(T)
        H, g, new_cost = irls_normal_equations(r, J, s, huber)
        L, info = torch.linalg.cholesky_ex(H)
        xi = torch.cholesky_solve(g[:, None], L)[:, 0]
        ok = (info == 0) & torch.isfinite(xi).all()
        xi = torch.where(ok, xi, torch.zeros_like(xi))
        step = active & ok
        T = torch.where(step, Sim3.retr(T, xi.to(T.dtype)), T)
        rel = (old_cost - new_cost).abs() / old_cost  # old = inf on the first iteration: nan -> False
        conv = (rel < rel_error) | (torch.linalg.norm(xi) < delta_norm)
        iters = iters + active.to(torch.int32)
        failed = failed | (active & ~ok)
        converged = converged | (step & conv)
        cost = torch.where(active, new_cost, cost)
        old_cost = torch.where(step, new_cost, old_cost)
        active = step & ~conv
        if sync_every and (it + 1) % sync_every == 0 and it + 1 < max_iters and not bool(active):
            break
    return TrackResult(T.reshape(shape), iters, converged, failed, cost)


def _track_rays(
    T_CkCf: Tensor,  # [8] or [1, 8]
    X_f: Tensor,  # [HW, 3]
    X_k: Tensor,  # [HW, 3]
    sqrt_w: Tensor,  # [HW, 1]
    sigma_ray: float,
    sigma_dist: float,
    huber: float,
    max_iters: int,
    rel_error: float,
    delta_norm: float,
    sync_every: int | None = None,
) -> TrackResult:
    """Mirrors ``ops.track_rays``."""

    def lin(T):
        return linearize_rays(T, X_f, X_k, sqrt_w, sigma_ray, sigma_dist)

    return _solve_loop(lin, T_CkCf, max_iters, huber, rel_error, delta_norm, sync_every)


def _track_calib(
    T_CkCf: Tensor,  # [8] or [1, 8]
    X_f: Tensor,  # [HW, 3]
    meas_k: Tensor,  # [HW, 3]
    valid_meas_k: Tensor,  # [HW, 1] bool
    sqrt_w: Tensor,  # [HW, 1]
    K: Tensor,  # [3, 3]
    height: int,
    width: int,
    sigma_pixel: float,
    sigma_depth: float,
    pixel_border: float,
    depth_eps: float,
    huber: float,
    max_iters: int,
    rel_error: float,
    delta_norm: float,
    sync_every: int | None = None,
) -> TrackResult:
    """Mirrors ``ops.track_calib``."""

    def lin(T):
        return linearize_calib(
            T, X_f, meas_k, valid_meas_k, sqrt_w, K, height, width, sigma_pixel, sigma_depth, pixel_border, depth_eps
        )

    return _solve_loop(lin, T_CkCf, max_iters, huber, rel_error, delta_norm, sync_every)
