"""Transformer MLP: fc1 -> exact (erf) GELU -> fc2, with biases (spec: network §4.4)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, out_dim: int | None = None, linear_cls: type = nn.Linear):
        super().__init__()
        self.fc1 = linear_cls(dim, hidden, bias=True)
        self.fc2 = linear_cls(hidden, out_dim or dim, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))
