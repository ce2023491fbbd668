"""PyTorch implementations of the matching kernels (mirrors of ``iter_proj`` and ``refine_matches``).

Each function has the same arguments as the public op in :mod:`mast3r_slam.ops` without the
validation (inputs are contiguous and of the right dtype). They run on any device; loops are over
iterations, dilation levels and offset chunks only, every step is vectorised over all queries.
"""
from __future__ import annotations

import torch

Tensor = torch.Tensor

# Gathered candidate descriptors of one refinement step are kept below this many elements: the
# 49 offsets of a level are processed in chunks (small on the CPU, where cache-sized chunks are
# several times faster than one big gather; large on a GPU, where launches dominate).
_REFINE_CHUNK_ELEMS_CPU = 1 << 21
_REFINE_CHUNK_ELEMS_GPU = 1 << 26


def _bilinear(rows: Tensor, base: Tensor, u: Tensor, v: Tensor, W: int, channels: int) -> Tensor:
    """Bilinear sample of the flattened image rows [B * HW, C] at float pixels (u, v) [B, N]
    inside [0, W-1) x [0, H-1) (base [B, 1] = b * HW). Weights as the original kernel: each
    corner weighted by the area opposite to it. One row gather for the four corners."""
    u0 = torch.floor(u)
    v0 = torch.floor(v)
    du = u - u0
    dv = v - v0
    i00 = v0.long() * W + u0.long() + base
    idx = torch.stack([i00 + W + 1, i00 + W, i00 + 1, i00], dim=-1)  # (u0+1,v0+1), (u0,v0+1), (u0+1,v0), (u0,v0)
    C = rows.shape[-1]
    corners = torch.index_select(rows, 0, idx.reshape(-1)).reshape(idx.shape + (C,))
    if channels != C:
        corners = corners[..., :channels]
    w = torch.stack([du * dv, (1.0 - du) * dv, du * (1.0 - dv), (1.0 - du) * (1.0 - dv)], dim=-1)
    return (w[..., None] * corners).sum(-2)


def _ray_cost(rows: Tensor, base: Tensor, u: Tensor, v: Tensor, W: int, target: Tensor, channels: int):
    """Interpolate, normalise the ray, return (error [B,N,3], cost [B,N], samples [B,N,channels])."""
    s = _bilinear(rows, base, u, v, W, channels)
    r = s[..., :3]
    r = r * (1.0 / torch.sqrt((r * r).sum(-1, keepdim=True)))
    err = r - target
    cost = (err * err).sum(-1)
    return err, cost, s


def _iter_proj(
    rays_with_grad: Tensor,  # [B, H, W, 9]
    target_rays: Tensor,  # [B, HW, 3]
    p_init: Tensor,  # [B, HW, 2]
    max_iter: int,
    lambda_init: float,
    cost_thresh: float,
) -> tuple[Tensor, Tensor]:
    """Per-query Levenberg-Marquardt on the ray image (spec section 3.2); mirrors ``ops.iter_proj``.

    Always ``max_iter`` iterations; returns (p [B, HW, 2] float, converged [B, HW] bool of the
    last iteration).
    """
    B, H, W, _ = rays_with_grad.shape
    rows = rays_with_grad.reshape(B * H * W, 9)
    base = torch.arange(B, device=rows.device)[:, None] * (H * W)
    u = p_init[..., 0].clamp(1.0, W - 2.0)
    v = p_init[..., 1].clamp(1.0, H - 2.0)
    lam = torch.full_like(u, lambda_init)
    converged = torch.zeros(u.shape, dtype=torch.bool, device=u.device)
    for _ in range(max_iter):
        err, cost, s = _ray_cost(rows, base, u, v, W, target_rays, 9)
        gx = s[..., 3:6]
        gy = s[..., 6:9]
        A00 = (gx * gx).sum(-1) + lam
        A01 = (gx * gy).sum(-1)
        A11 = (gy * gy).sum(-1) + lam
        b0 = -(err * gx).sum(-1)
        b1 = -(err * gy).sum(-1)
        det_inv = 1.0 / (A00 * A11 - A01 * A01)
        u_new = (u + det_inv * (A11 * b0 - A01 * b1)).clamp(1.0, W - 2.0)
        v_new = (v + det_inv * (-A01 * b0 + A00 * b1)).clamp(1.0, H - 2.0)
        _, new_cost, _ = _ray_cost(rows, base, u_new, v_new, W, target_rays, 3)
        accept = new_cost < cost
        u = torch.where(accept, u_new, u)
        v = torch.where(accept, v_new, v)
        lam = torch.where(accept, lam * 0.1, lam * 10.0)
        converged = torch.where(accept, new_cost < cost_thresh, cost < cost_thresh)
    return torch.stack([u, v], dim=-1), converged


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
    D21: Tensor,  # [B, HW, F]
    p1: Tensor,  # [B, HW, 2] int64
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
    D11_rows = D11.reshape(B * H * W, Fdim)
    batch_base = (torch.arange(B, device=dev) * (H * W))[:, None]
    u_c = p1[..., 0].clone()
    v_c = p1[..., 1].clone()
    best = torch.zeros((B, N), dtype=torch.float32, device=dev)

    n_side = 2 * radius + 1
    n_off = n_side * n_side
    unit = torch.arange(-radius, radius + 1, device=dev)
    budget = _REFINE_CHUNK_ELEMS_GPU if D11.is_cuda else _REFINE_CHUNK_ELEMS_CPU
    chunk = max(1, min(n_off, budget // max(1, B * N * Fdim)))
    score = torch.empty((B, N, n_off), dtype=torch.float32, device=dev)

    for d in range(dilation_max, 0, -1):
        # the level's candidates: a (2r+1) x (2r+1) grid, u outer and v inner (the scan order)
        cu = u_c[..., None] + unit * d  # [B, N, 2r+1]
        cv = v_c[..., None] + unit * d
        in_u = (cu >= 0) & (cu < W)
        in_v = (cv >= 0) & (cv < H)
        inside = (in_u[..., :, None] & in_v[..., None, :]).reshape(B, N, n_off)
        lin = (cv.clamp(0, H - 1)[..., None, :] * W + cu.clamp(0, W - 1)[..., :, None]).reshape(B, N, n_off)
        lin = lin + batch_base[..., None]
        for c0 in range(0, n_off, chunk):
            c1 = min(n_off, c0 + chunk)
            cand = torch.index_select(D11_rows, 0, lin[..., c0:c1].reshape(-1)).reshape(B, N, c1 - c0, Fdim)
            if half and fp16_exact:
                score[..., c0:c1] = _dot_fp16_sequential(cand, D21[:, :, None, :])
            elif half:
                score[..., c0:c1] = (cand * D21[:, :, None, :]).sum(-1, dtype=torch.float16).float()
            elif D11.is_cuda:
                score[..., c0:c1] = (cand * D21[:, :, None, :]).sum(-1)
            else:
                score[..., c0:c1] = torch.einsum("bncf,bnf->bnc", cand, D21)
        score.masked_fill_(~inside, float("-inf"))
        level_best, arg = score.max(dim=-1)  # first maximum in scan order
        better = level_best > best  # strictly better than all levels so far
        best = torch.where(better, level_best, best)
        u_c = torch.where(better, torch.gather(cu, -1, (arg // n_side)[..., None])[..., 0], u_c)
        v_c = torch.where(better, torch.gather(cv, -1, (arg % n_side)[..., None])[..., 0], v_c)
    return torch.stack([u_c, v_c], dim=-1)
