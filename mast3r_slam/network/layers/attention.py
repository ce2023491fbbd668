"""Multi-head self- and cross-attention with 2D RoPE on queries and keys (spec: network §4.4).

Two numerically equivalent paths:

* ``"sdpa"`` (default): :func:`torch.nn.functional.scaled_dot_product_attention`, which picks a
  fused kernel (flash / memory-efficient) on the GPU;
* ``"math"``: the original's explicit ``softmax((q @ k^T) * Dh^-1/2) @ v`` with the softmax in
  fp32, for parity debugging.

The path is chosen per model with :func:`set_attention_impl` (or ``Mast3rModel.set_attention``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .rope import apply_rope

ATTENTION_IMPLS = ("sdpa", "math")


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, impl: str = "sdpa") -> torch.Tensor:
    """Scaled dot-product attention of [B, heads, N, Dh] tensors -> [B, heads, Nq, Dh]."""
    if impl == "sdpa":
        return F.scaled_dot_product_attention(q, k, v)
    scale = q.shape[-1] ** -0.5
    logits = (q @ k.transpose(-2, -1)) * scale
    probs = logits.float().softmax(dim=-1).to(v.dtype)
    return probs @ v


def _heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """[B, N, C] -> [B, heads, N, C/heads]."""
    B, N, C = x.shape
    return x.view(B, N, num_heads, C // num_heads).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    """[B, heads, N, Dh] -> [B, N, heads*Dh] (channel = head*Dh + d)."""
    B, H, N, D = x.shape
    return x.transpose(1, 2).reshape(B, N, H * D)


class SelfAttention(nn.Module):
    """qkv Linear (rows [q; k; v], head-major) -> RoPE(q, k) -> attention -> proj."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim, bias=True)
        self.impl = "sdpa"

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        B, N, C = x.shape  # x: [B, N, C]
        qkv = self.qkv(x).view(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        qk = apply_rope(qkv[:2], *rope)  # q and k rotated together: [2, B, heads, N, Dh]
        return self.proj(_merge(attention(qk[0], qk[1], qkv[2], self.impl)))


class CrossAttention(nn.Module):
    """Queries from x (own positions), keys/values from y (the other view's positions)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.projq = nn.Linear(dim, dim, bias=True)
        self.projk = nn.Linear(dim, dim, bias=True)
        self.projv = nn.Linear(dim, dim, bias=True)
        self.proj = nn.Linear(dim, dim, bias=True)
        self.impl = "sdpa"

    def forward(self, x: torch.Tensor, y: torch.Tensor, rope_x, rope_y) -> torch.Tensor:
        # x: [B, Nx, C] queries, y: [B, Ny, C] keys and values (already normalised)
        q = apply_rope(_heads(self.projq(x), self.num_heads), *rope_x)
        k = apply_rope(_heads(self.projk(y), self.num_heads), *rope_y)
        v = _heads(self.projv(y), self.num_heads)
        return self.proj(_merge(attention(q, k, v, self.impl)))


def set_attention_impl(module: nn.Module, impl: str) -> None:
    """Switch every attention layer under ``module`` to ``impl`` ('sdpa' or 'math')."""
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"attention impl must be one of {ATTENTION_IMPLS}, got {impl!r}")
    for m in module.modules():
        if isinstance(m, (SelfAttention, CrossAttention)):
            m.impl = impl
