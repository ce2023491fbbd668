"""Small geometry helpers shared by the frontend and backend (pixels, rays, calibrated points)."""
from __future__ import annotations

import torch


def pixel_grid(H: int, W: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Integer pixel coordinates (u, v) of every pixel in row-major order [HW, 2]."""
    v, u = torch.meshgrid(torch.arange(H, device=device, dtype=dtype), torch.arange(W, device=device, dtype=dtype), indexing="ij")
    return torch.stack([u.reshape(-1), v.reshape(-1)], dim=-1)


def rays(X: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Unit rays of points [..., 3]."""
    return X / X.norm(dim=-1, keepdim=True).clamp_min(eps)


def constrain_points_to_ray(X: torch.Tensor, K: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """Replace every point by ``z K^-1 [u, v, 1]`` at its own pixel (keeps only the depth).

    X: [..., HW, 3] in the camera frame; K: [3, 3] at network resolution.
    """
    uv = pixel_grid(H, W, device=X.device, dtype=X.dtype)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    z = X[..., 2:3]
    x = (uv[:, 0:1] - cx) / fx * z
    y = (uv[:, 1:2] - cy) / fy * z
    return torch.cat([x, y, z], dim=-1)


def project(P: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Pinhole projection of camera-frame points [..., 3] -> pixels [..., 2] (no validity check)."""
    z = P[..., 2:3]
    return torch.cat([K[0, 0] * P[..., 0:1] / z + K[0, 2], K[1, 1] * P[..., 1:2] / z + K[1, 2]], dim=-1)


def depth_from_pointmap(X: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """z of a flattened pointmap [HW, 3] as an image [H, W]."""
    return X[..., 2].reshape(X.shape[:-2] + (H, W))
