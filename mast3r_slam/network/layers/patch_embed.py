"""Patch embedding of MASt3R (``PatchEmbedDust3R``, spec: network §4.2).

A 16x16 stride-16 convolution, tokens in row-major order (n = y*w + x), no norm, no additive
position embedding; positions are the (y, x) patch coordinates. Portrait images are processed in
their own orientation (the checkpoint loader of the original forces ``landscape_only=False``).
"""
from __future__ import annotations

import torch
from torch import nn


def patch_positions(h: int, w: int, batch: int, device) -> torch.Tensor:
    """(y, x) coordinates of an h x w token grid: [batch, h*w, 2] int64, row-major."""
    # expand + reshape only: no host synchronisation, so it can be captured in a CUDA graph
    ys = torch.arange(h, device=device).view(h, 1).expand(h, w)
    xs = torch.arange(w, device=device).view(1, w).expand(h, w)
    return torch.stack((ys, xs), dim=-1).view(1, h * w, 2).expand(batch, h * w, 2)


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 1024):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size, bias=True)

    def forward(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """img [B, 3, H, W] -> (tokens [B, N, C] in the conv's dtype, pos [B, N, 2] int64)."""
        B, _, H, W = img.shape
        p = self.patch_size
        if H % p or W % p:
            raise ValueError(f"PatchEmbed: image height {H} and width {W} must be multiples of {p}")
        x = self.proj(img.to(self.proj.weight.dtype))  # [B, C, h, w]
        tokens = x.flatten(2).transpose(1, 2)
        return tokens, patch_positions(H // p, W // p, B, img.device)
