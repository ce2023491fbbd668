"""Transformer blocks of the encoder and decoder (spec: network §4.4).

Precision: the residual stream and the LayerNorms always run in fp32; the attention and MLP
sub-layers run in the dtype of their weights (fp32, or fp16/bf16 for the fast path), like
autocast does, so half precision does not overflow the residual stream.
"""
from __future__ import annotations

import torch
from torch import nn

from .attention import CrossAttention, SelfAttention
from .mlp import Mlp


class Block(nn.Module):
    """Encoder block: x += Attn(LN1(x)); x += Mlp(LN2(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = SelfAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, rope) -> torch.Tensor:
        # x: [B, N, C] fp32 residual stream
        dt = self.attn.qkv.weight.dtype
        x = x + self.attn(self.norm1(x).to(dt), rope)
        x = x + self.mlp(self.norm2(x).to(dt))
        return x


class DecoderBlock(nn.Module):
    """Decoder block: self-attention, cross-attention to the other view (normed by norm_y), MLP."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = SelfAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.cross_attn = CrossAttention(dim, num_heads)
        self.norm3 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.norm_y = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor, y: torch.Tensor, rope_x, rope_y) -> torch.Tensor:
        # x: [B, Nx, C] own tokens, y: [B, Ny, C] other view's tokens (both fp32)
        dt = self.attn.qkv.weight.dtype
        x = x + self.attn(self.norm1(x).to(dt), rope_x)
        y_n = self.norm_y(y).to(dt)
        x = x + self.cross_attn(self.norm2(x).to(dt), y_n, rope_x, rope_y)
        x = x + self.mlp(self.norm3(x).to(dt))
        return x
