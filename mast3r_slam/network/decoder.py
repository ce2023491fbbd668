"""Two-stream ViT decoder with cross-attention (spec: network §4.6).

Both streams read the previous layer's outputs of both streams (parallel update). The shared
``embed`` (decoder_embed) maps encoder tokens to the decoder width, the shared ``norm`` is applied
to the last layer only. The decoder returns the tokens that the heads read: the layers listed in
``arch.hooks[1:]`` (the last one normalised), per view.
"""
from __future__ import annotations

import torch
from torch import nn

from .arch import Mast3rArch
from .layers import DecoderBlock, RoPE2D


class Decoder(nn.Module):
    def __init__(self, arch: Mast3rArch):
        super().__init__()
        self.arch = arch
        d = arch.dec_embed_dim
        self.embed = nn.Linear(arch.enc_embed_dim, d, bias=True)
        self.blocks1 = nn.ModuleList(
            DecoderBlock(d, arch.dec_num_heads, arch.mlp_ratio, arch.norm_eps) for _ in range(arch.dec_depth)
        )
        self.blocks2 = nn.ModuleList(
            DecoderBlock(d, arch.dec_num_heads, arch.mlp_ratio, arch.norm_eps) for _ in range(arch.dec_depth)
        )
        self.norm = nn.LayerNorm(d, eps=arch.norm_eps)
        self.rope = RoPE2D(d // arch.dec_num_heads, arch.rope_base)

    def forward(
        self,
        feat1: torch.Tensor,  # [B, N1, C_enc]
        pos1: torch.Tensor,  # [B, N1, 2]
        feat2: torch.Tensor,  # [B, N2, C_enc]
        pos2: torch.Tensor,  # [B, N2, 2]
        max_pos: int,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Returns, per view, the fp32 tokens [B, N, C_dec] of the hooked layers (last one normed)."""
        dt = self.embed.weight.dtype
        rope1 = self.rope.tables(pos1, max_pos, dt)
        rope2 = self.rope.tables(pos2, max_pos, dt)
        x1 = self.embed(feat1.to(dt)).float()
        x2 = self.embed(feat2.to(dt)).float()
        hooks = set(self.arch.hooks[1:-1])
        out1, out2 = [], []
        for i, (b1, b2) in enumerate(zip(self.blocks1, self.blocks2), start=1):
            x1, x2 = b1(x1, x2, rope1, rope2), b2(x2, x1, rope2, rope1)
            if i in hooks:
                out1.append(x1)
                out2.append(x2)
        out1.append(self.norm(x1))
        out2.append(self.norm(x2))
        return out1, out2
