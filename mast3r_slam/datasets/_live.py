"""Common behaviour of live sources (webcam, RealSense camera or recording).

A live source has no known length: ``len()`` is the large constant :data:`LIVE_LENGTH` until
the stream ends, then the number of frames read. Frames are read in order (``ds[i]`` with
``i`` = 0, 1, 2, ...; re-reading the last frame is allowed); iterate with ``for s in ds``,
which stops cleanly when the stream ends. Timestamps are appended as frames arrive, so
``timestamps[i]`` is the time of frame ``i`` (the original's off-by-one is not reproduced).
``subsample(n)`` keeps every n-th frame received.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import DatasetError
from ._util import format_seconds
from .base import Dataset, Sample

#: ``len()`` of a live source whose stream has not ended
LIVE_LENGTH = 1_000_000_000


class EndOfStream(IndexError):
    """The live stream (or recording) has no more frames."""


class LiveDataset(Dataset):
    is_live = True

    def __init__(self, path: str | Path):
        super().__init__(path)
        self._ended = False
        self._last: Sample | None = None
        self.image_size: tuple[int, int] | None = None  # (W, H) once known

    # subclasses: return (rgb [H, W, 3] uint8, time in seconds) or None at the end of the stream
    def _grab(self) -> tuple[np.ndarray, float] | None:
        raise NotImplementedError

    def _skip(self) -> bool:
        """Drop one frame; False at the end of the stream."""
        return self._grab() is not None

    def __len__(self) -> int:
        return len(self.timestamps) if self._ended else LIVE_LENGTH

    def subsample(self, n: int) -> None:
        if n < 1:
            raise ValueError(f"subsample must be >= 1, got {n}")
        self._stride *= n

    def read(self, i: int) -> Sample:
        n = len(self.timestamps)
        if self._last is not None and i == n - 1:
            return Sample(index=i, timestamp=self._last.timestamp, rgb=self._last.rgb.copy())
        if i != n:
            raise DatasetError(f"{self.name}: live frames must be read in order (asked for {i}, next is {n})")
        if self._ended:
            raise EndOfStream(f"{self.name}: stream ended after {n} frames")
        if n > 0:
            for _ in range(self._stride - 1):
                if not self._skip():
                    self._ended = True
                    raise EndOfStream(f"{self.name}: stream ended after {n} frames")
        got = self._grab()
        if got is None:
            self._ended = True
            raise EndOfStream(f"{self.name}: stream ended after {n} frames")
        rgb, t = got
        self.timestamps.append(format_seconds(t))
        self._last = Sample(index=i, timestamp=self.timestamps[-1], rgb=rgb)
        return Sample(index=i, timestamp=self.timestamps[-1], rgb=rgb.copy())

    def __iter__(self) -> Iterator[Sample]:
        i = 0
        while True:
            try:
                s = self[i]
            except EndOfStream:
                return
            yield s
            i += 1
