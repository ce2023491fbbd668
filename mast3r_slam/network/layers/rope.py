"""2D rotary position embedding (RoPE) of CroCo, base 100 (spec: network §4.3).

A head of size Dh is split into a y half (channels [0, Dh/2)) and an x half ([Dh/2, Dh)); inside
each half, channel j is paired with channel j + Dh/4 and rotated by the angle ``p * w_j`` with
``w_j = base^(-2j / (Dh/2))`` (p = row for the y half, column for the x half):

    out[j]        = t[j] cos - t[j + Dh/4] sin
    out[j + Dh/4] = t[j + Dh/4] cos + t[j] sin

Numerics follow the original's PyTorch fallback (fp32 frequencies ``1 / base**(arange(0, D, 2)/D)``,
fp32 angles ``p * w``, ``t * cos + rotate_half(t) * sin``). Instead of rebuilding tables in every
attention call, :meth:`RoPE2D.tables` builds per-token (cos, signed sin) tables once per forward
pass from a cached 1-D table, and every attention layer reuses them; :func:`apply_rope` is then
two multiplies and an add, with no loop over heads or positions. The sign of ``rotate_half`` is
folded into the sin table (negation is exact, so results are bit-identical to the fallback).
For half-precision tokens the tables are computed in fp32 and rounded once (the original's
fallback rounds the *angle* to half first, which is less accurate).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


class RoPE2D:
    """Cos/sin tables of the 2D RoPE for one head size (no parameters)."""

    def __init__(self, head_dim: int, base: float = 100.0):
        if head_dim % 4 != 0:
            raise ValueError(f"RoPE2D: head_dim must be a multiple of 4, got {head_dim}")
        self.head_dim = head_dim
        self.base = float(base)
        self._cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def _table_1d(self, n_pos: int, device: torch.device, dtype: torch.dtype):
        """(cos [P, Dh/2], signed sin [P, Dh/2]) for positions 0..P-1, P >= n_pos (grown by powers of 2)."""
        key = (device, dtype)
        hit = self._cache.get(key)
        if hit is not None and hit[0].shape[0] >= n_pos:
            return hit
        cap = 64
        while cap < n_pos:
            cap *= 2
        d = self.head_dim // 2  # channels per axis
        inv_freq = 1.0 / (self.base ** (torch.arange(0, d, 2, device=device).float() / d))  # [d/2]
        t = torch.arange(cap, device=device, dtype=torch.float32)
        ang = t[:, None] * inv_freq[None, :]  # [P, d/2] fp32
        cos, sin = ang.cos(), ang.sin()
        cos = torch.cat((cos, cos), dim=-1).to(dtype)
        sin = torch.cat((-sin, sin), dim=-1).to(dtype)  # sign of rotate_half folded in
        self._cache[key] = (cos, sin)
        return cos, sin

    def tables(self, pos: torch.Tensor, max_pos: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token tables for ``pos`` [B, N, 2] (y, x), all entries < ``max_pos``.

        Returns (cos, sin), each [B, 1, N, Dh] in ``dtype``, to broadcast over heads.
        """
        cos1, sin1 = self._table_1d(max_pos, pos.device, dtype)
        cy, cx = F.embedding(pos[..., 0], cos1), F.embedding(pos[..., 1], cos1)
        sy, sx = F.embedding(pos[..., 0], sin1), F.embedding(pos[..., 1], sin1)
        cos = torch.cat((cy, cx), dim=-1)[:, None]
        sin = torch.cat((sy, sx), dim=-1)[:, None]
        return cos, sin


def apply_rope(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``t`` [..., B, heads, N, Dh] with tables from :meth:`RoPE2D.tables` ([B, 1, N, Dh])."""
    q = t.shape[-1] // 4
    # swap the two quarter-blocks inside each half: [a, b | c, d] -> [b, a | d, c]
    swapped = t.unflatten(-1, (2, 2, q)).flip(-2).flatten(-3)
    return t * cos + swapped * sin
