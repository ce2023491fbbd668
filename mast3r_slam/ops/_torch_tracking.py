"""PyTorch implementation of the tracking solver: frame -> keyframe Sim(3) IRLS (spec 4.2-4.4).

Mirrors ``ops.track_rays`` / ``ops.track_calib``. The unknown is T = T_{CkCf}; every keyframe
pixel n gives residual rows ``r = z_n - h(T X_f[n])`` with ``J = -dh/dxi`` (left perturbation),
square-root information ``s`` (zero where the pixel is not used), per-row Huber weights on
``s r``. Each iteration solves ``(A^T A) xi = -A^T b`` (``A = s sqrt(rho) J``, ``b = s sqrt(rho) r``)
by Cholesky and retracts ``T <- Exp(xi) T``; the original stops after the iteration in which
``|old - new| / old < rel_error`` or ``||xi|| < delta_norm`` (cost = 0.5 b^T b before the step).

On a GPU the loop runs without host synchronisation: a fixed number of iterations that freeze
the pose once converged (or once a factorisation failed) through ``torch.where`` masks; the
results are those of the early-stopping loop. ``sync_every`` optionally checks on the host every k
iterations whether everything has stopped, to skip the remaining (masked) iterations. On the CPU,
where a sync costs nothing, the loop tests on the host and stops at once (same results).

The normal equations of an iteration come from :class:`NormalEquations` (planar rows and blocked
sums, see ``_torch_rows``); ``linearize_*`` + :func:`irls_normal_equations` are the straightforward
per-pixel reference (tested equal).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ..lie import Sim3, quat_to_matrix
from . import _torch_rows as _rows
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


# ----------------------------------------------------------------------------------------------
# planar normal equations (the solver's path; see _torch_rows)
# ----------------------------------------------------------------------------------------------
class NormalEquations:
    """``T -> (H [7, 7], g [7], cost [])`` (float64) of the tracking IRLS, equal (up to rounding)
    to ``irls_normal_equations(*linearize_*(T, ...), huber)``.

    Built once per solve: the used pixels (sqrt_w > 0; with ``compact=False``, the default on a GPU,
    all pixels, unused ones with weight 0 and sanitised points) are laid out in blocks of planes, so that every iteration is the
    transform ``P = s R X_f + t`` (one addmm), the row fill and one batched matmul per row group
    (float32 partial sums over blocks added in float64 for float32 inputs; float64 otherwise).
    """

    def __init__(self, variant: str, X_f: Tensor, sqrt_w: Tensor, huber: float, *, X_k=None, sigma_ray=None, sigma_dist=None,
                 meas_k=None, valid_meas_k=None, K=None, height=None, width=None, sigma_pixel=None, sigma_depth=None,
                 pixel_border=None, depth_eps=None, compact: bool | None = None):
        self.variant = variant
        self.huber = huber
        dev = X_f.device
        self.dtype = X_f.dtype
        self.work = torch.float64 if (dev.type == "cuda" or X_f.dtype == torch.float64) else torch.float32
        w = sqrt_w[:, 0]
        use = w > 0
        if variant == "calib":
            use = use & valid_meas_k[:, 0]
        b = _rows.BLOCK
        if compact is None:
            compact = dev.type == "cpu"
        if compact:  # only the used pixels (one host sync, free on the CPU)
            sel = use.nonzero()[:, 0]
            n = int(sel.numel())
        else:  # all pixels, unused ones with weight 0 (no host sync)
            sel = None
            n = X_f.shape[0]
        self.NB = -(-n // b)
        if self.NB == 0:
            return
        pad = self.NB * b - n

        def lay(x: Tensor, fill=None) -> Tensor:  # [HW, c] -> [c, NB, b] (used pixels, padded)
            if sel is not None:
                x = torch.index_select(x, 0, sel)
            x = x.t()
            if pad:
                x = torch.cat([x, (x[:, :1] if fill is None else torch.full_like(x[:, :1], fill)).expand(-1, pad)], 1)
            return x.reshape(x.shape[0], self.NB, b).contiguous()

        safe = torch.tensor([0.0, 0.0, 1.0], dtype=X_f.dtype, device=dev)
        self.X_f = lay(torch.where(use[:, None], X_f, safe)).reshape(3, -1)  # [3, NB * b]
        ws = lay(torch.where(use, w, torch.zeros_like(w))[:, None], 0.0)[0].to(self.work)  # [NB, b]
        if variant == "rays":
            Xk = lay(torch.where(use[:, None], X_k, safe)).to(self.work)
            n_m = torch.mul(Xk, Xk).sum(0).sqrt_()
            self.ray_m = Xk / n_m.clamp(min=_rows._TINY)
            self.n_m = n_m
            inv_sigma = [1.0 / sigma_ray] * 3 + [1.0 / sigma_dist]
        else:
            m = lay(torch.where(use[:, None], meas_k, torch.zeros_like(meas_k))).to(self.work)
            self.uv_m = m[:2].contiguous()
            self.logz_m = m[2].contiguous()
            Kd = K.double()
            K4 = (float(Kd[0, 0]), float(Kd[1, 1]), float(Kd[0, 2]), float(Kd[1, 2]))
            self.pixel_border, self.depth_eps = float(pixel_border), float(depth_eps)
            self.calib_consts = _rows.calib_constants(K4, height, width, self.pixel_border, self.work, dev)
            inv_sigma = [1.0 / sigma_pixel] * 2 + [1.0 / sigma_depth]
        self.s = ws * torch.tensor(inv_sigma, dtype=self.work, device=dev)[:, None, None]
        self.bufs = _rows.RowBuffers(variant, self.NB, b, self.work, dev)

    def sums(self, T: Tensor) -> Tensor:
        """[8, 8] float64 sums [[sum w Jh^T Jh, sum w Jh^T err], [., sum w err^2]] at pose T [8]."""
        if self.NB == 0:
            return torch.zeros(8, 8, dtype=torch.float64, device=T.device)
        if T.device.type == "cpu":  # 12 numbers: fewer tiny ops on the host
            M = torch.tensor(_sim3_matrix_host(T.tolist()), dtype=T.dtype)
            sR, t = M[:, :3], M[:, 3:]
        else:
            sR, t = T[7] * quat_to_matrix(T[3:7]), T[:3, None]
        P = torch.addmm(t, sR, self.X_f).reshape(3, self.NB, -1).to(self.work)
        bufs = self.bufs.views(self.NB)
        if self.variant == "rays":
            _rows.fill_rays(bufs, P, self.ray_m, self.n_m, self.s, self.huber)
        else:
            _rows.fill_calib(bufs, P, self.uv_m, self.logz_m, self.s, self.calib_consts, self.pixel_border, self.depth_eps,
                             self.huber)
        sums = [torch.sum(S, 0, keepdim=True, dtype=torch.float64) for S in _rows.group_block_sums(bufs)]
        return _rows.scatter_sums(self.variant, sums)[0]

    def __call__(self, T: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        S = self.sums(T.reshape(8))
        return S[:7, :7], -S[:7, 7], 0.5 * S[7, 7]


def retract(T: Tensor, xi: Tensor) -> Tensor:
    """Left retraction ``Exp(xi) T`` of the tracker: [8] pose, [7] float64 step -> pose of T's dtype.
    On the CPU in Python floats (float64; far fewer tiny ops than ``Sim3.retr``), elsewhere
    ``Sim3.retr``."""
    if T.device.type != "cpu":
        return Sim3.retr(T, xi.to(T.dtype))
    return torch.tensor(_sim3_retr_host(T.tolist(), xi.tolist()), dtype=T.dtype)


def _sim3_retr_host(T: list, xi: list) -> list:
    """``Exp(xi) * T`` in Python floats (same closed forms and branches as ``lie.Sim3.exp``)."""
    tau, w, sigma = xi[0:3], xi[3:6], xi[6]
    th2 = w[0] * w[0] + w[1] * w[1] + w[2] * w[2]
    th = math.sqrt(th2)
    if th < 1e-4:
        imag = 0.5 - th2 / 48.0 + th2 * th2 / 3840.0
    else:
        imag = math.sin(0.5 * th) / th
    real = math.cos(0.5 * th)
    s = math.exp(sigma)
    C = 1.0 + 0.5 * sigma if abs(sigma) < 1e-8 else math.expm1(sigma) / sigma
    if th >= 1e-4:
        a, bb, c = s * math.sin(th), s * math.cos(th), th2 + sigma * sigma
        A = (a * sigma + (1.0 - bb) * th) / (th * c)
        B = (C - ((bb - 1.0) * sigma + a * th) / c) / th2
    elif abs(sigma) < 0.1:  # power series in sigma (with the theta^2 terms)
        A_ser = B_ser = A_t2 = B_t2 = 0.0
        fact, sk = 1.0, 1.0
        for k in range(8):
            if k > 0:
                fact *= k
                sk *= sigma
            A_ser += sk / (fact * (k + 2))
            B_ser += sk / (2.0 * fact * (k + 3))
            A_t2 += sk / (6.0 * fact * (k + 4))
            B_t2 += sk / (24.0 * fact * (k + 5))
        A = A_ser - th2 * A_t2
        B = B_ser - th2 * B_t2
    else:
        A = ((sigma - 1.0) * s + 1.0) / (sigma * sigma)
        B = (s * (0.5 * sigma * sigma - sigma + 1.0) - 1.0) / sigma**3
    wt = _cross(w, tau)
    wwt = _cross(w, wt)
    t_e = [C * tau[i] + A * wt[i] + B * wwt[i] for i in range(3)]
    q_e = [imag * w[0], imag * w[1], imag * w[2], real]
    t = _quat_rotate(q_e, T[0:3])
    return [t_e[i] + s * t[i] for i in range(3)] + _quat_mul(q_e, T[3:7]) + [s * T[7]]


def _sim3_matrix_host(T: list) -> list:
    """[s R | t] (3 x 4 nested list) of a pose [t, q (xyzw), s]."""
    x, y, z, w = T[3:7]
    s = T[7]
    return [
        [s * (1 - 2 * (y * y + z * z)), s * 2 * (x * y - w * z), s * 2 * (x * z + w * y), T[0]],
        [s * 2 * (x * y + w * z), s * (1 - 2 * (x * x + z * z)), s * 2 * (y * z - w * x), T[1]],
        [s * 2 * (x * z - w * y), s * 2 * (y * z + w * x), s * (1 - 2 * (x * x + y * y)), T[2]],
    ]


def _cross(a: list, b: list) -> list:
    return [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]


def _quat_mul(a: list, b: list) -> list:
    x1, y1, z1, w1 = a
    x2, y2, z2, w2 = b
    return [
        w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
        w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
        w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
        w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
    ]


def _quat_rotate(q: list, v: list) -> list:
    u, w = q[:3], q[3]
    uv = _cross(u, v)
    uuv = _cross(u, uv)
    return [v[i] + 2.0 * (w * uv[i] + uuv[i]) for i in range(3)]


# ----------------------------------------------------------------------------------------------
# solver loops
# ----------------------------------------------------------------------------------------------
def _solve_loop(normal_eqs, T0: Tensor, max_iters: int, rel_error: float, delta_norm: float, sync_every, host_loop=None):
    """The IRLS loop. ``host_loop`` (default: on the CPU) tests convergence on the host and stops
    at once; otherwise the no-sync masked loop (see the module docstring). Same results."""
    if host_loop is None:
        host_loop = T0.device.type == "cpu"
    if host_loop:
        return _solve_loop_host(normal_eqs, T0, max_iters, rel_error, delta_norm)
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
        H, g, new_cost = normal_eqs(T)
        L, info = torch.linalg.cholesky_ex(H)
        xi = torch.cholesky_solve(g[:, None], L)[:, 0]
        ok = (info == 0) & torch.isfinite(xi).all()
        xi = torch.where(ok, xi, torch.zeros_like(xi))
        step = active & ok
        T = torch.where(step, retract(T, xi), T)
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


def _solve_loop_host(normal_eqs, T0: Tensor, max_iters: int, rel_error: float, delta_norm: float) -> TrackResult:
    """The original's loop with host-side tests (CPU tensors: no synchronisation cost)."""
    T = T0.reshape(8)
    old_cost = math.inf
    iters = 0
    converged = failed = False
    cost = 0.0
    for _ in range(max_iters):
        H, g, c = normal_eqs(T)
        iters += 1
        cost = float(c)
        L, info = torch.linalg.cholesky_ex(H)
        xi = torch.cholesky_solve(g[:, None], L)[:, 0]
        if int(info) != 0 or not bool(torch.isfinite(xi).all()):
            failed = True
            break
        T = retract(T, xi)
        rel = abs(old_cost - cost) / old_cost if old_cost != 0 else math.nan  # inf / inf = nan on the first iteration
        if rel < rel_error or float(torch.linalg.norm(xi)) < delta_norm:
            converged = True
            break
        old_cost = cost
    dev = T0.device
    return TrackResult(
        T.reshape(T0.shape),
        torch.tensor(iters, dtype=torch.int32, device=dev),
        torch.tensor(converged, device=dev),
        torch.tensor(failed, device=dev),
        torch.tensor(cost, dtype=torch.float64, device=dev),
    )


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
    host_loop: bool | None = None,
) -> TrackResult:
    """Mirrors ``ops.track_rays`` (``host_loop``: see :func:`_solve_loop`)."""
    with torch.no_grad():
        ne = NormalEquations("rays", X_f, sqrt_w, huber, X_k=X_k, sigma_ray=sigma_ray, sigma_dist=sigma_dist)
        return _solve_loop(ne, T_CkCf, max_iters, rel_error, delta_norm, sync_every, host_loop)


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
    host_loop: bool | None = None,
) -> TrackResult:
    """Mirrors ``ops.track_calib`` (``host_loop``: see :func:`_solve_loop`)."""
    with torch.no_grad():
        ne = NormalEquations("calib", X_f, sqrt_w, huber, meas_k=meas_k, valid_meas_k=valid_meas_k, K=K, height=height,
                             width=width, sigma_pixel=sigma_pixel, sigma_depth=sigma_depth, pixel_border=pixel_border,
                             depth_eps=depth_eps)
        return _solve_loop(ne, T_CkCf, max_iters, rel_error, delta_norm, sync_every, host_loop)
