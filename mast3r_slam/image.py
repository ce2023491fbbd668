"""Image preparation for the network, exactly as the original (spec: network §5.1, SLAM §8.2).

1. float [0,1] RGB -> uint8 by truncation of x*255 (our loaders already give uint8);
2. Pillow resize so that the long side is ``img_size`` (LANCZOS when shrinking, BICUBIC when
   enlarging), new size = round-half-even(side * img_size / long_side);
3. centre crop to multiples of 16 (a square image is cropped to 4:3);
4. normalise to [-1, 1]: (x/255 - 0.5)/0.5.

The intrinsics of the network-resolution image follow the original's rule (which ignores the
half-pixel-centre convention, see docs/QUIRKS.md).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image


@dataclass
class PreparedImage:
    img: torch.Tensor  # [1, 3, H, W] float32 in [-1, 1]
    uimg: np.ndarray  # [H, W, 3] uint8 crop (for colours and saving)
    true_shape: tuple[int, int]  # (H, W)
    resized_shape: tuple[int, int]  # (H', W') before the crop
    crop_offset: tuple[float, float]  # (dx, dy) removed on the left / top
    scale: tuple[float, float]  # (W_orig / W', H_orig / H')

    @property
    def shape(self) -> tuple[int, int]:
        return self.true_shape

    def adjust_intrinsics(self, K: np.ndarray) -> np.ndarray:
        """Intrinsics of the original-resolution (undistorted) image -> network resolution."""
        K = np.asarray(K, dtype=np.float64).copy()
        sw, sh = self.scale
        dx, dy = self.crop_offset
        K[0, 0] /= sw
        K[0, 2] = K[0, 2] / sw - dx
        K[1, 1] /= sh
        K[1, 2] = K[1, 2] / sh - dy
        return K


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    """Accept uint8 or float [0,1] images; floats are truncated like the original's np.uint8(x*255)."""
    if rgb.dtype == np.uint8:
        return rgb
    return np.clip(rgb * 255, 0, 255).astype(np.uint8)


def resize_crop_shape(width: int, height: int, img_size: int = 512) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    """Return ((W', H') resized size, (left, top, right, bottom) crop box) for an input size."""
    S = max(width, height)
    new_w, new_h = int(round(width * img_size / S)), int(round(height * img_size / S))
    cx, cy = new_w // 2, new_h // 2
    halfw, halfh = ((2 * cx) // 16) * 8, ((2 * cy) // 16) * 8
    if new_w == new_h:
        halfh = 3 * halfw // 4
    return (new_w, new_h), (cx - halfw, cy - halfh, cx + halfw, cy + halfh)


def prepare_image(rgb: np.ndarray, img_size: int = 512) -> PreparedImage:
    """Resize and crop an HxWx3 RGB image (uint8, or float in [0,1]) for the network."""
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"prepare_image: expected an HxWx3 RGB image, got shape {rgb.shape}")
    rgb8 = to_uint8(rgb)
    h, w = rgb8.shape[:2]
    (new_w, new_h), box = resize_crop_shape(w, h, img_size)
    pil = Image.fromarray(rgb8)
    if (new_w, new_h) != (w, h):
        resample = Image.LANCZOS if max(w, h) > img_size else Image.BICUBIC
        pil = pil.resize((new_w, new_h), resample)
    pil = pil.crop(box)
    crop = np.array(pil)  # writable copy (torch.from_numpy warns on read-only arrays)
    t = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1).float().div_(255.0)
    img = ((t - 0.5) / 0.5)[None]
    H, W = crop.shape[:2]
    return PreparedImage(
        img=img,
        uimg=crop,
        true_shape=(H, W),
        resized_shape=(new_h, new_w),
        crop_offset=((new_w - W) / 2.0, (new_h - H) / 2.0),
        scale=(w / new_w, h / new_h),
    )
