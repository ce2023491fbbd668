"""The dataset contract (one file per source implements it; see ``__init__.py`` for the registry).

A dataset yields :class:`Sample` objects: an RGB uint8 image (undistorted when the dataset is
calibrated and undistortion is on), its timestamp string exactly as in the source, and optional
depth / ground-truth pose for tests and the ground-truth prior. Optional capabilities are
``None`` values, never missing attributes.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import CalibrationError


@dataclass
class Intrinsics:
    """Pinhole intrinsics of the *raw* images plus OpenCV radial-tangential distortion.

    ``K_undistorted`` is the camera matrix of the images a dataset yields once undistortion is
    applied (OpenCV optimal new camera matrix, alpha 0, principal point optionally centred).
    """

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    distortion: np.ndarray = field(default_factory=lambda: np.zeros(0))  # k1, k2, p1, p2[, k3]
    center_principal_point: bool = True

    def __post_init__(self):
        self.distortion = np.asarray(self.distortion, dtype=np.float64).reshape(-1)
        self._maps = None
        self._K_new = None

    @property
    def K(self) -> np.ndarray:
        return np.array([[self.fx, 0, self.cx], [0, self.fy, self.cy], [0, 0, 1]], dtype=np.float64)

    @property
    def has_distortion(self) -> bool:
        return self.distortion.size > 0 and bool(np.any(self.distortion != 0))

    def _init_undistort(self) -> None:
        import cv2

        if self._maps is not None:
            return
        size = (self.width, self.height)
        dist = self.distortion if self.distortion.size else np.zeros(5)
        K_new, _ = cv2.getOptimalNewCameraMatrix(self.K, dist, size, 0, size, self.center_principal_point)
        self._K_new = K_new
        self._maps = cv2.initUndistortRectifyMap(self.K, dist, None, K_new, size, cv2.CV_32FC1)

    @property
    def K_undistorted(self) -> np.ndarray:
        """Camera matrix of undistorted images (equals K when there is no distortion)."""
        if not self.has_distortion and not self.center_principal_point:
            return self.K
        self._init_undistort()
        return self._K_new.copy()

    def undistort(self, img: np.ndarray) -> np.ndarray:
        """Bilinear remap of a raw image to the undistorted pinhole camera ``K_undistorted``."""
        import cv2

        if img.shape[1] != self.width or img.shape[0] != self.height:
            raise CalibrationError(
                f"image is {img.shape[1]}x{img.shape[0]} but the calibration is for {self.width}x{self.height}"
            )
        self._init_undistort()
        return cv2.remap(img, self._maps[0], self._maps[1], cv2.INTER_LINEAR)

    def __getstate__(self):  # maps are rebuilt on demand in other processes
        d = dict(self.__dict__)
        d["_maps"] = None
        d["_K_new"] = None
        return d


@dataclass
class Sample:
    index: int  # position in the (subsampled) sequence
    timestamp: str  # exactly as in the source (seconds for TUM, nanoseconds for EuRoC, ...)
    rgb: np.ndarray  # [H, W, 3] uint8
    depth: np.ndarray | None = None  # [H, W] float32 metres aligned with rgb (0 = missing)
    T_WC_gt: np.ndarray | None = None  # [7] ground-truth camera-to-world [t, q_xyzw] if known


class Dataset(ABC):
    """Base class of every input source.

    Subclasses set ``name`` (the sequence name used for the output folder), ``path``,
    ``timestamps`` (list of strings, one per frame after subsampling) and, when known,
    ``intrinsics``; and implement :meth:`read` for one raw frame.
    """

    #: registry key, e.g. "tum"
    kind: str = "base"
    #: False for live sources (RealSense, webcam): unknown length, no ground truth
    is_live: bool = False

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.name = self.path.stem if self.path.suffix else self.path.name
        self.timestamps: list[str] = []
        self.intrinsics: Intrinsics | None = None
        self.use_calibration = False  # undistort frames with ``intrinsics``
        self._stride = 1

    # ---- to implement -----------------------------------------------------------------------
    @classmethod
    def detect(cls, path: Path) -> bool:
        """True when ``path`` looks like this kind of dataset (sniffs contents, not just names)."""
        return False

    @abstractmethod
    def read(self, i: int) -> Sample:
        """Read frame ``i`` of the subsampled sequence without undistortion."""

    # ---- optional capabilities -------------------------------------------------------------
    def groundtruth(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(timestamps [M] float seconds-or-source-units, poses [M, 7] t + q_xyzw) or None."""
        return None

    def groundtruth_path(self) -> Path | None:
        """Path of a TUM-format ground-truth file when one exists (for evaluation)."""
        return None

    # ---- common behaviour -------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.timestamps)

    def __getitem__(self, i: int) -> Sample:
        return self._get(i, rgb=True, depth=True)

    def frame_rgb(self, i: int) -> Sample:
        """Sample ``i`` for the SLAM loop: image and timestamp; sources that can skip the depth
        map do (``depth`` may be None even when the sequence has depth)."""
        return self._get(i, rgb=True, depth=False)

    def frame_depth(self, i: int) -> Sample:
        """Sample ``i`` for the ground-truth prior: depth, pose and timestamp; sources that can
        skip decoding the image do (``rgb`` may then be an empty [0, 0, 3] array)."""
        return self._get(i, rgb=False, depth=True)

    #: True when :meth:`read` accepts ``rgb=`` / ``depth=`` keywords to skip decoding either file
    partial_reads: bool = False

    def _get(self, i: int, rgb: bool, depth: bool) -> Sample:
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"frame {i} out of range for {len(self)} frames")
        sample = self.read(i, rgb=rgb, depth=depth) if self.partial_reads else self.read(i)
        if self.use_calibration and self.intrinsics is not None:
            if sample.rgb.size:
                sample.rgb = self.intrinsics.undistort(sample.rgb)
            if sample.depth is not None:
                import cv2

                self.intrinsics._init_undistort()
                m = self.intrinsics._maps
                sample.depth = cv2.remap(sample.depth, m[0], m[1], cv2.INTER_NEAREST)
        return sample

    def __iter__(self) -> Iterator[Sample]:
        for i in range(len(self)):
            yield self[i]

    @property
    def has_calib(self) -> bool:
        return self.intrinsics is not None

    @property
    def K(self) -> np.ndarray | None:
        """Intrinsics of the images as yielded (undistorted when calibration is applied)."""
        if self.intrinsics is None:
            return None
        return self.intrinsics.K_undistorted if self.use_calibration else self.intrinsics.K

    def subsample(self, n: int) -> None:
        """Keep every n-th frame; timestamps are kept. Subclasses index raw frames via ``raw_index``."""
        if n < 1:
            raise ValueError(f"subsample must be >= 1, got {n}")
        self._stride *= n
        self.timestamps = self.timestamps[::n]

    def raw_index(self, i: int) -> int:
        """Index in the original (unsubsampled) sequence of subsampled frame ``i``."""
        return i * self._stride

    def set_calibration(self, intrinsics: Intrinsics | None, apply: bool = True) -> None:
        """Use ``intrinsics`` (e.g. from ``--calib``) and undistort frames when ``apply``."""
        if intrinsics is not None:
            self.intrinsics = intrinsics
        self.use_calibration = apply and self.intrinsics is not None

    @property
    def save_results(self) -> bool:
        return True

    def close(self) -> None:
        """Release devices / file handles (live sources)."""
