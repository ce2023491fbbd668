"""Lie groups SO(3), SE(3) and Sim(3) on plain tensors (no lietorch).

Layouts follow the original (lietorch's):

=========  ===============================  ==========================
group      data (last dim)                  tangent (last dim)
=========  ===============================  ==========================
SO(3)      ``[qx, qy, qz, qw]``             ``[wx, wy, wz]``
SE(3)      ``[tx, ty, tz, qx, qy, qz, qw]`` ``[tau(3), omega(3)]``
Sim(3)     ``[t(3), q(4), s]``              ``[tau(3), omega(3), sigma]``
=========  ===============================  ==========================

A Sim(3) element acts on points as ``x -> s R x + t``. Every function broadcasts over leading
batch dimensions, works for float32/float64 on any device and is differentiable by autograd.
Updates in SLAM are *left* retractions ``Exp(xi) * T`` (:meth:`Sim3.retr`).

Scalar coefficients of Exp/Log (the ``(1 - cos)/theta^2``-style terms) are evaluated in float64
with Taylor branches near zero, so the small-angle and small-scale cases are accurate in float32.
"""
from __future__ import annotations

import torch

Tensor = torch.Tensor

_EPS_THETA = 1e-4  # below: Taylor expansions in theta (evaluated in float64)
_EPS_SIGMA_SERIES = 0.1  # below (at small theta): power series in sigma


# ----------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------
def skew(v: Tensor) -> Tensor:
    """[..., 3] -> [..., 3, 3] cross-product matrix ``[v]_x``."""
    x, y, z = v.unbind(-1)
    o = torch.zeros_like(x)
    return torch.stack([o, -z, y, z, o, -x, -y, x, o], dim=-1).reshape(v.shape[:-1] + (3, 3))


def _bcast(*ts: Tensor) -> list[Tensor]:
    shape = torch.broadcast_shapes(*[t.shape[:-1] for t in ts])
    return [t.expand(shape + t.shape[-1:]) for t in ts]


def quat_mul(q1: Tensor, q2: Tensor) -> Tensor:
    """Hamilton product of xyzw quaternions [..., 4]."""
    x1, y1, z1, w1 = q1.unbind(-1)
    x2, y2, z2, w2 = q2.unbind(-1)
    return torch.stack(
        [
            w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
            w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
            w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
            w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
        ],
        dim=-1,
    )


def quat_conj(q: Tensor) -> Tensor:
    return torch.cat([-q[..., :3], q[..., 3:]], dim=-1)


def quat_rotate(q: Tensor, v: Tensor) -> Tensor:
    """Rotate points v [..., 3] by unit quaternions q [..., 4] (broadcasting)."""
    u = q[..., :3]
    w = q[..., 3:]
    u, v = _bcast(u, v)
    w = w.expand(u.shape[:-1] + (1,))
    uv = torch.cross(u, v, dim=-1)
    uuv = torch.cross(u, uv, dim=-1)
    return v + 2.0 * (w * uv + uuv)


def quat_to_matrix(q: Tensor) -> Tensor:
    x, y, z, w = q.unbind(-1)
    xx, yy, zz = x * x, y * y, z * z
    xy, xz, yz, wx, wy, wz = x * y, x * z, y * z, w * x, w * y, w * z
    m = torch.stack(
        [
            1 - 2 * (yy + zz), 2 * (xy - wz), 2 * (xz + wy),
            2 * (xy + wz), 1 - 2 * (xx + zz), 2 * (yz - wx),
            2 * (xz - wy), 2 * (yz + wx), 1 - 2 * (xx + yy),
        ],
        dim=-1,
    )
    return m.reshape(q.shape[:-1] + (3, 3))


def matrix_to_quat(R: Tensor) -> Tensor:
    """Rotation matrices [..., 3, 3] -> unit xyzw quaternions with qw >= 0 (branch-free, stable)."""
    m00, m01, m02 = R[..., 0, 0], R[..., 0, 1], R[..., 0, 2]
    m10, m11, m12 = R[..., 1, 0], R[..., 1, 1], R[..., 1, 2]
    m20, m21, m22 = R[..., 2, 0], R[..., 2, 1], R[..., 2, 2]
    # four candidate solutions, each well conditioned when its diagonal term is largest
    t0 = 1 + m00 - m11 - m22
    t1 = 1 - m00 + m11 - m22
    t2 = 1 - m00 - m11 + m22
    t3 = 1 + m00 + m11 + m22
    c0 = torch.stack([t0, m01 + m10, m20 + m02, m21 - m12], -1)
    c1 = torch.stack([m01 + m10, t1, m12 + m21, m02 - m20], -1)
    c2 = torch.stack([m20 + m02, m12 + m21, t2, m10 - m01], -1)
    c3 = torch.stack([m21 - m12, m02 - m20, m10 - m01, t3], -1)
    ts = torch.stack([t0, t1, t2, t3], -1)
    cands = torch.stack([c0, c1, c2, c3], -2)  # [..., 4, 4]
    best = ts.argmax(-1, keepdim=True)
    t = torch.gather(ts, -1, best).clamp_min(1e-12)
    q = torch.gather(cands, -2, best[..., None].expand(best.shape[:-1] + (1, 4))).squeeze(-2)
    q = q * (0.5 / torch.sqrt(t))
    q = torch.where(q[..., 3:] < 0, -q, q)
    return q / q.norm(dim=-1, keepdim=True)


# ----------------------------------------------------------------------------------------------
# scalar coefficients (float64, with Taylor branches)
# ----------------------------------------------------------------------------------------------
def _so3_exp_coeffs(theta: Tensor) -> tuple[Tensor, Tensor]:
    """imag = sin(theta/2)/theta, real = cos(theta/2); theta float64."""
    small = theta < _EPS_THETA
    t2 = theta * theta
    safe = torch.where(small, torch.ones_like(theta), theta)
    imag = torch.where(small, 0.5 - t2 / 48.0 + t2 * t2 / 3840.0, torch.sin(0.5 * safe) / safe)
    real = torch.cos(0.5 * theta)
    return imag, real


def _so3_W_coeffs(theta: Tensor) -> tuple[Tensor, Tensor]:
    """A = (1 - cos t)/t^2, B = (t - sin t)/t^3 (the SO(3) left-Jacobian coefficients)."""
    small = theta < _EPS_THETA
    t2 = theta * theta
    safe = torch.where(small, torch.ones_like(theta), theta)
    A = torch.where(small, 0.5 - t2 / 24.0, 2.0 * torch.sin(0.5 * safe) ** 2 / (safe * safe))
    B = torch.where(small, 1.0 / 6.0 - t2 / 120.0, (safe - torch.sin(safe)) / safe**3)
    return A, B


def _sim3_W_coeffs(theta: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Coefficients of W = A [w]x + B [w]x^2 + C I for Sim(3) (float64 inputs).

    W = int_0^1 exp(sigma u) exp(u [w]x) du. General closed form as in the spec; at small theta
    the theta -> 0 limits are used (power series in sigma when sigma is small too).
    """
    one = torch.ones_like(theta)
    s = torch.exp(sigma)
    small_sigma = sigma.abs() < 1e-8
    sig_safe = torch.where(small_sigma, one, sigma)
    C = torch.where(small_sigma, 1.0 + 0.5 * sigma, torch.expm1(sig_safe) / sig_safe)

    small_t = theta < _EPS_THETA
    th = torch.where(small_t, one, theta)
    a = s * torch.sin(th)
    b = s * torch.cos(th)
    c = th * th + sigma * sigma
    A_gen = (a * sigma + (1 - b) * th) / (th * c)
    B_gen = (C - ((b - 1) * sigma + a * th) / c) / (th * th)

    # theta -> 0: A0 = int u e^{su} du, B0 = int u^2/2 e^{su} du (+ theta^2 corrections)
    t2 = theta * theta
    series = sigma.abs() < _EPS_SIGMA_SERIES
    A_ser = torch.zeros_like(sigma)
    B_ser = torch.zeros_like(sigma)
    A_t2 = torch.zeros_like(sigma)
    B_t2 = torch.zeros_like(sigma)
    fact = 1.0
    sk = torch.ones_like(sigma)
    for k in range(8):
        if k > 0:
            fact *= k
            sk = sk * sigma
        A_ser = A_ser + sk / (fact * (k + 2))
        B_ser = B_ser + sk / (2.0 * fact * (k + 3))
        A_t2 = A_t2 + sk / (6.0 * fact * (k + 4))
        B_t2 = B_t2 + sk / (24.0 * fact * (k + 5))
    sg = torch.where(series, one, sigma)
    es = torch.exp(sg)
    A_cl = ((sg - 1) * es + 1) / (sg * sg)
    B_cl = (es * (0.5 * sg * sg - sg + 1) - 1) / sg**3
    A0 = torch.where(series, A_ser - t2 * A_t2, A_cl)
    B0 = torch.where(series, B_ser - t2 * B_t2, B_cl)
    A = torch.where(small_t, A0, A_gen)
    B = torch.where(small_t, B0, B_gen)
    return A, B, C


def _W_matrix(omega: Tensor, A: Tensor, B: Tensor, C: Tensor) -> Tensor:
    K = skew(omega)
    eye = torch.eye(3, dtype=omega.dtype, device=omega.device).expand(K.shape)
    return A[..., None, None] * K + B[..., None, None] * (K @ K) + C[..., None, None] * eye


# ----------------------------------------------------------------------------------------------
# groups
# ----------------------------------------------------------------------------------------------
class SO3:
    """Rotations as unit quaternions ``[qx, qy, qz, qw]``; tangent ``omega``."""

    dim = 3
    embedded_dim = 4

    @staticmethod
    def identity(*shape: int, dtype=torch.float32, device=None) -> Tensor:
        q = torch.zeros(*shape, 4, dtype=dtype, device=device)
        q[..., 3] = 1
        return q

    @staticmethod
    def exp(omega: Tensor) -> Tensor:
        theta = omega.double().norm(dim=-1)
        imag, real = _so3_exp_coeffs(theta)
        return torch.cat([imag.to(omega.dtype)[..., None] * omega, real.to(omega.dtype)[..., None]], -1)

    @staticmethod
    def log(q: Tensor) -> Tensor:
        q = torch.where(q[..., 3:] < 0, -q, q)  # shortest rotation, theta in [0, pi]
        v = q[..., :3]
        w = q[..., 3]
        n = v.double().norm(dim=-1)
        wd = w.double()
        small = n < 1e-6
        # theta = 2 atan2(|v|, w); omega = theta / |v| * v
        n_safe = torch.where(small, torch.ones_like(n), n)
        w_safe = torch.where(small, wd.clamp_min(1e-12), wd)
        f = torch.where(small, 2.0 / w_safe - 2.0 * n * n / (3.0 * w_safe**3), 2.0 * torch.atan2(n_safe, wd) / n_safe)
        return f.to(q.dtype)[..., None] * v

    @staticmethod
    def mul(a: Tensor, b: Tensor) -> Tensor:
        return quat_mul(a, b)

    @staticmethod
    def inv(q: Tensor) -> Tensor:
        return quat_conj(q)

    @staticmethod
    def act(q: Tensor, p: Tensor) -> Tensor:
        return quat_rotate(q, p)

    @staticmethod
    def matrix(q: Tensor) -> Tensor:
        return quat_to_matrix(q)

    @staticmethod
    def from_matrix(R: Tensor) -> Tensor:
        return matrix_to_quat(R)

    @staticmethod
    def adjoint(q: Tensor) -> Tensor:
        return quat_to_matrix(q)

    @staticmethod
    def ad(omega: Tensor) -> Tensor:
        return skew(omega)

    @staticmethod
    def retr(q: Tensor, omega: Tensor) -> Tensor:
        return quat_mul(SO3.exp(omega), q)

    @staticmethod
    def left_jacobian(omega: Tensor) -> Tensor:
        theta = omega.double().norm(dim=-1)
        A, B = _so3_W_coeffs(theta)
        one = torch.ones_like(A)
        return _W_matrix(omega, A.to(omega.dtype), B.to(omega.dtype), one.to(omega.dtype))


class SE3:
    """Rigid motions ``[t(3), q(4)]``; tangent ``[tau, omega]``."""

    dim = 6
    embedded_dim = 7

    @staticmethod
    def identity(*shape: int, dtype=torch.float32, device=None) -> Tensor:
        T = torch.zeros(*shape, 7, dtype=dtype, device=device)
        T[..., 6] = 1
        return T

    @staticmethod
    def exp(xi: Tensor) -> Tensor:
        tau, omega = xi[..., :3], xi[..., 3:6]
        theta = omega.double().norm(dim=-1)
        A, B = _so3_W_coeffs(theta)
        V = _W_matrix(omega, A.to(xi.dtype), B.to(xi.dtype), torch.ones_like(A).to(xi.dtype))
        t = (V @ tau[..., None])[..., 0]
        return torch.cat([t, SO3.exp(omega)], -1)

    @staticmethod
    def log(T: Tensor) -> Tensor:
        omega = SO3.log(T[..., 3:7])
        theta = omega.double().norm(dim=-1)
        A, B = _so3_W_coeffs(theta)
        V = _W_matrix(omega.double(), A, B, torch.ones_like(A))
        tau = torch.linalg.solve(V, T[..., :3].double()[..., None])[..., 0].to(T.dtype)
        return torch.cat([tau, omega], -1)

    @staticmethod
    def mul(a: Tensor, b: Tensor) -> Tensor:
        t = a[..., :3] + quat_rotate(a[..., 3:7], b[..., :3])
        q = quat_mul(a[..., 3:7], b[..., 3:7])
        t, q = _bcast(t, q)
        return torch.cat([t, q], -1)

    @staticmethod
    def inv(T: Tensor) -> Tensor:
        qi = quat_conj(T[..., 3:7])
        return torch.cat([-quat_rotate(qi, T[..., :3]), qi], -1)

    @staticmethod
    def act(T: Tensor, p: Tensor) -> Tensor:
        return quat_rotate(T[..., 3:7], p) + T[..., :3]

    @staticmethod
    def matrix(T: Tensor) -> Tensor:
        M = torch.zeros(T.shape[:-1] + (4, 4), dtype=T.dtype, device=T.device)
        M[..., :3, :3] = quat_to_matrix(T[..., 3:7])
        M[..., :3, 3] = T[..., :3]
        M[..., 3, 3] = 1
        return M

    @staticmethod
    def from_matrix(M: Tensor) -> Tensor:
        return torch.cat([M[..., :3, 3], matrix_to_quat(M[..., :3, :3])], -1)

    @staticmethod
    def adjoint(T: Tensor) -> Tensor:
        R = quat_to_matrix(T[..., 3:7])
        Ad = torch.zeros(T.shape[:-1] + (6, 6), dtype=T.dtype, device=T.device)
        Ad[..., :3, :3] = R
        Ad[..., :3, 3:] = skew(T[..., :3]) @ R
        Ad[..., 3:, 3:] = R
        return Ad

    @staticmethod
    def ad(xi: Tensor) -> Tensor:
        a = torch.zeros(xi.shape[:-1] + (6, 6), dtype=xi.dtype, device=xi.device)
        a[..., :3, :3] = skew(xi[..., 3:6])
        a[..., :3, 3:] = skew(xi[..., :3])
        a[..., 3:, 3:] = skew(xi[..., 3:6])
        return a

    @staticmethod
    def retr(T: Tensor, xi: Tensor) -> Tensor:
        return SE3.mul(SE3.exp(xi), T)

    @staticmethod
    def left_jacobian(xi: Tensor) -> Tensor:
        return _left_jacobian_from_ad(SE3.ad(xi))


class Sim3:
    """Similarities ``[t(3), q(4), s]``, ``x -> s R x + t``; tangent ``[tau, omega, sigma]``."""

    dim = 7
    embedded_dim = 8

    @staticmethod
    def identity(*shape: int, dtype=torch.float32, device=None) -> Tensor:
        T = torch.zeros(*shape, 8, dtype=dtype, device=device)
        T[..., 6] = 1
        T[..., 7] = 1
        return T

    @staticmethod
    def exp(xi: Tensor) -> Tensor:
        tau, omega, sigma = xi[..., :3], xi[..., 3:6], xi[..., 6]
        theta = omega.double().norm(dim=-1)
        A, B, C = _sim3_W_coeffs(theta, sigma.double())
        W = _W_matrix(omega, A.to(xi.dtype), B.to(xi.dtype), C.to(xi.dtype))
        t = (W @ tau[..., None])[..., 0]
        return torch.cat([t, SO3.exp(omega), torch.exp(sigma)[..., None]], -1)

    @staticmethod
    def log(T: Tensor) -> Tensor:
        omega = SO3.log(T[..., 3:7])
        sigma = torch.log(T[..., 7])
        theta = omega.double().norm(dim=-1)
        A, B, C = _sim3_W_coeffs(theta, sigma.double())
        W = _W_matrix(omega.double(), A, B, C)
        tau = torch.linalg.solve(W, T[..., :3].double()[..., None])[..., 0].to(T.dtype)
        return torch.cat([tau, omega, sigma[..., None]], -1)

    @staticmethod
    def mul(a: Tensor, b: Tensor) -> Tensor:
        t = a[..., :3] + a[..., 7:8] * quat_rotate(a[..., 3:7], b[..., :3])
        q = quat_mul(a[..., 3:7], b[..., 3:7])
        s = a[..., 7:8] * b[..., 7:8]
        t, q, s = _bcast(t, q, s)
        return torch.cat([t, q, s], -1)

    @staticmethod
    def inv(T: Tensor) -> Tensor:
        qi = quat_conj(T[..., 3:7])
        si = 1.0 / T[..., 7:8]
        return torch.cat([-si * quat_rotate(qi, T[..., :3]), qi, si], -1)

    @staticmethod
    def act(T: Tensor, p: Tensor) -> Tensor:
        """``s R p + t`` with broadcasting, e.g. T [1, 8] acting on p [HW, 3]."""
        return T[..., 7:8] * quat_rotate(T[..., 3:7], p) + T[..., :3]

    @staticmethod
    def matrix(T: Tensor) -> Tensor:
        M = torch.zeros(T.shape[:-1] + (4, 4), dtype=T.dtype, device=T.device)
        M[..., :3, :3] = T[..., 7, None, None] * quat_to_matrix(T[..., 3:7])
        M[..., :3, 3] = T[..., :3]
        M[..., 3, 3] = 1
        return M

    @staticmethod
    def from_matrix(M: Tensor) -> Tensor:
        sR = M[..., :3, :3]
        s = torch.linalg.det(sR).abs() ** (1.0 / 3.0)
        R = sR / s[..., None, None]
        return torch.cat([M[..., :3, 3], matrix_to_quat(R), s[..., None]], -1)

    @staticmethod
    def adjoint(T: Tensor) -> Tensor:
        """7x7 ``Ad_T`` with ``T Exp(x) T^-1 = Exp(Ad_T x)``."""
        R = quat_to_matrix(T[..., 3:7])
        t = T[..., :3]
        s = T[..., 7]
        Ad = torch.zeros(T.shape[:-1] + (7, 7), dtype=T.dtype, device=T.device)
        Ad[..., :3, :3] = s[..., None, None] * R
        Ad[..., :3, 3:6] = skew(t) @ R
        Ad[..., :3, 6] = -t
        Ad[..., 3:6, 3:6] = R
        Ad[..., 6, 6] = 1
        return Ad

    @staticmethod
    def ad(xi: Tensor) -> Tensor:
        """Small adjoint (7x7) of a tangent vector: ``Ad_{Exp(xi)} = exp(ad(xi))``."""
        tau, omega, sigma = xi[..., :3], xi[..., 3:6], xi[..., 6]
        a = torch.zeros(xi.shape[:-1] + (7, 7), dtype=xi.dtype, device=xi.device)
        eye = torch.eye(3, dtype=xi.dtype, device=xi.device)
        a[..., :3, :3] = skew(omega) + sigma[..., None, None] * eye
        a[..., :3, 3:6] = skew(tau)
        a[..., :3, 6] = -tau
        a[..., 3:6, 3:6] = skew(omega)
        return a

    @staticmethod
    def retr(T: Tensor, xi: Tensor) -> Tensor:
        """Left retraction ``Exp(xi) * T`` (the update rule used everywhere in SLAM)."""
        return Sim3.mul(Sim3.exp(xi), T)

    @staticmethod
    def left_jacobian(xi: Tensor) -> Tensor:
        """J_l(xi) with ``Exp(xi + d) ~= Exp(J_l(xi) d) Exp(xi)`` for small d."""
        return _left_jacobian_from_ad(Sim3.ad(xi))

    @staticmethod
    def act_jacobian(p: Tensor) -> Tensor:
        """d(Exp(xi) T x)/d xi at xi=0, given the transformed point p = T x: ``[I | -[p]x | p]``."""
        eye = torch.eye(3, dtype=p.dtype, device=p.device).expand(p.shape[:-1] + (3, 3))
        return torch.cat([eye, -skew(p), p[..., None]], -1)

    @staticmethod
    def to_se3(T: Tensor) -> Tensor:
        """Drop the scale: ``[t, q]`` (what trajectories and the viewer use)."""
        return T[..., :7]

    @staticmethod
    def from_se3(T: Tensor, s: Tensor | float = 1.0) -> Tensor:
        s = torch.as_tensor(s, dtype=T.dtype, device=T.device).expand(T.shape[:-1])
        return torch.cat([T, s[..., None]], -1)


def _left_jacobian_from_ad(a: Tensor) -> Tensor:
    """J = sum_k ad^k/(k+1)! = top-right block of expm([[ad, I], [0, 0]])."""
    n = a.shape[-1]
    big = torch.zeros(a.shape[:-2] + (2 * n, 2 * n), dtype=torch.float64, device=a.device)
    big[..., :n, :n] = a.double()
    big[..., :n, n:] = torch.eye(n, dtype=torch.float64, device=a.device)
    return torch.linalg.matrix_exp(big)[..., :n, n:].to(a.dtype)


# ----------------------------------------------------------------------------------------------
# alignment
# ----------------------------------------------------------------------------------------------
def umeyama(src: Tensor, dst: Tensor, with_scale: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """Least-squares ``dst ~= s R src + t`` (Umeyama 1991), vectorised.

    src, dst: [N, 3] (or [B, N, 3]). Returns (R [.., 3, 3], t [.., 3], s [..]). Raises
    ``ValueError`` for fewer than 3 points or a degenerate (rank < 2) point set.
    """
    if src.shape != dst.shape or src.shape[-1] != 3:
        raise ValueError(f"umeyama: src and dst must both be [N, 3], got {tuple(src.shape)} and {tuple(dst.shape)}")
    n = src.shape[-2]
    if n < 3:
        raise ValueError(f"umeyama: need at least 3 point pairs, got {n}")
    x = src.double()
    y = dst.double()
    mx = x.mean(-2, keepdim=True)
    my = y.mean(-2, keepdim=True)
    xc, yc = x - mx, y - my
    var_x = (xc * xc).sum((-1, -2)) / n
    cov = yc.transpose(-1, -2) @ xc / n
    U, D, Vh = torch.linalg.svd(cov)
    if bool((D[..., 1] <= 1e-12 * D[..., 0].clamp_min(1e-300)).any()) or bool((var_x <= 1e-300).any()):
        raise ValueError("umeyama: degenerate point set (all points collinear or identical)")
    S = torch.ones_like(D)
    S[..., 2] = torch.where(torch.linalg.det(U) * torch.linalg.det(Vh) < 0, -1.0, 1.0)
    R = U @ torch.diag_embed(S) @ Vh
    s = (D * S).sum(-1) / var_x if with_scale else torch.ones_like(var_x)
    t = my[..., 0, :] - s[..., None] * (R @ mx[..., 0, :, None])[..., 0]
    return R.to(src.dtype), t.to(src.dtype), s.to(src.dtype)
