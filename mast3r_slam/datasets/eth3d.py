"""ETH3D SLAM benchmark sequences.

Layout as TUM (``rgb.txt``, ``depth.txt``, ``groundtruth.txt``; depth 5000 units per metre) plus
``calibration.txt`` holding one line ``fx fy cx cy`` of the (already undistorted) colour camera.

* Detection: ``rgb.txt`` and ``calibration.txt`` in the folder.
* Intrinsics: from ``calibration.txt``, image size from the first frame; no distortion. The
  original evaluates ETH3D with ``center_principle_point: False`` (``config/eth3d.yaml``).
"""
from __future__ import annotations

from pathlib import Path

from ..errors import DatasetError
from ._util import read_rgb
from .base import Intrinsics
from .tum import TUMDataset


class ETH3DDataset(TUMDataset):
    kind = "eth3d"

    @classmethod
    def detect(cls, path: Path) -> bool:
        p = Path(path)
        return p.is_dir() and (p / "rgb.txt").is_file() and (p / "calibration.txt").is_file()

    def _default_intrinsics(self, camera) -> Intrinsics | None:
        calib = self.path / "calibration.txt"
        if not calib.is_file():
            return None
        text = " ".join(ln for ln in calib.read_text(errors="replace").splitlines() if not ln.strip().startswith("#"))
        try:
            vals = [float(v) for v in text.split()]
        except ValueError:
            raise DatasetError(f"{calib}: expected one line 'fx fy cx cy' of numbers, found '{text.strip()}'") from None
        if len(vals) != 4:
            raise DatasetError(f"{calib}: expected 4 numbers 'fx fy cx cy', found {len(vals)}")
        h, w = read_rgb(self._rgb_files[0]).shape[:2]
        fx, fy, cx, cy = vals
        return Intrinsics(w, h, fx, fy, cx, cy)
