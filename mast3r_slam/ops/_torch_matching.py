"""PyTorch implementations of the matching kernels (mirrors of ``iter_proj`` and ``refine_matches``).

Each function has the same arguments as the public op in :mod:`mast3r_slam.ops` without the
validation (inputs are contiguous and of the right dtype). They run on any device; loops are over
iterations, dilation levels and offset chunks only, every step is vectorised over all queries.
"""
from __future__ import annotations

import torch

Tensor = torch.Tensor

# Candidate descriptors of one refinement step are gathered for chunks of queries of at most this
# many elements (cache-sized on the CPU; large on a GPU, where launches dominate).
_REFINE_CHUNK_ELEMS_CPU = 1 << 20
_REFINE_CHUNK_ELEMS_GPU = 1 << 26


def _bilinear_planar(planes: Tensor, uv: Tensor, base: Tensor, W: int, corner_offsets: Tensor) -> Tensor:
    """Bilinear samples of image planes [C, B * HW] at float pixels uv [2, N] (u, v) inside
    [0, W-1) x [0, H-1) (base [N] = b * HW, corner_offsets = [W + 1, W, 1, 0]). Weights as the
    original kernel: each corner weighted by the area opposite to it, summed in the order
    (u0+1, v0+1), (u0, v0+1), (u0+1, v0), (u0, v0). One scalar gather per channel and corner
    (planar gathers are faster than row gathers followed by channel-last arithmetic). Returns [C, N]."""
    f = torch.floor(uv)
    d = uv - f
    dd = torch.stack([d, 1.0 - d])  # [(d, 1 - d), (u, v), N]
    w4 = (dd[:, 1, None] * dd[None, :, 0]).reshape(4, -1)  # dv du, dv (1-du), (1-dv) du, (1-dv)(1-du)
    i00 = (f[1] * W + f[0]).long() + base
    idx = i00[None] + corner_offsets[:, None]
    C = planes.shape[0]
    corners = torch.index_select(planes, 1, idx.reshape(-1)).reshape(C, 4, -1)
    s = corners[:, 0] * w4[0]
    for k in range(1, 4):
        s.addcmul_(corners[:, k], w4[k])
    return s


def _ray_cost_planar(s: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Normalise the interpolated ray s[:3]; returns (error [3, N], cost [N])."""
    r = s[:3]
    r = r * (1.0 / torch.sqrt((r * r).sum(0)))
    err = r - target
    return err, (err * err).sum(0)


def _iter_proj(
    rays_with_grad: Tensor,  # [B, H, W, 9]
    target_rays: Tensor,  # [B, N, 3]
    p_init: Tensor,  # [B, N, 2]
    max_iter: int,
    lambda_init: float,
    cost_thresh: float,
) -> tuple[Tensor, Tensor]:
    """Per-query Levenberg-Marquardt on the ray image (spec section 3.2); mirrors ``ops.iter_proj``.

    Always ``max_iter`` iterations; returns (p [B, N, 2] float, converged [B, N] bool of the
    last iteration). Planar layout (one [N] vector per quantity). The 9 channels are interpolated
    at the proposed position, so that after accepting or rejecting it the next iteration needs no
    new interpolation at the current position (the original re-interpolates it: same values).
    Accept/reject are exact 0/1 blends instead of ``torch.where`` (several times slower on the
    CPU); proposals are made finite first so that a rejected NaN cannot leak into the blend. A NaN
    position (from NaN rays) is clamped to 1, as ``fminf(fmaxf(x, 1), hi)`` in the CUDA kernel.
    """
    B, H, W, _ = rays_with_grad.shape
    N = target_rays.shape[1]
    dev = rays_with_grad.device
    planes = rays_with_grad.reshape(B * H * W, 9).t().contiguous()  # [9, B * HW]
    target = target_rays.permute(2, 0, 1).reshape(3, B * N)
    base = (torch.arange(B, device=dev) * (H * W)).repeat_interleave(N)
    corners = torch.tensor([W + 1, W, 1, 0], device=dev)
    lo = torch.tensor([[1.0], [1.0]], device=dev)
    hi = torch.tensor([[W - 2.0], [H - 2.0]], device=dev)
    # NaN -> 1 before clamping: what fminf(fmaxf(x, lo), hi) does in the CUDA kernel (lower bounds are 1)
    uv = torch.clamp(torch.nan_to_num(p_init.reshape(B * N, 2).t(), nan=1.0), lo, hi)  # [2, BN]
    lam = torch.full((B * N,), lambda_init, dtype=uv.dtype, device=dev)
    if max_iter <= 0:
        return uv.t().reshape(B, N, 2), torch.zeros(B, N, dtype=torch.bool, device=dev)
    s = _bilinear_planar(planes, uv, base, W, corners)
    err, cost = _ray_cost_planar(s, target)
    for _ in range(max_iter):
        g = s[3:9].reshape(2, 3, -1)  # d ray / du, d ray / dv
        gg = (g[:, None] * g[None, :]).sum(2)  # [2, 2, BN]
        eg = (g * err).sum(1)  # [2, BN] = -b
        A00 = gg[0, 0] + lam
        A01 = gg[0, 1]
        A11 = gg[1, 1] + lam
        b0 = -eg[0]
        b1 = -eg[1]
        det_inv = 1.0 / (A00 * A11 - A01 * A01)
        step = torch.stack([A11 * b0 - A01 * b1, -A01 * b0 + A00 * b1]) * det_inv
        uv_new = torch.clamp(torch.nan_to_num_(uv + step, nan=1.0), lo, hi)
        s_new = _bilinear_planar(planes, uv_new, base, W, corners)
        err_new, cost_new = _ray_cost_planar(s_new, target)
        accept_b = cost_new < cost
        accept = accept_b.to(uv.dtype)
        keep = 1.0 - accept
        # exact 0/1 blends: x * 1 + y * 0 = x for finite y
        uv = uv_new.mul_(accept).addcmul_(uv, keep)
        s = torch.nan_to_num_(s_new, 0.0, 0.0, 0.0).mul_(accept).addcmul_(s, keep)
        err = torch.nan_to_num_(err_new, 0.0, 0.0, 0.0).mul_(accept).addcmul_(err, keep)
        last_cost, last_new_cost = cost, cost_new
        cost = torch.nan_to_num(cost_new, 0.0, 0.0, 0.0).mul_(accept).addcmul_(cost, keep)
        lam = lam * (accept * 0.1 + keep * 10.0)  # lam * 0.1 or lam * 10, exactly
    converged = (accept_b & (last_new_cost < cost_thresh)) | (~accept_b & (last_cost < cost_thresh))
    return uv.t().reshape(B, N, 2), converged.reshape(B, N)


def _dot_fp16_sequential(a: Tensor, b: Tensor) -> Tensor:
    """Dot products over the last dim of float16 tensors, rounded to float16 after every multiply
    and every add in channel order (what ``score += a[k] * b[k]`` does with ``c10::Half``)."""
    af = a.float()
    bf = b.float()
    score = torch.zeros(torch.broadcast_shapes(a.shape, b.shape)[:-1], dtype=torch.float32, device=a.device)
    for k in range(a.shape[-1]):
        prod = (af[..., k] * bf[..., k]).half().float()
        score = (score + prod).half().float()
    return score


def _refine_matches(
    D11: Tensor,  # [B, H, W, F]
    D21: Tensor,  # [B, N, F]
    p1: Tensor,  # [B, N, 2] int64
    radius: int,
    dilation_max: int,
    fp16_exact: bool | None = None,
) -> Tensor:
    """Descriptor refinement around p1 (spec section 3.2); mirrors ``ops.refine_matches``.

    For dilation d = dilation_max..1 the (2 radius + 1)^2 pixels at offsets -radius*d..radius*d
    (step d; u outer, v inner) around the current centre are scored by dot(D21[q], D11[cand]);
    a candidate replaces the best only if strictly better than the best of all levels so far,
    which starts at 0 (the original's quirk: only positive similarities can win); the centre
    moves to the best after each level.

    Implementation: D11 is padded by radius * dilation_max pixels of zero descriptors, so every
    candidate is a row of the padded image (out-of-image candidates score exactly 0 and, as
    skipped candidates in the original, can never win); candidates are linear offsets from the
    centre's row, gathered for chunks of queries and dotted with one multiply and one
    matrix-vector product.

    Precision: float32 descriptors are dotted in float32. float16 descriptors are dotted with the
    original's rounding (to float16 after every multiply and add) when ``fp16_exact`` (default:
    on CPU), else with a float16 reduction (faster; on GPU; rare ties may resolve differently).
    """
    B, H, W, Fdim = D11.shape
    N = p1.shape[1]
    dev = D11.device
    half = D11.dtype == torch.float16
    if fp16_exact is None:
        fp16_exact = half and not D11.is_cuda
    pad = radius * dilation_max
    Hp, Wp = H + 2 * pad, W + 2 * pad
    Dp = torch.zeros(B, Hp, Wp, Fdim, dtype=D11.dtype, device=dev)
    Dp[:, pad:pad + H, pad:pad + W] = D11
    rows = Dp.reshape(B * Hp * Wp, Fdim)
    q = D21.reshape(B * N, Fdim)
    base = (torch.arange(B, device=dev) * (Hp * Wp)).repeat_interleave(N)
    center = (p1[..., 1].reshape(-1) + pad) * Wp + (p1[..., 0].reshape(-1) + pad) + base  # row of each query's centre
    best = torch.zeros(B * N, dtype=torch.float32, device=dev)

    n_side = 2 * radius + 1
    n_off = n_side * n_side
    unit = torch.arange(-radius, radius + 1, device=dev)
    offsets = (unit[None, :] * Wp + unit[:, None]).reshape(-1)  # u outer, v inner (the scan order)
    budget = _REFINE_CHUNK_ELEMS_GPU if D11.is_cuda else _REFINE_CHUNK_ELEMS_CPU
    BN = B * N
    chunk = max(1, min(BN, budget // (n_off * Fdim)))
    ones = torch.ones(Fdim, dtype=D11.dtype, device=dev)
    level_best = torch.empty(BN, dtype=torch.float32, device=dev)
    level_arg = torch.empty(BN, dtype=torch.int64, device=dev)
    # preallocated chunk buffers (fresh large allocations cost page faults on every chunk)
    lin_buf = torch.empty(chunk, n_off, dtype=torch.int64, device=dev)
    cand_buf = torch.empty(chunk * n_off, Fdim, dtype=D11.dtype, device=dev)
    score_buf = torch.empty(chunk * n_off, dtype=D11.dtype, device=dev)
    for d in range(dilation_max, 0, -1):
        off_d = offsets * d
        for q0 in range(0, BN, chunk):
            q1 = min(BN, q0 + chunk)
            n = q1 - q0
            lin = torch.add(center[q0:q1, None], off_d, out=lin_buf[:n])
            cand = torch.index_select(rows, 0, lin.view(-1), out=cand_buf[:n * n_off]).view(n, n_off, Fdim)
            qd = q[q0:q1, None, :]
            if half and fp16_exact:
                score = _dot_fp16_sequential(cand, qd)
            elif half:
                score = (cand * qd).sum(-1, dtype=torch.float16).float()
            elif D11.is_cuda:
                score = (cand * qd).sum(-1)
            else:  # one multiply and one matrix-vector product (faster than sum(-1) or a batched matmul)
                cand.mul_(qd)
                score = torch.mv(cand_buf[:n * n_off], ones, out=score_buf[:n * n_off]).view(n, n_off)
            torch.max(score, dim=-1, out=(level_best[q0:q1], level_arg[q0:q1]))  # first maximum in scan order
        better = (level_best > best).long()  # strictly better than all levels so far
        best = torch.maximum(best, level_best)
        center = center + better * (torch.take(off_d, level_arg))
    c = center - base
    return torch.stack([c % Wp - pad, torch.div(c, Wp, rounding_mode="floor") - pad], dim=-1).reshape(B, N, 2)
