"""Frames and the run's mode.

A :class:`Frame` is one input image prepared for the network, with its pose and (once it has
been predicted) its canonical pointmap. Keyframes are frames kept in the keyframe store.
Pointmaps are flattened row-major: pixel (u, v) has linear index ``n = u + W * v``.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .image import PreparedImage, prepare_image
from .lie import Sim3


class Mode(enum.IntEnum):
    INIT = 0
    TRACKING = 1
    RELOC = 2
    TERMINATED = 3


@dataclass
class Frame:
    frame_id: int  # index in the (subsampled) sequence
    img: torch.Tensor  # [1, 3, H, W] normalised network input in [-1, 1]
    uimg: torch.Tensor  # [H, W, 3] float32 RGB in [0, 1] (CPU)
    img_shape: tuple[int, int]  # (H, W)
    T_WC: torch.Tensor  # [1, 8] Sim(3) camera-to-world
    timestamp: str = ""
    K: torch.Tensor | None = None  # [3, 3] intrinsics at network resolution (calibrated mode)
    X_canon: torch.Tensor | None = None  # [HW, 3] canonical pointmap in the frame's own camera
    C: torch.Tensor | None = None  # [HW, 1] accumulated confidence (average = C / N)
    N: int = 0  # number of fused measurements
    N_updates: int = 0  # number of update_pointmap calls
    feat: Any = None  # cached encoder output (prior-specific, e.g. [1, P, 1024])
    pos: Any = None  # cached patch positions ([1, P, 2] int64)
    score: float | None = None  # best_score fusion mode
    extras: dict = field(default_factory=dict)  # e.g. dynamic mask

    @property
    def H(self) -> int:
        return self.img_shape[0]

    @property
    def W(self) -> int:
        return self.img_shape[1]

    @property
    def device(self) -> torch.device:
        return self.img.device

    def C_avg(self) -> torch.Tensor:
        """Average confidence C / N [HW, 1]."""
        return self.C / max(self.N, 1)


def create_frame(
    frame_id: int,
    rgb: np.ndarray,
    T_WC: torch.Tensor | None = None,
    *,
    img_size: int = 512,
    device: str | torch.device = "cpu",
    K_orig: np.ndarray | None = None,
    timestamp: str = "",
) -> Frame:
    """Prepare an HxWx3 RGB image (uint8 or float [0,1]) as a :class:`Frame`.

    ``K_orig`` are the intrinsics of ``rgb`` (already undistorted); when given, the frame's ``K``
    holds the intrinsics at network resolution.
    """
    prep: PreparedImage = prepare_image(rgb, img_size)
    if T_WC is None:
        T_WC = Sim3.identity(1, device=device)
    K = None
    if K_orig is not None:
        K = torch.as_tensor(prep.adjust_intrinsics(K_orig), dtype=torch.float32, device=device)
    return Frame(
        frame_id=frame_id,
        img=prep.img.to(device),
        uimg=torch.from_numpy(prep.uimg.astype(np.float32) / 255.0),
        img_shape=prep.true_shape,
        T_WC=T_WC.to(device=device, dtype=torch.float32).reshape(1, 8).clone(),
        timestamp=timestamp,
        K=K,
    )
