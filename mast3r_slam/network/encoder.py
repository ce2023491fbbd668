"""ViT encoder shared by both views (spec: network §4.5): patch embed, blocks with 2D RoPE, final norm."""
from __future__ import annotations

import torch
from torch import nn

from .arch import Mast3rArch
from .layers import Block, PatchEmbed, RoPE2D


class Encoder(nn.Module):
    def __init__(self, arch: Mast3rArch):
        super().__init__()
        self.arch = arch
        self.patch_embed = PatchEmbed(arch.patch_size, 3, arch.enc_embed_dim)
        self.blocks = nn.ModuleList(
            Block(arch.enc_embed_dim, arch.enc_num_heads, arch.mlp_ratio, arch.norm_eps) for _ in range(arch.enc_depth)
        )
        self.norm = nn.LayerNorm(arch.enc_embed_dim, eps=arch.norm_eps)
        self.rope = RoPE2D(arch.enc_embed_dim // arch.enc_num_heads, arch.rope_base)

    def forward(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """img [B, 3, H, W] normalised -> (feat [B, N, C_enc] fp32, pos [B, N, 2] int64)."""
        tokens, pos = self.patch_embed(img)
        x = tokens.float()
        p = self.arch.patch_size
        dt = self.patch_embed.proj.weight.dtype
        rope = self.rope.tables(pos, max(img.shape[-2] // p, img.shape[-1] // p), dt)
        for blk in self.blocks:
            x = blk(x, rope)
        return self.norm(x), pos
