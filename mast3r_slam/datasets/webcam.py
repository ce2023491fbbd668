"""A webcam through OpenCV: ``--dataset webcam`` or ``webcam:N`` (device index N, default 0).

Live source (see :mod:`._live`): timestamps are seconds since the first frame; no intrinsics
unless ``--calib``. Without a camera the constructor raises one :class:`DatasetError` line.
"""
from __future__ import annotations

import time

import numpy as np

from ..errors import DatasetError
from ._live import LiveDataset


def parse_webcam_spec(spec: str) -> int:
    rest = spec.split(":", 1)[1] if ":" in spec else "0"
    if not rest.strip().isdigit():
        raise DatasetError(f"{spec}: expected webcam or webcam:N with a device number N")
    return int(rest)


def _open_quietly(device: int):
    """cv2.VideoCapture without OpenCV's multi-line warnings when there is no camera."""
    import cv2

    log = getattr(getattr(cv2, "utils", None), "logging", None)
    old = log.getLogLevel() if log is not None else None
    if log is not None:
        log.setLogLevel(log.LOG_LEVEL_SILENT)
    try:
        return cv2.VideoCapture(device)
    finally:
        if log is not None:
            log.setLogLevel(old)


class WebcamDataset(LiveDataset):
    kind = "webcam"

    def __init__(self, spec: str = "webcam:0"):
        import cv2

        self.device = parse_webcam_spec(str(spec))
        super().__init__(f"webcam{self.device}")
        self.name = f"webcam{self.device}"
        self._cap = _open_quietly(self.device)
        if not self._cap.isOpened():
            self._cap.release()
            raise DatasetError(f"webcam:{self.device}: no camera found (OpenCV could not open video device {self.device})")
        w = int(self._cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        h = int(self._cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        self.image_size = (w, h) if w > 0 and h > 0 else None
        self._t0: float | None = None

    def _grab(self) -> tuple[np.ndarray, float] | None:
        import cv2

        ok, bgr = self._cap.read()
        if not ok or bgr is None:
            if not self.timestamps:
                raise DatasetError(f"webcam:{self.device}: the camera opened but delivered no frame")
            return None
        now = time.monotonic()
        if self._t0 is None:
            self._t0 = now
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), now - self._t0

    def close(self) -> None:
        if getattr(self, "_cap", None) is not None:
            self._cap.release()
            self._cap = None

    def __getstate__(self):
        raise TypeError("a webcam dataset cannot be sent to another process")
