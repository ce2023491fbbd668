"""A video file (mp4, avi, mov, mkv; any case) decoded with OpenCV.

* Detection: the file extension.
* Frames: every ``subsample``-th frame is decoded (the others are only grabbed); frame ``i`` of
  the subsampled sequence is original frame ``i * subsample``.
* Timestamps: ``k / fps`` of the ORIGINAL frame index ``k``, known up front, so timestamp ``i``
  belongs to frame ``i`` (the original's one-frame shift is fixed).
* Length: the container's frame count (counted by grabbing when the header has none).
* Intrinsics: none unless ``--calib``.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..errors import DatasetError
from ._util import VIDEO_EXTENSIONS, format_seconds
from .base import Dataset, Sample

DEFAULT_FPS = 30.0


class VideoDataset(Dataset):
    kind = "video"

    def __init__(self, path: str | Path):
        import cv2

        super().__init__(path)
        if not self.path.is_file():
            raise DatasetError(f"{self.path}: video file not found")
        cap = cv2.VideoCapture(str(self.path))
        if not cap.isOpened():
            raise DatasetError(f"{self.path}: cannot open video (OpenCV could not decode the file)")
        fps = cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and math.isfinite(fps) and fps > 0 else DEFAULT_FPS
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if n <= 0:  # header without a frame count: count by grabbing
            while cap.grab():
                n += 1
            cap.release()
            cap = cv2.VideoCapture(str(self.path))
        if n <= 0:
            cap.release()
            raise DatasetError(f"{self.path}: the video has no frames")
        self.image_size = (w, h) if w > 0 and h > 0 else None
        self.num_raw_frames = n
        self.timestamps = [format_seconds(k / self.fps) for k in range(n)]
        self._cap = cap
        self._next = 0  # raw index of the next frame the decoder will return

    @classmethod
    def detect(cls, path: Path) -> bool:
        p = Path(path)
        return p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS

    def _open(self) -> None:
        import cv2

        if self._cap is not None:
            self._cap.release()
        self._cap = cv2.VideoCapture(str(self.path))
        self._next = 0

    def read(self, i: int) -> Sample:
        import cv2

        k = self.raw_index(i)
        if self._cap is None or k < self._next:
            self._open()  # rewind exactly (seeking by frame index is not exact for every codec)
        while self._next < k:
            if not self._cap.grab():
                raise DatasetError(f"{self.path}: video ended at frame {self._next}, expected {self.num_raw_frames} frames")
            self._next += 1
        ok, bgr = self._cap.read()
        if not ok or bgr is None:
            raise DatasetError(f"{self.path}: cannot decode frame {k} of {self.num_raw_frames}")
        self._next += 1
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        return Sample(index=i, timestamp=self.timestamps[i], rgb=np.ascontiguousarray(rgb))

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_cap"] = None
        d["_next"] = 0
        return d
