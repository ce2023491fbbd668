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

from ..lie import Sim3, quat_to_matrix
from . import _torch_rows as _rows

Tensor = torch.Tensor


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
# edge reduction (planar rows, see _torch_rows)
# ----------------------------------------------------------------------------------------------
class _Graph:
    """Pose-independent part of a global Gauss-Newton problem, built once per call.

    The used pixels (valid match, Q > Q_thresh, both confidences > C_thresh) of every edge are
    listed edge by edge and padded to whole blocks (``_torch_rows.block_layout``); their points
    Xj (prediction side) and the measurement constants (from Xi at the integer match, or
    bilinearly interpolated at the sub-pixel match) are stored as planes [c, NB, BLOCK].
    """

    def __init__(self, variant, Xs, Cs, ii_pos, jj_pos, idx_ii2jj, valid_match, Q, params, p_ii2jj, height, width):
        self.variant = variant
        E, HW = idx_ii2jj.shape
        dev = Xs.device
        self.work = torch.float64 if Xs.is_cuda else torch.float32
        self.E = E
        C_thresh, Q_thresh = params["C_thresh"], params["Q_thresh"]
        vm = valid_match[..., 0]
        m = idx_ii2jj * vm  # unused pixels read pixel 0
        q = Q[..., 0]
        Cs_ = Cs.reshape(-1)
        Ci = torch.index_select(Cs_, 0, ((ii_pos * HW)[:, None] + m).reshape(-1)).reshape(E, HW)
        valid = vm & (q > Q_thresh) & (Ci > C_thresh) & (torch.index_select(Cs[..., 0], 0, jj_pos) > C_thresh)
        counts = valid.sum(1)
        b = _rows.BLOCK
        self.block_edge, pos, used, self.NB = _rows.block_layout(counts, b)
        if self.NB == 0:
            return
        flat = valid.reshape(-1).nonzero()[:, 0]
        start = torch.cumsum(counts, 0) - counts
        src = torch.index_select(flat, 0, (start[self.block_edge][:, None] + pos).reshape(-1))  # [NB * b] e * HW + k
        e = torch.div(src, HW, rounding_mode="floor")
        k = src - e * HW
        Xrows = Xs.reshape(-1, 3)
        rows_j = torch.index_select(jj_pos, 0, e) * HW + k
        self.Xj = torch.index_select(Xrows, 0, rows_j).t().reshape(3, self.NB, b).contiguous()  # [3, NB, b] float32
        mi = torch.index_select(m.reshape(-1), 0, src)
        base_i = torch.index_select(ii_pos, 0, e) * HW
        if p_ii2jj is None:
            Xi = torch.index_select(Xrows, 0, base_i + mi)
        else:
            p_sel = torch.index_select(p_ii2jj.reshape(-1, 2), 0, src)
            Xi = _rows.bilinear_rows(Xrows, base_i, p_sel, height, width)
        Xi = Xi.t().reshape(3, self.NB, b).to(self.work).contiguous()
        sq = torch.sqrt(torch.index_select(q.reshape(-1), 0, src)).reshape(self.NB, b) * used  # 0 on padding slots
        sq = sq.to(self.work)
        if variant == "rays":
            n_m = torch.mul(Xi[0], Xi[0]).addcmul_(Xi[1], Xi[1]).addcmul_(Xi[2], Xi[2]).sqrt_()
            self.ray_m = Xi / n_m.clamp(min=_rows._TINY)
            self.n_m = n_m
            inv_sigma = [1.0 / params["sigma_ray"]] * 3 + [1.0 / params["sigma_dist"]]
        elif variant == "calib":
            W = width
            if p_ii2jj is None:
                self.uv_m = torch.stack([mi % W, torch.div(mi, W, rounding_mode="floor")]).reshape(2, self.NB, b).to(self.work)
            else:
                self.uv_m = p_sel.t().reshape(2, self.NB, b).to(self.work).contiguous()
            z = Xi[2]
            meas_ok = z > params["z_eps"]
            self.logz_m = torch.log(torch.where(meas_ok, z, torch.ones_like(z)))
            sq = sq * meas_ok
            inv_sigma = [1.0 / params["sigma_pixel"]] * 2 + [1.0 / params["sigma_depth"]]
            Kw = params["K"].double()
            K4 = (float(Kw[0, 0]), float(Kw[1, 1]), float(Kw[0, 2]), float(Kw[1, 2]))
            self.calib_consts = _rows.calib_constants(K4, height, width, params["pixel_border"], self.work, dev)
        else:
            self.X_m = Xi
            inv_sigma = [1.0 / params["sigma_point"]] * 3
        self.s = sq * torch.tensor(inv_sigma, dtype=self.work, device=dev)[:, None, None]  # [R, NB, b]
        chunk = _rows.CHUNK_PIXELS_GPU if dev.type == "cuda" else _rows.CHUNK_PIXELS_CPU
        self.chunk_blocks = max(1, chunk // b)
        self.bufs = _rows.RowBuffers(variant, min(self.NB, self.chunk_blocks), b, self.work, dev)

    def sums(self, Twc: Tensor, ii_pos: Tensor, jj_pos: Tensor, params: dict) -> Tensor:
        """Per-edge local sums [E, 8, 8] (float64): [[sum w J^T J, sum w J^T err], [., sum w err^2]]."""
        if self.NB == 0:
            return torch.zeros(self.E, 8, 8, dtype=torch.float64, device=Twc.device)
        Tij = Sim3.mul(Sim3.inv(Twc[ii_pos]), Twc[jj_pos])  # [E, 8] float32, as the original
        sR = Tij[:, 7, None, None] * quat_to_matrix(Tij[:, 3:7])  # [E, 3, 3]
        M = torch.cat([sR, Tij[:, :3, None]], -1)[self.block_edge]  # [NB, 3, 4]
        Mp = M.permute(1, 2, 0)[..., None].contiguous()  # [3, 4, NB, 1]
        groups = _rows.GROUPS[self.variant]
        acc = [torch.zeros(self.E, len(c) + 1, len(c) + 1, dtype=torch.float64, device=Twc.device) for c, _ in groups]
        huber = params["huber"]
        for b0 in range(0, self.NB, self.chunk_blocks):
            b1 = min(self.NB, b0 + self.chunk_blocks)
            sl = slice(b0, b1)
            Xj = self.Xj[:, sl]
            Mc = Mp[:, :, sl]
            P = torch.empty_like(Xj)
            for c in range(3):  # P = s R Xj + t
                torch.addcmul(Mc[c, 3], Mc[c, 0], Xj[0], out=P[c])
                P[c].addcmul_(Mc[c, 1], Xj[1]).addcmul_(Mc[c, 2], Xj[2])
            P = P.to(self.work)
            bufs = self.bufs.views(b1 - b0)
            if self.variant == "rays":
                _rows.fill_rays(bufs, P, self.ray_m[:, sl], self.n_m[sl], self.s[:, sl], huber)
            elif self.variant == "calib":
                _rows.fill_calib(bufs, P, self.uv_m[:, sl], self.logz_m[sl], self.s[:, sl], self.calib_consts,
                                 params["pixel_border"], params["z_eps"], huber)
            else:
                _rows.fill_points(bufs, P, self.X_m[:, sl], self.s[:, sl], huber)
            edges = self.block_edge[sl]
            for a, S in zip(acc, _rows.group_block_sums(bufs)):
                a.index_add_(0, edges, S.double())
        return _rows.scatter_sums(self.variant, acc)


def _solve_step(graph: _Graph, Twc: Tensor, ii_pos: Tensor, jj_pos: Tensor, params: dict, n_fixed: int = 1) -> Tensor:
    """One Gauss-Newton step dx [n-n_fixed, 7] (zeros if the factorisation fails); the first
    ``n_fixed`` poses are held fixed."""
    n = Twc.shape[0]
    f = n_fixed
    S = graph.sums(Twc, ii_pos, jj_pos, params)
    A_loc = S[:, :7, :7]
    g_loc = S[:, :7, 7]
    Ad = Sim3.adjoint(Sim3.inv(Twc[ii_pos])).double()  # J_j = J_loc Ad(T_i^-1)
    A = Ad.transpose(1, 2) @ A_loc @ Ad  # [E, 7, 7]
    g = (Ad.transpose(1, 2) @ g_loc[..., None])[..., 0]  # [E, 7]

    rows = torch.cat([ii_pos, jj_pos, ii_pos, jj_pos])
    cols = torch.cat([ii_pos, jj_pos, jj_pos, ii_pos])
    H = torch.zeros(n * n, 7, 7, dtype=torch.float64, device=Twc.device)
    H.index_add_(0, rows * n + cols, torch.cat([A, A, -A, -A]))
    b = torch.zeros(n, 7, dtype=torch.float64, device=Twc.device)
    b.index_add_(0, torch.cat([ii_pos, jj_pos]), torch.cat([-g, g]))
    H = H.view(n, n, 7, 7)[f:, f:].permute(0, 2, 1, 3).reshape(7 * (n - f), 7 * (n - f))
    b = b[f:].reshape(-1, 1)
    L, info = torch.linalg.cholesky_ex(H)
    dx = -torch.cholesky_solve(b, L)
    ok = (info == 0) & torch.isfinite(dx).all()
    dx = torch.where(ok, dx, torch.zeros_like(dx))
    return dx.reshape(n - f, 7).to(Twc.dtype)


def _gauss_newton(variant: str, Twc, Xs, Cs, ii, jj, idx_ii2jj, valid_match, Q, params, max_iter, delta_thresh,
                  p_ii2jj=None, height=None, width=None, n_fixed: int = 1) -> Tensor:
    n = Twc.shape[0]
    ii_pos, jj_pos = keyframe_positions(ii, jj)
    with torch.no_grad():
        graph = _Graph(variant, Xs, Cs, ii_pos, jj_pos, idx_ii2jj, valid_match, Q, params, p_ii2jj, height, width)
        T = Twc.clone()
        active = torch.ones((), dtype=torch.bool, device=Twc.device)
        f = n_fixed
        dx_last = torch.zeros(n - f, 7, dtype=Twc.dtype, device=Twc.device)
        for _ in range(max_iter):
            dx = _solve_step(graph, T, ii_pos, jj_pos, params, f)
            T_new = torch.cat([T[:f], Sim3.retr(T[f:], dx)])
            T = torch.where(active, T_new, T)
            dx_last = torch.where(active, dx, dx_last)
            active = active & (torch.linalg.norm(dx) >= delta_thresh)
            if not T.is_cuda and not bool(active):  # free on the CPU; on a GPU the masked loop runs on
                break
        Twc.copy_(T)
    return dx_last


def _gauss_newton_rays(
    Twc, Xs, Cs, ii, jj, idx_ii2jj, valid_match, Q, sigma_ray, sigma_dist, C_thresh, Q_thresh, max_iter, delta_thresh, huber=1.345,
    p_ii2jj=None, width=None, n_fixed=1,
) -> Tensor:
    """Mirrors ``ops.gauss_newton_rays`` (Twc updated in place; returns the last step [n-n_fixed, 7])."""
    params = dict(sigma_ray=sigma_ray, sigma_dist=sigma_dist, C_thresh=C_thresh, Q_thresh=Q_thresh, huber=huber)
    height = None if width is None else Xs.shape[1] // width
    return _gauss_newton("rays", Twc, Xs, Cs, ii, jj, idx_ii2jj, valid_match, Q, params, max_iter, delta_thresh, p_ii2jj,
                         height, width, n_fixed)


def _gauss_newton_calib(
    Twc, Xs, Cs, K, ii, jj, idx_ii2jj, valid_match, Q, height, width, pixel_border, z_eps, sigma_pixel, sigma_depth,
    C_thresh, Q_thresh, max_iter, delta_thresh, huber=1.345, p_ii2jj=None, n_fixed=1,
) -> Tensor:
    """Mirrors ``ops.gauss_newton_calib`` (Twc updated in place; returns the last step [n-n_fixed, 7])."""
    params = dict(
        K=K, height=height, width=width, pixel_border=pixel_border, z_eps=z_eps, sigma_pixel=sigma_pixel,
        sigma_depth=sigma_depth, C_thresh=C_thresh, Q_thresh=Q_thresh, huber=huber,
    )
    return _gauss_newton("calib", Twc, Xs, Cs, ii, jj, idx_ii2jj, valid_match, Q, params, max_iter, delta_thresh, p_ii2jj,
                         height, width, n_fixed)


def _gauss_newton_points(
    Twc, Xs, Cs, ii, jj, idx_ii2jj, valid_match, Q, sigma_point, C_thresh, Q_thresh, max_iter, delta_thresh, huber=1.345,
    p_ii2jj=None, width=None,
) -> Tensor:
    """Mirrors ``ops.gauss_newton_points`` (Twc updated in place; returns the last step [n-1, 7])."""
    params = dict(sigma_point=sigma_point, C_thresh=C_thresh, Q_thresh=Q_thresh, huber=huber)
    height = None if width is None else Xs.shape[1] // width
    return _gauss_newton("points", Twc, Xs, Cs, ii, jj, idx_ii2jj, valid_match, Q, params, max_iter, delta_thresh, p_ii2jj,
                         height, width)
