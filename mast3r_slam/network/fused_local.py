"""Fused post-processing of the local-feature MLP output on the GPU (one Triton kernel).

The MLP gives, per token, ``(d + 1) * p * p`` values ordered ``k * p * p + i * p + j`` (channel k of
pixel (i, j) of the token's p x p patch, the order ``F.pixel_shuffle`` reads). The PyTorch path
(:func:`heads.shuffle_local` + :func:`heads.postprocess`) copies them to channels-last fp32 with a
transposing copy, then normalises the descriptor and takes ``exp`` of its confidence in further
passes. This kernel reads each token's block once (coalesced), computes in fp32

    desc = d / |d| (no epsilon, as the original),  desc_conf = exp(q),

and writes ``desc [B, H, W, d]`` and ``desc_conf [B, H, W]`` (fp32) directly.

:func:`fused_local_postprocess` returns None whenever the kernel is not usable (no Triton, not a
CUDA tensor, an unexpected shape, or a failed first check against the PyTorch path), so callers
fall back to PyTorch. The check runs once per device, outside any CUDA-graph capture (the warm-up
runs before a capture call it first).
"""
from __future__ import annotations

import torch

try:  # optional: Triton ships with CUDA builds of PyTorch
    import triton
    import triton.language as tl
except Exception:  # noqa: BLE001 - no Triton (CPU builds): PyTorch path
    triton = None
    tl = None

_CHECKED: dict[str, bool] = {}

if triton is not None:

    @triton.jit(do_not_specialize=["h", "w"])
    def _local_post_kernel(loc_ptr, desc_ptr, conf_ptr, h, w, D: tl.constexpr, DP: tl.constexpr, P: tl.constexpr):
        tok = tl.program_id(0)  # token index in [0, B h w)
        hw = h * w
        b = tok // hw
        r = tok % hw
        ty = r // w
        tx = r % w
        c = tl.arange(0, DP)[:, None]  # channel (padded to a power of two)
        k = tl.arange(0, P * P)[None, :]  # pixel of the patch, i * P + j
        x = tl.load(loc_ptr + tok.to(tl.int64) * ((D + 1) * P * P) + c * (P * P) + k, mask=c < D + 1, other=0.0)
        x = x.to(tl.float32)
        dmask = c < D
        xd = tl.where(dmask, x, 0.0)
        inv = 1.0 / tl.sqrt(tl.sum(xd * xd, axis=0))  # [P*P]
        Wimg = w * P
        pix = ((b * h + ty) * P + k // P).to(tl.int64) * Wimg + tx * P + k % P  # [1, P*P] output pixel index
        tl.store(desc_ptr + pix * D + c, xd * inv[None, :], mask=dmask)
        q = tl.sum(tl.where(c == D, x, 0.0), axis=0)  # [P*P]
        kk = tl.arange(0, P * P)
        pix1 = ((b * h + ty) * P + kk // P).to(tl.int64) * Wimg + tx * P + kk % P
        tl.store(conf_ptr + pix1, tl.exp(q))


def _launch(loc: torch.Tensor, h: int, w: int, p: int, d: int):
    B = loc.shape[0]
    loc = loc.contiguous()
    desc = torch.empty((B, h * p, w * p, d), device=loc.device, dtype=torch.float32)
    conf = torch.empty((B, h * p, w * p), device=loc.device, dtype=torch.float32)
    dp = 1 << (d).bit_length()  # power of two > d
    _local_post_kernel[(B * h * w,)](loc, desc, conf, h, w, D=d, DP=dp, P=p, num_warps=4)
    return desc, conf


def _reference(loc: torch.Tensor, h: int, w: int, p: int, d: int):
    from .heads import shuffle_local

    raw = shuffle_local(loc, h, w, p)
    desc = raw[..., :d]
    return desc / desc.norm(dim=-1, keepdim=True), raw[..., d].exp()


def _usable(device: torch.device) -> bool:
    key = str(device)
    ok = _CHECKED.get(key)
    if ok is None:
        if torch.cuda.is_current_stream_capturing():
            return False
        try:
            g = torch.Generator(device="cpu").manual_seed(0)
            d, p, h, w = 24, 16, 2, 3
            loc = torch.randn(2, h * w, (d + 1) * p * p, generator=g).to(device, torch.float16)
            desc, conf = _launch(loc, h, w, p, d)
            rd, rc = _reference(loc, h, w, p, d)
            ok = bool(torch.allclose(desc, rd, rtol=1e-5, atol=1e-6) and torch.allclose(conf, rc, rtol=1e-5, atol=1e-6))
        except Exception:  # noqa: BLE001 - compile / launch failure: PyTorch path
            ok = False
        _CHECKED[key] = ok
    return ok


def fused_local_postprocess(loc: torch.Tensor, h: int, w: int, p: int, d: int):
    """loc [B, h*w, (d+1)*p*p] -> (desc [B, h*p, w*p, d], desc_conf [B, h*p, w*p]) fp32, or None (use PyTorch)."""
    if triton is None or not loc.is_cuda or loc.dim() != 3 or loc.shape[1] != h * w or loc.shape[2] != (d + 1) * p * p:
        return None
    if p * p > 1024 or (p & (p - 1)) or loc.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return None
    if not _usable(loc.device):
        return None
    return _launch(loc, h, w, p, d)
