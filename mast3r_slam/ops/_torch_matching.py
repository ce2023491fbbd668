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


def _gather_pixels(img: Tensor, idx: Tensor, channels: int) -> Tensor:
    """img [B, HW, C] at linear indices idx [B, N] -> [B, N, channels] (first channels only).

    Rows are gathered with ``index_select`` on the flattened [B * HW, C] image (much faster on
    the CPU than ``torch.gather`` with an index expanded over the channels)."""
    B, HW, C = img.shape
    base = torch.arange(B, device=idx.device)[:, None] * HW
    rows = torch.index_select(img.reshape(B * HW, C), 0, (idx + base).reshape(-1)).reshape(idx.shape + (C,))
    return rows if channels == C else rows[..., :channels]


def _bilinear(img: Tensor, u: Tensor, v: Tensor, W: int, channels: int) -> Tensor:
    """Bilinear sample of img [B, HW, C] at float pixels (u, v) [B, N] inside [0, W-1) x [0, H-1).

    Weights and summation order as the original kernel: the corner opposite to the area.
    """
    u0 = torch.floor(u)
    v0 = torch.floor(v)
    du = (u - u0)[..., None]
    dv = (v - v0)[..., None]
    i00 = v0.long() * W + u0.long()
    r22 = _gather_pixels(img, i00, channels)  # (u0, v0)
    r21 = _gather_pixels(img, i00 + 1, channels)  # (u0+1, v0)
    r12 = _gather_pixels(img, i00 + W, channels)  # (u0, v0+1)
    r11 = _gather_pixels(img, i00 + W + 1, channels)  # (u0+1, v0+1)
    w11 = du * dv
    w12 = (1.0 - du) * dv
    w21 = du * (1.0 - dv)
    w22 = (1.0 - du) * (1.0 - dv)
    return w11 * r11 + w12 * r12 + w21 * r21 + w22 * r22


def _ray_cost(img: Tensor, u: Tensor, v: Tensor, W: int, target: Tensor, channels: int):
    """Interpolate, normalise the ray, return (error [B,N,3], cost [B,N], samples [B,N,channels])."""
    s = _bilinear(img, u, v, W, channels)
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
    img = rays_with_grad.reshape(B, H * W, 9)
    u = p_init[..., 0].clamp(1.0, W - 2.0)
    v = p_init[..., 1].clamp(1.0, H - 2.0)
    lam = torch.full_like(u, lambda_init)
    converged = torch.zeros(u.shape, dtype=torch.bool, device=u.device)
    for _ in range(max_iter):
        err, cost, s = _ray_cost(img, u, v, W, target_rays, 9)
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
        _, new_cost, _ = _ray_cost(img, u_new, v_new, W, target_rays, 3)
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
    half = D11.dtype == torch.float16
    if fp16_exact is None:
        fp16_exact = half and not D11.is_cuda
    D11f = D11.reshape(B, H * W, Fdim)
    u_c = p1[..., 0].clone()
    v_c = p1[..., 1].clone()
    best = torch.zeros((B, N), dtype=torch.float32, device=D11.device)
    neg_inf = torch.tensor(float("-inf"), device=D11.device)

    n_side = 2 * radius + 1
    n_off = n_side * n_side
    k = torch.arange(n_off, device=D11.device)
    off_u_unit = k // n_side - radius  # u outer
    off_v_unit = k % n_side - radius  # v inner
    budget = _REFINE_CHUNK_ELEMS_GPU if D11.is_cuda else _REFINE_CHUNK_ELEMS_CPU
    chunk = max(1, min(n_off, budget // max(1, B * N * Fdim)))
    batch_base = (torch.arange(B, device=D11.device) * (H * W))[:, None, None]
    D11_rows = D11f.reshape(B * H * W, Fdim)

    for d in range(dilation_max, 0, -1):
        level_best = torch.full((B, N), float("-inf"), dtype=torch.float32, device=D11.device)
        level_u = u_c
        level_v = v_c
        for c0 in range(0, n_off, chunk):
            ou = off_u_unit[c0 : c0 + chunk] * d
            ov = off_v_unit[c0 : c0 + chunk] * d
            cu = u_c[..., None] + ou  # [B, N, c]
            cv = v_c[..., None] + ov
            inside = (cu >= 0) & (cu < W) & (cv >= 0) & (cv < H)
            lin = torch.where(inside, cv * W + cu, torch.zeros_like(cu)) + batch_base
            cand = torch.index_select(D11_rows, 0, lin.reshape(-1)).reshape(B, N, -1, Fdim)
            if half and fp16_exact:
                score = _dot_fp16_sequential(cand, D21[:, :, None, :])
            elif half:
                score = (cand * D21[:, :, None, :]).sum(-1, dtype=torch.float16).float()
            elif D11.is_cuda:
                score = (cand * D21[:, :, None, :]).sum(-1)
            else:
                score = torch.einsum("bncf,bnf->bnc", cand, D21)
            score = torch.where(inside, score, neg_inf)
            cmax, carg = score.max(dim=-1)  # first maximum within the chunk (scan order)
            cbest_u = torch.gather(cu, -1, carg[..., None])[..., 0]
            cbest_v = torch.gather(cv, -1, carg[..., None])[..., 0]
            take = cmax > level_best
            level_best = torch.where(take, cmax, level_best)
            level_u = torch.where(take, cbest_u, level_u)
            level_v = torch.where(take, cbest_v, level_v)
        better = level_best > best
        best = torch.where(better, level_best, best)
        u_c = torch.where(better, level_u, u_c)
        v_c = torch.where(better, level_v, v_c)
    return torch.stack([u_c, v_c], dim=-1)
