"""Planar residual rows and blocked normal equations: the shared core of the PyTorch global
Gauss-Newton (``_torch_gn``) and tracking (``_torch_tracking``) paths.

Layout. The pixels of a problem (the used pixels of every edge, or of the tracked frame) are
listed once per call, padded per group (edge) to whole blocks of ``BLOCK`` pixels; padding slots
repeat a used pixel of the same group with square-root information 0. Every per-pixel quantity
is a *plane* ``[n_blocks, BLOCK]`` (coordinates stacked in front: ``[3, n_blocks, BLOCK]``), so
each step is one vectorised op over contiguous memory (channel-last ``[..., 3]`` tensors,
``torch.where`` and reductions over short last dims are several times slower on the CPU).

Rows. For each residual row r the whitened, Huber-weighted Jacobian entries and error
``sw_r [J_r | err_r]`` (``sw = s sqrt(rho(s err))``) are written into per-row-group buffers
``[blocks, k, R * BLOCK]`` that hold only the columns that can be non-zero for that group (the
others are left out: e.g. the ray rows have no scale column, the distance row no rotation
columns). One batched matmul per group and chunk gives per-block sums ``M M^T`` ``[blocks, k, k]``
in the working dtype; they are added per group in float64. With float32 on the CPU this is the
blocked summation of the original kernels (per-thread float sums, then double atomics): within
about 1e-6 relative of a float64 sum, where one float32 GEMM over all rows lost 1e-4.

``scatter_sums`` maps the group sums into ``[G, 8, 8]`` = ``[[sum w J^T J, sum w J^T err],
[., sum w err^2]]`` (columns 0..6 = tau, omega, sigma; 7 = err).
"""
from __future__ import annotations

import torch

Tensor = torch.Tensor

BLOCK = 128  # pixels per block of the float32 partial sums (see the module docstring)
# Pixels processed at once: cache-sized chunks are faster on the CPU than whole problems.
CHUNK_PIXELS_CPU = 1 << 15
CHUNK_PIXELS_GPU = 1 << 22
_TINY = 1e-30

# Row groups per variant: (columns that can be non-zero, rows in the group). The error is an extra
# last column of every group.
GROUPS = {
    "rays": (((0, 1, 2, 3, 4, 5), 3), ((0, 1, 2, 6), 1)),  # 3 ray rows; distance row
    "calib": (((0, 1, 2, 3, 4, 5), 2), ((2, 3, 4, 6), 1)),  # pixel rows u, v; log-depth row
    "points": (((0, 1, 2, 3, 4, 5, 6), 3),),
}


def sqrt_huber_weights(s: Tensor, err: Tensor, huber: float) -> Tensor:
    """``s * sqrt(huber_weight(s * err))`` elementwise (the square root of ``w = rho'(s err) s^2``):
    ``huber_weight(e) = 1 if |e| < k else k / |e|``, computed as ``min(sqrt(k) / sqrt(|e|), 1)``."""
    a = torch.mul(s, err).abs_()
    return a.rsqrt_().mul_(huber ** 0.5).clamp_(max=1.0).mul_(s)


def block_layout(counts: Tensor, block: int = BLOCK) -> tuple[Tensor, Tensor, Tensor, int]:
    """Blocks for groups of ``counts`` [G] used pixels (one host sync for the block count).

    Returns (block_group [NB] int64, pos [NB, block] int64 position of each slot in its group's
    list of used pixels (padding slots repeat position 0), used [NB, block] bool, NB)."""
    dev = counts.device
    nblk = (counts + block - 1) // block
    NB = int(nblk.sum())
    G = counts.shape[0]
    block_group = torch.repeat_interleave(torch.arange(G, device=dev), nblk, output_size=NB)
    first = torch.cumsum(nblk, 0) - nblk
    local = torch.arange(NB, device=dev) - first[block_group]
    pos = local[:, None] * block + torch.arange(block, device=dev)
    used = pos < counts[block_group][:, None]
    pos = pos * used
    return block_group, pos, used, NB


def bilinear_rows(X_rows: Tensor, base: Tensor, p: Tensor, H: int, W: int) -> Tensor:
    """Bilinear samples of flattened maps at float pixels.

    X_rows [M, C] (maps stacked row-major, the sample's map occupying rows base .. base + HW),
    base [N] int64, p [N, 2] (u, v). Pixels are clamped to the image and the top-left corner to
    [0, W-2] x [0, H-2] (as ``matching.sample_pointmap``). Returns [N, C]
    ``(1 - dv) ((1 - du) x00 + du x01) + dv ((1 - du) x10 + du x11)``.
    """
    u = p[:, 0].clamp(0, W - 1)
    v = p[:, 1].clamp(0, H - 1)
    u0 = u.floor().clamp_(max=W - 2)
    v0 = v.floor().clamp_(max=H - 2)
    du = (u - u0)[:, None].to(X_rows.dtype)
    dv = (v - v0)[:, None].to(X_rows.dtype)
    i00 = base + (u0 + W * v0).long()
    x00 = torch.index_select(X_rows, 0, i00)
    x01 = torch.index_select(X_rows, 0, i00 + 1)
    x10 = torch.index_select(X_rows, 0, i00 + W)
    x11 = torch.index_select(X_rows, 0, i00 + (W + 1))
    return (1 - dv) * ((1 - du) * x00 + du * x01) + dv * ((1 - du) * x10 + du * x11)


class RowBuffers:
    """Per-group row buffers ``[blocks, k, R * block]`` of one chunk size (zeros that are never
    written stay zero: the structurally zero Jacobian entries), with the views and scratch planes
    the row fillers write to, cached per number of blocks (creating views costs more than the ops
    at tracking sizes)."""

    def __init__(self, variant: str, n_blocks: int, block: int, dtype: torch.dtype, device):
        self.variant = variant
        self.block = block
        self.groups = GROUPS[variant]
        self.bufs = [torch.zeros(n_blocks, len(cols) + 1, R * block, dtype=dtype, device=device) for cols, R in self.groups]
        self._views: dict = {}

    def views(self, nb: int) -> "_Views":
        v = self._views.get(nb)
        if v is None:
            v = self._views[nb] = _Views(self.variant, [B[:nb] for B in self.bufs], self.block)
        return v


class _Views:
    """Views of the group buffers (per variant) and scratch planes for one number of blocks."""

    def __init__(self, variant: str, bufs: list[Tensor], b: int):
        self.bufs = bufs
        nb = bufs[0].shape[0]
        B0 = bufs[0]
        opts = dict(dtype=B0.dtype, device=B0.device)
        if variant == "rays":
            Br, Bd = bufs
            blocks = Br.unflatten(-1, (3, b)).permute(2, 1, 0, 3)  # [row 3, col 7, nb, b]
            self.trans = blocks[:, 0:3]
            self.trans_diag = torch.diagonal(self.trans, 0, 0, 1)  # [nb, b, 3]
            self.rot = blocks[:, 3:6]
            self.err_col = blocks[:, 6]
            self.dist_psi = Bd[:, 0:3].permute(1, 0, 2)
            self.dist_n = Bd[:, 3]
            self.dist_err = Bd[:, 4]
            self.zp = torch.zeros(7, nb, b, **opts)  # [0, psi, -psi]
            self.psi, self.npsi = self.zp[1:4], self.zp[4:7]
            self.err = torch.empty(4, nb, b, **opts)
            self.skew_index = torch.tensor([0, 3, 5, 6, 0, 1, 2, 4, 0], device=B0.device)  # -[psi]x from zp
        elif variant == "calib":
            Buv, Bz = bufs
            blocks = Buv.unflatten(-1, (2, b)).permute(2, 1, 0, 3)  # [row 2 (u, v), col 7, nb, b]
            self.blocks = blocks
            self.Bz = Bz
            self.err = torch.empty(3, nb, b, **opts)
            self.Az = torch.empty(2, nb, b, **opts)
        else:
            (Bp,) = bufs
            self.blocks = Bp.unflatten(-1, (3, b)).permute(2, 1, 0, 3)  # [row 3, col 8, nb, b]
            self.diag = torch.diagonal(self.blocks[:, 0:3], 0, 0, 1)  # [nb, b, 3]
            self.zp = torch.zeros(7, nb, b, **opts)  # [0, P, -P]
            self.skew_index = torch.tensor([0, 3, 5, 6, 0, 1, 2, 4, 0], device=B0.device)


# ----------------------------------------------------------------------------------------------
# row fillers: P [3, nb, b] predicted points in the measuring camera; constants per pixel
# ----------------------------------------------------------------------------------------------
def fill_rays(v: _Views, P: Tensor, ray_m: Tensor, n_m: Tensor, s: Tensor, huber: float) -> None:
    """Rays + distance. ray_m [3, nb, b] unit measured rays, n_m [nb, b] measured distances,
    s [4, nb, b] square-root information of the rows (ray x3, distance).

    h = [psi, |P|] with psi = P / |P|; J rows [(I - psi psi^T) / |P| | -[psi]x | 0] and
    [psi^T | 0 | |P|] (see ``_torch_gn.ray_dist_residual``)."""
    nP = torch.mul(P, P).sum(0).sqrt_()
    iP = torch.clamp(nP, min=_TINY).reciprocal_()
    psi = torch.mul(P, iP, out=v.psi)
    torch.neg(psi, out=v.npsi)
    err = v.err
    torch.sub(psi, ray_m, out=err[:3])
    torch.sub(nP, n_m, out=err[3])
    sw = sqrt_huber_weights(s, err, huber)
    swr = sw[:3]
    # translation columns: sw_r (delta_rc - psi_r psi_c) / |P|
    a = swr * iP  # [3, nb, b]
    t = torch.mul(a, v.npsi)
    torch.mul(t[:, None], psi[None, :], out=v.trans)
    v.trans_diag.add_(a.permute(1, 2, 0))
    # rotation columns: -[psi]x = [[0, z, -y], [-z, 0, x], [y, -x, 0]]
    skew = torch.index_select(v.zp, 0, v.skew_index).unflatten(0, (3, 3))
    torch.mul(skew, swr[:, None], out=v.rot)
    torch.mul(swr, err[:3], out=v.err_col)
    # distance row: [psi | 0 | |P|], err
    swd = sw[3]
    torch.mul(psi, swd, out=v.dist_psi)
    torch.mul(swd, nP, out=v.dist_n)
    torch.mul(swd, err[3], out=v.dist_err)


def calib_constants(K: tuple, height: int, width: int, pixel_border: float, dtype, device) -> tuple[Tensor, Tensor, Tensor]:
    """(f, c, upper) [2, 1, 1] tensors of ``fill_calib``: (fx, fy), (cx, cy), (W-1-pb, H-1-pb)."""
    fx, fy, cx, cy = K
    def t(a, b):
        return torch.tensor([a, b], dtype=dtype, device=device)[:, None, None]
    return t(fx, fy), t(cx, cy), t(width - 1 - pixel_border, height - 1 - pixel_border)


def fill_calib(
    v: _Views, P: Tensor, uv_m: Tensor, logz_m: Tensor, s: Tensor, consts: tuple, pixel_border: float, z_eps: float,
    huber: float,
) -> None:
    """Pixel + log depth. uv_m [2, nb, b] measured pixels, logz_m [nb, b] measured log depth,
    s [3, nb, b] square-root information (zero where the measured depth is invalid), consts from
    :func:`calib_constants`. Rows are dropped (s = 0) unless z > z_eps and the projection lies
    strictly inside the border (see ``_torch_gn.calib_residual``)."""
    f, c, upper = consts
    z = P[2]
    zc = torch.clamp(z, min=max(z_eps, _TINY))
    zinv = torch.reciprocal(zc)
    xy = P[:2] * zinv  # (x/z, y/z)
    nxy = torch.neg(xy)
    xz, yz = xy
    uv = torch.addcmul(c, xy, f)
    # inside: z > z_eps and pb < u < W-1-pb and pb < v < H-1-pb (x > y <=> x - y > 0 in IEEE arithmetic)
    m = torch.minimum(uv - pixel_border, upper - uv)
    m = torch.minimum(m[0], m[1])
    torch.minimum(m, z - z_eps, out=m)
    inside = (m > 0).to(P.dtype)
    err = v.err
    torch.sub(uv, uv_m, out=err[:2])
    torch.sub(torch.log(zc), logz_m, out=err[2])
    sw = sqrt_huber_weights(s * inside, err, huber)
    Bl = v.blocks  # [2, 7, nb, b]: rows u, v; columns 0..5 and err
    AB = sw[:2] * f  # sw_u fx, sw_v fy
    Az = torch.mul(AB, zinv, out=v.Az)  # [2, nb, b]
    Bl[0, 0].copy_(Az[0])
    Bl[1, 1].copy_(Az[1])
    torch.mul(Az, nxy, out=Bl[:, 2])  # -f (x/z or y/z) / z
    xzyz = xz * yz
    q = torch.mul(xy, xy).add_(1.0)  # 1 + (x/z)^2, 1 + (y/z)^2
    torch.mul(AB[0], xz, out=Bl[0, 3]).mul_(nxy[1])  # -fx xz yz
    torch.mul(AB[1], q[1], out=Bl[1, 3]).neg_()
    torch.mul(AB[0], q[0], out=Bl[0, 4])
    torch.mul(AB[1], xzyz, out=Bl[1, 4])
    torch.mul(AB[0], nxy[1], out=Bl[0, 5])
    torch.mul(AB[1], xz, out=Bl[1, 5])
    torch.mul(sw[:2], err[:2], out=Bl[:, 6])
    Bz = v.Bz  # log-depth row: columns 2, 3, 4, 6 and err
    swz = sw[2]
    torch.mul(swz, zinv, out=Bz[:, 0])
    torch.mul(swz, yz, out=Bz[:, 1])
    torch.mul(swz, nxy[0], out=Bz[:, 2])
    Bz[:, 3].copy_(swz)
    torch.mul(swz, err[2], out=Bz[:, 4])


def fill_points(v: _Views, P: Tensor, X_m: Tensor, s: Tensor, huber: float) -> None:
    """3D points: err = P - X_m, J = [I | -[P]x | P]. X_m [3, nb, b], s [3, nb, b]."""
    err = P - X_m
    sw = sqrt_huber_weights(s, err, huber)
    Bl = v.blocks  # [3, 8, nb, b]
    v.diag.copy_(sw.permute(1, 2, 0))
    v.zp[1:4].copy_(P)
    torch.neg(P, out=v.zp[4:7])
    skew = torch.index_select(v.zp, 0, v.skew_index).unflatten(0, (3, 3))
    torch.mul(skew, sw[:, None], out=Bl[:, 3:6])
    torch.mul(sw, P, out=Bl[:, 6])
    torch.mul(sw, err, out=Bl[:, 7])


def group_block_sums(v: _Views) -> list[Tensor]:
    """Per-block sums M M^T [nb, k, k] of every group buffer."""
    return [torch.bmm(B, B.transpose(1, 2)) for B in v.bufs]


_SCATTER_INDEX: dict = {}


def scatter_sums(variant: str, sums: list[Tensor]) -> Tensor:
    """Group sums [G, k, k] (float64) -> [G, 8, 8] (columns 0..6 Jacobian, 7 error)."""
    G = sums[0].shape[0]
    dev = sums[0].device
    key = (variant, str(dev))
    if key not in _SCATTER_INDEX:
        idx = []
        for cols, _ in GROUPS[variant]:
            ix = torch.tensor(list(cols) + [7])
            idx.append((ix[:, None] * 8 + ix[None, :]).reshape(-1).to(dev))
        _SCATTER_INDEX[key] = idx
    out = torch.zeros(G, 64, dtype=sums[0].dtype, device=dev)
    for ix, S in zip(_SCATTER_INDEX[key], sums):
        out.index_add_(1, ix, S.reshape(G, -1))
    return out.view(G, 8, 8)
