"""A folder of images (png, jpg, jpeg; any case), in natural order (frame2 before frame10).

* Detection: a folder holding at least one such image (tried last).
* Timestamps: the file names when every name is a time stamp (a number with a decimal point,
  e.g. ``1305031229.528748.png``, or an integer of 9+ digits, e.g. nanoseconds); otherwise
  ``i / 30`` seconds (so zero-padded frame counters such as ``00042.jpg`` give 1.4 s).
* Intrinsics: none unless ``--calib``.
"""
from __future__ import annotations

import re
from pathlib import Path

from ..errors import DatasetError
from ._util import format_seconds, list_images, read_rgb
from .base import Dataset, Sample

FPS = 30.0
_TIME_RE = re.compile(r"^(\d+\.\d+|\d{9,})$")


class ImageFolderDataset(Dataset):
    kind = "folder"

    def __init__(self, path: str | Path, fps: float = FPS):
        super().__init__(path)
        if not self.path.is_dir():
            raise DatasetError(f"{self.path}: image folder not found")
        self._files = list_images(self.path)
        if not self._files:
            raise DatasetError(f"{self.path}: no png/jpg/jpeg images in the folder")
        stems = [f.stem for f in self._files]
        if all(_TIME_RE.match(s) for s in stems):
            self.timestamps = stems
        else:
            self.timestamps = [format_seconds(i / fps) for i in range(len(self._files))]

    @classmethod
    def detect(cls, path: Path) -> bool:
        p = Path(path)
        return p.is_dir() and bool(list_images(p))

    def read(self, i: int) -> Sample:
        return Sample(index=i, timestamp=self.timestamps[i], rgb=read_rgb(self._files[self.raw_index(i)]))

    def image_path(self, i: int) -> Path:
        return self._files[self.raw_index(i)]
