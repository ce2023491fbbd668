"""PyTorch implementation of the global (keyframe graph) Gauss-Newton solvers (spec 5.3-5.5).

Mirrors ``ops.gauss_newton_rays`` / ``ops.gauss_newton_calib``. Every directed edge e = (i -> j)
contributes, for each pixel k of keyframe j, residual rows ``err = h(T_ij X_j[k]) - z(X_i[m])``
(m = idx_ii2jj[e, k]) with local Jacobians ``J_loc`` w.r.t. a left perturbation of T_ij. With
``J_j = J_loc Ad(T_i^-1)`` and ``J_i = -J_j`` the edge's 14x14 block is ``[[A, -A], [-A, A]]``
where ``A = Ad^T (sum_k w J_loc^T J_loc) Ad``, so only the 7x7 local sums are reduced per edge
(batched matmuls over all edges at once), transformed once per edge, and scattered with
``index_add_`` into the dense 7(n-1) system (first pose fixed), which is solved by Cholesky in
float64 on the tensors' device. No Python loop over edges or pixels and no host synchronisation
inside the iteration loop: after convergence (||dx|| < delta_thresh) the step is masked to zero.
"""
from __future__ import annotations

import torch

from ..lie import Sim3

Tensor = torch.Tensor

# Edges are linearised in chunks of at most this many pixels (E_chunk * HW) to bound memory.
_GN_CHUNK_PIXELS = 1 << 22
# Rows per float32 partial sum on the CPU (see _edge_sums).
_SUM_BLOCK = 512


def huber_weight(e: Tensor, k: float) -> Tensor:
    """IRLS Huber weight of whitened residuals: 1 if |e| < k else k / |e|."""
    a = e.abs()
    return torch.where(a < k, torch.ones_like(a), k / a.clamp_min(1e-30))


def keyframe_positions(ii: Tensor, jj: Tensor) -> tuple[Tensor, Tensor]:
    """Positions of global keyframe ids in sorted unique(ii, jj), without a host sync.

    Sort, mark first occurrences, cumulative sum: the rank of every id among the distinct ids.
    """
    E = ii.shape[0]
    allv = torch.cat([ii, jj])
    s, perm = torch.sort(allv)
    first = torch.ones_like(s, dtype=torch.long)
    first[1:] = (s[1:] != s[:-1]).long()
    rank_sorted = torch.cumsum(first, 0) - 1
    rank = torch.empty_like(rank_sorted)
    rank[perm] = rank_sorted
    return rank[:E], rank[E:]


# ----------------------------------------------------------------------------------------------
# local residuals and Jacobians (w.r.t. a left perturbation of the relative pose, order tau, omega, sigma)
# ----------------------------------------------------------------------------------------------
def ray_dist_residual(P: Tensor, Xm: Tensor) -> tuple[Tensor, Tensor]:
    """Rays + distance: prediction h = [psi(P), |P|] of points P [..., 3] minus the measurement
    [psi(Xm), |Xm|]. Returns (err [..., 4], dh/dxi [..., 4, 7]) with ray rows
    [(I - psi psi^T) / |P| | -[psi]x | 0] and distance row [psi^T | 0 | |P|]."""
    nP = torch.linalg.norm(P, dim=-1, keepdim=True)
    nX = torch.linalg.norm(Xm, dim=-1, keepdim=True)
    psi = P / nP
    err = torch.cat([psi - Xm / nX, nP - nX], dim=-1)
    x, y, z = psi.unbind(-1)
    iP = 1.0 / nP[..., 0]
    o = torch.zeros_like(x)
    mxy, mxz, myz = -x * y * iP, -x * z * iP, -y * z * iP
    J = torch.stack(
        [
            (1 - x * x) * iP, mxy, mxz, o, z, -y, o,
            mxy, (1 - y * y) * iP, myz, -z, o, x, o,
            mxz, myz, (1 - z * z) * iP, y, -x, o, o,
            x, y, z, o, o, o, nP[..., 0],
        ],
        dim=-1,
    ).reshape(P.shape[:-1] + (4, 7))
    return err, J


def calib_residual(
    P: Tensor,  # [..., 3] predicted points in the measuring camera
    target_uv: Tensor,  # [..., 2] measured pixel
    target_logz: Tensor,  # [..., 1] measured log depth (any finite value where invalid)
    valid_meas: Tensor,  # [...] bool: measured depth > z_eps
    K: Tensor,  # [3, 3]
    height: int,
    width: int,
    pixel_border: float,
    z_eps: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """Pixel + log-depth: h = [fx x/z + cx, fy y/z + cy, log z]. Returns (err = h - meas [..., 3],
    dh/dxi [..., 3, 7], valid [...] = projection inside the border and both depths > z_eps)."""
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    x, y, z = P.unbind(-1)
    valid_z = (z > z_eps) & valid_meas
    zinv = torch.where(valid_z, 1.0 / torch.where(valid_z, z, torch.ones_like(z)), torch.zeros_like(z))
    logz = torch.where(valid_z, torch.log(torch.where(valid_z, z, torch.ones_like(z))), torch.zeros_like(z))
    xz = x * zinv
    yz = y * zinv
    u = fx * xz + cx
    v = fy * yz + cy
    valid = valid_z & (u > pixel_border) & (u < width - 1 - pixel_border) & (v > pixel_border) & (v < height - 1 - pixel_border)
    zi_log = torch.where(valid_z, target_logz[..., 0], torch.zeros_like(z))
    err = torch.stack([u - target_uv[..., 0], v - target_uv[..., 1], logz - zi_log], dim=-1)
    o = torch.zeros_like(z)
    one = torch.ones_like(z)
    Ju = torch.stack([fx * zinv, o, -fx * xz * zinv, -fx * xz * yz, fx * (1 + xz * xz), -fx * yz, o], dim=-1)
    Jv = torch.stack([o, fy * zinv, -fy * yz * zinv, -fy * (1 + yz * yz), fy * xz * yz, fy * xz, o], dim=-1)
    Jz = torch.stack([o, o, zinv, yz, -xz, o, one], dim=-1)
    return err, torch.stack([Ju, Jv, Jz], dim=-2), valid


def point_residual(P: Tensor, Xm: Tensor) -> tuple[Tensor, Tensor]:
    """3D points: err = P - Xm [..., 3], dh/dxi = [I | -[P]x | P] [..., 3, 7]."""
    return P - Xm, Sim3.act_jacobian(P)


# ----------------------------------------------------------------------------------------------
# edge reduction
# ----------------------------------------------------------------------------------------------
def _edge_sums(
    variant: str,
    Twc: Tensor,
    Xs: Tensor,
    Cs: Tensor,
    ii_pos: Tensor,
    jj_pos: Tensor,
    idx_ii2jj: Tensor,
    valid_match: Tensor,
    Q: Tensor,
    params: dict,
) -> tuple[Tensor, Tensor]:
    """Per-edge local sums A_loc = sum w J^T J [E, 7, 7] and g_loc = sum w err J [E, 7] (float64)."""
    E = ii_pos.shape[0]
    HW = Xs.shape[1]
    C_thresh, Q_thresh, huber = params["C_thresh"], params["Q_thresh"], params["huber"]
    Ti = Twc[ii_pos]
    Tij = Sim3.mul(Sim3.inv(Ti), Twc[jj_pos])  # [E, 8]
    vm = valid_match[..., 0]
    m = torch.where(vm, idx_ii2jj, torch.zeros_like(idx_ii2jj))  # [E, HW]
    Xi = Xs[ii_pos[:, None], m]  # [E, HW, 3]
    Xj = Xs[jj_pos]  # [E, HW, 3]
    P = Sim3.act(Tij[:, None, :], Xj)  # float32, as the original
    q = Q[..., 0]
    valid = vm & (q > Q_thresh) & (Cs[ii_pos[:, None], m][..., 0] > C_thresh) & (Cs[jj_pos][..., 0] > C_thresh)
    # Working precision: float64 on a GPU (cheap there, and immune to a global TF32 matmul
    # setting); float32 on the CPU with the sums taken in blocks of _SUM_BLOCK rows and the block
    # sums added in float64 (a plain float32 GEMM over the HW*R rows loses up to 1e-4 relative
    # accuracy in the Hessian, which the weakly observed scale direction amplifies into 1e-4 pose
    # errors; the blocked sums are within 1e-5 of float64, like the per-thread sums of the kernels).
    work = torch.float64 if P.is_cuda else torch.float32
    sq = torch.sqrt(torch.where(valid, q, torch.zeros_like(q))).to(work)
    # unused pixels get a harmless point (no inf/nan) and zero weight
    safe = torch.tensor([0.0, 0.0, 1.0], dtype=P.dtype, device=P.device)
    P = torch.where(valid[..., None], P, safe).to(work)
    Xi = torch.where(valid[..., None], Xi, safe).to(work)

    if variant == "rays":
        err, J = ray_dist_residual(P, Xi)
        s = torch.stack([sq / params["sigma_ray"]] * 3 + [sq / params["sigma_dist"]], dim=-1)
    elif variant == "calib":
        W = params["width"]
        uv = torch.stack([m % W, torch.div(m, W, rounding_mode="floor")], dim=-1).to(work)
        zi = Xi[..., 2:3]
        valid_meas = zi[..., 0] > params["z_eps"]
        logzi = torch.log(torch.where(valid_meas[..., None], zi, torch.ones_like(zi)))
        err, J, valid_proj = calib_residual(
            P, uv, logzi, valid_meas, params["K"].to(work), params["height"], W, params["pixel_border"], params["z_eps"]
        )
        s = torch.stack([sq / params["sigma_pixel"]] * 2 + [sq / params["sigma_depth"]], dim=-1) * valid_proj[..., None]
    else:  # points
        err, J = point_residual(P, Xi)
        s = (sq / params["sigma_point"])[..., None].expand(err.shape)

    sw = s * torch.sqrt(huber_weight(s * err, huber))  # sqrt of w = rho(s err) s^2
    n_rows = HW * err.shape[-1]
    Jw = (sw[..., None] * J).reshape(E, n_rows, 7)
    ew = (sw * err).reshape(E, n_rows, 1)
    if work == torch.float64:
        return Jw.transpose(1, 2) @ Jw, (Jw.transpose(1, 2) @ ew)[..., 0]
    nb = -(-n_rows // _SUM_BLOCK)
    pad = nb * _SUM_BLOCK - n_rows
    if pad:
        Jw = torch.nn.functional.pad(Jw, (0, 0, 0, pad))
        ew = torch.nn.functional.pad(ew, (0, 0, 0, pad))
    Jb = Jw.reshape(E * nb, _SUM_BLOCK, 7)
    A_loc = (Jb.transpose(1, 2) @ Jb).reshape(E, nb, 7, 7).double().sum(1)
    g_loc = (Jb.transpose(1, 2) @ ew.reshape(E * nb, _SUM_BLOCK, 1)).reshape(E, nb, 7).double().sum(1)
    return A_loc, g_loc


def _solve_step(
    variant: str,
    Twc: Tensor,
    Xs: Tensor,
    Cs: Tensor,
    ii_pos: Tensor,
    jj_pos: Tensor,
    idx_ii2jj: Tensor,
    valid_match: Tensor,
    Q: Tensor,
    params: dict,
) -> Tensor:
    """One Gauss-Newton step dx [n-1, 7] (zeros if the factorisation fails)."""
    n = Twc.shape[0]
    E = ii_pos.shape[0]
    HW = Xs.shape[1]
    chunk = max(1, _GN_CHUNK_PIXELS // max(1, HW))
    A_parts, g_parts = [], []
    for e0 in range(0, E, chunk):
        sl = slice(e0, e0 + chunk)
        A, g = _edge_sums(variant, Twc, Xs, Cs, ii_pos[sl], jj_pos[sl], idx_ii2jj[sl], valid_match[sl], Q[sl], params)
        A_parts.append(A)
        g_parts.append(g)
    A_loc = torch.cat(A_parts)
    g_loc = torch.cat(g_parts)
    Ad = Sim3.adjoint(Sim3.inv(Twc[ii_pos])).double()  # J_j = J_loc Ad(T_i^-1)
    A = Ad.transpose(1, 2) @ A_loc @ Ad  # [E, 7, 7]
    g = (Ad.transpose(1, 2) @ g_loc[..., None])[..., 0]  # [E, 7]

    rows = torch.cat([ii_pos, jj_pos, ii_pos, jj_pos])
    cols = torch.cat([ii_pos, jj_pos, jj_pos, ii_pos])
    H = torch.zeros(n * n, 7, 7, dtype=torch.float64, device=Twc.device)
    H.index_add_(0, rows * n + cols, torch.cat([A, A, -A, -A]))
    b = torch.zeros(n, 7, dtype=torch.float64, device=Twc.device)
    b.index_add_(0, torch.cat([ii_pos, jj_pos]), torch.cat([-g, g]))
    H = H.view(n, n, 7, 7)[1:, 1:].permute(0, 2, 1, 3).reshape(7 * (n - 1), 7 * (n - 1))
    b = b[1:].reshape(-1, 1)
    L, info = torch.linalg.cholesky_ex(H)
    dx = -torch.cholesky_solve(b, L)
    ok = (info == 0) & torch.isfinite(dx).all()
    dx = torch.where(ok, dx, torch.zeros_like(dx))
    return dx.reshape(n - 1, 7).to(Twc.dtype)


def _gauss_newton(variant: str, Twc, Xs, Cs, ii, jj, idx_ii2jj, valid_match, Q, params, max_iter, delta_thresh) -> Tensor:
    n = Twc.shape[0]
    ii_pos, jj_pos = keyframe_positions(ii, jj)
    T = Twc.clone()
    active = torch.ones((), dtype=torch.bool, device=Twc.device)
    dx_last = torch.zeros(n - 1, 7, dtype=Twc.dtype, device=Twc.device)
    for _ in range(max_iter):
        dx = _solve_step(variant, T, Xs, Cs, ii_pos, jj_pos, idx_ii2jj, valid_match, Q, params)
        T_new = torch.cat([T[:1], Sim3.retr(T[1:], dx)])
        T = torch.where(active, T_new, T)
        dx_last = torch.where(active, dx, dx_last)
        active = active & (torch.linalg.norm(dx) >= delta_thresh)
        if not T.is_cuda and not bool(active):  # free on the CPU; on a GPU the masked loop runs on
            break
    Twc.copy_(T)
    return dx_last


def _gauss_newton_rays(
    Twc, Xs, Cs, ii, jj, idx_ii2jj, valid_match, Q, sigma_ray, sigma_dist, C_thresh, Q_thresh, max_iter, delta_thresh, huber=1.345
) -> Tensor:
    """Mirrors ``ops.gauss_newton_rays`` (Twc updated in place; returns the last step [n-1, 7])."""
    params = dict(sigma_ray=sigma_ray, sigma_dist=sigma_dist, C_thresh=C_thresh, Q_thresh=Q_thresh, huber=huber)
    return _gauss_newton("rays", Twc, Xs, Cs, ii, jj, idx_ii2jj, valid_match, Q, params, max_iter, delta_thresh)


def _gauss_newton_calib(
    Twc, Xs, Cs, K, ii, jj, idx_ii2jj, valid_match, Q, height, width, pixel_border, z_eps, sigma_pixel, sigma_depth,
    C_thresh, Q_thresh, max_iter, delta_thresh, huber=1.345,
) -> Tensor:
    """Mirrors ``ops.gauss_newton_calib`` (Twc updated in place; returns the last step [n-1, 7])."""
    params = dict(
        K=K, height=height, width=width, pixel_border=pixel_border, z_eps=z_eps, sigma_pixel=sigma_pixel,
        sigma_depth=sigma_depth, C_thresh=C_thresh, Q_thresh=Q_thresh, huber=huber,
    )
    return _gauss_newton("calib", Twc, Xs, Cs, ii, jj, idx_ii2jj, valid_match, Q, params, max_iter, delta_thresh)


def _gauss_newton_points(
    Twc, Xs, Cs, ii, jj, idx_ii2jj, valid_match, Q, sigma_point, C_thresh, Q_thresh, max_iter, delta_thresh, huber=1.345
) -> Tensor:
    """Mirrors ``ops.gauss_newton_points`` (Twc updated in place; returns the last step [n-1, 7])."""
    params = dict(sigma_point=sigma_point, C_thresh=C_thresh, Q_thresh=Q_thresh, huber=huber)
    return _gauss_newton("points", Twc, Xs, Cs, ii, jj, idx_ii2jj, valid_match, Q, params, max_iter, delta_thresh)
