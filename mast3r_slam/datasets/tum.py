"""TUM RGB-D sequences (``rgbd_dataset_freiburgN_*``).

Layout: ``rgb.txt`` ("timestamp path" lines, ``#`` comments), images relative to the sequence
folder; optional ``depth.txt`` + ``depth/*.png`` (16-bit, 5000 units per metre, registered to
the colour camera) and ``groundtruth.txt`` (TUM trajectory, camera-to-world, 100 Hz).

* Detection: a folder holding ``rgb.txt`` (ETH3D, which also has ``calibration.txt``, is tried
  first).
* Intrinsics: the published freiburg1/2/3 calibration, chosen from ``freiburgN`` or ``frN`` in
  the folder name or a parent folder's name; a ``calibration.yaml`` (``--calib`` layout) inside
  the folder takes precedence (generated sequences carry one); when neither says which camera
  it is, pass ``camera=`` or ``--calib``. Undistortion happens only in calibrated mode (as the
  original).
* Depth: each colour frame gets the depth frame nearest in time (within 20 ms) from
  ``depth.txt``, or from the file names in ``depth/`` when ``depth.txt`` is missing.
* Ground truth: ``groundtruth.txt`` interpolated (linear + slerp) at the colour timestamps for
  :attr:`Sample.T_WC_gt`; frames outside its time span get ``None``.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..errors import DatasetError
from ..io.trajectory import interpolate_poses, read_tum, timestamps_to_seconds
from ._util import associate_nearest, check_files_exist, read_depth, read_list_file, read_rgb
from .base import Dataset, Intrinsics, Sample

#: published calibration of the three Kinect cameras (fx, fy, cx, cy, k1, k2, p1, p2, k3), 640x480
TUM_CAMERAS: dict[int, tuple[float, ...]] = {
    1: (517.3, 516.5, 318.6, 255.3, 0.2624, -0.9531, -0.0054, 0.0026, 1.1633),
    2: (520.9, 521.0, 325.1, 249.7, 0.2312, -0.7849, -0.0033, -0.0001, 0.9172),
    3: (535.4, 539.2, 320.1, 247.6),
}

_CAMERA_RE = re.compile(r"(?<![a-z])(?:freiburg|fr)_?([123])(?!\d)", re.IGNORECASE)

DEPTH_MAX_DIFF = 0.02  # seconds, as TUM's associate.py
GT_MAX_GAP = 0.1  # seconds between the two ground-truth samples bracketing a frame


def tum_camera_from_path(path: Path) -> int | None:
    """1, 2 or 3 when the folder or one of its parents is named like ``freiburg2``/``fr2``."""
    for part in reversed(Path(path).resolve().parts):
        m = _CAMERA_RE.search(part)
        if m:
            return int(m.group(1))
    return None


def tum_intrinsics(camera: int | str, width: int = 640, height: int = 480) -> Intrinsics:
    """Intrinsics of freiburg camera 1, 2 or 3 (also accepts 'fr2' / 'freiburg2')."""
    if isinstance(camera, str):
        m = _CAMERA_RE.search(camera) or re.fullmatch(r"([123])", camera.strip())
        if not m:
            raise DatasetError(f"unknown TUM camera '{camera}': expected fr1, fr2 or fr3")
        camera = int(m.group(1))
    if camera not in TUM_CAMERAS:
        raise DatasetError(f"unknown TUM camera {camera}: expected 1, 2 or 3")
    c = TUM_CAMERAS[camera]
    return Intrinsics(width, height, c[0], c[1], c[2], c[3], distortion=list(c[4:]))


class TUMDataset(Dataset):
    kind = "tum"
    #: depth PNG units per metre
    depth_scale = 5000.0

    def __init__(self, path: str | Path, camera: int | str | None = None, intrinsics: Intrinsics | None = None):
        super().__init__(path)
        if not self.path.is_dir():
            raise DatasetError(f"{self.path}: sequence folder not found")
        rgb_list = self.path / "rgb.txt"
        rows = read_list_file(rgb_list)
        self.timestamps = [r[0] for r in rows]
        self._rgb_files = [self.path / r[1] for r in rows]
        check_files_exist(self._rgb_files, rgb_list)
        try:
            self._times = timestamps_to_seconds(self.timestamps)  # raw frames, seconds
        except Exception:
            raise DatasetError(f"{rgb_list}: timestamps must be numbers (first is '{self.timestamps[0]}')") from None
        self.intrinsics = intrinsics if intrinsics is not None else self._default_intrinsics(camera)
        self._depth_files = self._associate_depth()
        self._gt_path = self._find_groundtruth()
        self._gt: tuple[np.ndarray, np.ndarray] | None = None
        self._gt_frames: np.ndarray | None = None  # [N_raw, 7], NaN rows where unknown
        if self._gt_path is not None:
            stamps, poses = read_tum(self._gt_path)
            if len(stamps):
                t = timestamps_to_seconds(stamps)
                self._gt = (t, poses)
                self._gt_frames, _ = interpolate_poses(t, poses, self._times, max_gap=GT_MAX_GAP)

    # ---- detection ---------------------------------------------------------------------------
    @classmethod
    def detect(cls, path: Path) -> bool:
        return Path(path).is_dir() and (Path(path) / "rgb.txt").is_file()

    # ---- overridable parts -----------------------------------------------------------------
    def _default_intrinsics(self, camera: int | str | None) -> Intrinsics | None:
        """``camera`` argument, else ``calibration.yaml`` in the folder, else freiburgN in the name."""
        if camera is not None:
            return tum_intrinsics(camera)
        own = self.path / "calibration.yaml"
        if own.is_file():
            from .calib import load_calibration

            return load_calibration(own)
        cam = tum_camera_from_path(self.path)
        return tum_intrinsics(cam) if cam is not None else None

    def _find_groundtruth(self) -> Path | None:
        p = self.path / "groundtruth.txt"
        return p if p.is_file() else None

    def _associate_depth(self) -> list[Path | None]:
        depth_list = self.path / "depth.txt"
        if depth_list.is_file():
            rows = read_list_file(depth_list)
            stamps = [r[0] for r in rows]
            files = [self.path / r[1] for r in rows]
        elif (self.path / "depth").is_dir():
            files = sorted((self.path / "depth").glob("*.png"))
            stamps = [f.stem for f in files]
            try:
                timestamps_to_seconds(stamps)
            except Exception:
                return [None] * len(self._rgb_files)
        else:
            return [None] * len(self._rgb_files)
        idx = associate_nearest(self._times, timestamps_to_seconds(stamps), DEPTH_MAX_DIFF)
        return [files[k] if k >= 0 else None for k in idx]

    # ---- reading ---------------------------------------------------------------------------
    partial_reads = True

    def read(self, i: int, rgb: bool = True, depth: bool = True) -> Sample:
        """rgb / depth False: skip decoding that file (see :meth:`Dataset.frame_rgb`)."""
        k = self.raw_index(i)
        img = read_rgb(self._rgb_files[k]) if rgb else np.zeros((0, 0, 3), np.uint8)
        want_depth, depth = depth, None
        if want_depth and self._depth_files[k] is not None:
            depth = read_depth(self._depth_files[k], self.depth_scale)
        T = None
        if self._gt_frames is not None and not np.isnan(self._gt_frames[k, 0]):
            T = self._gt_frames[k].copy()
        return Sample(index=i, timestamp=self.timestamps[i], rgb=img, depth=depth, T_WC_gt=T)

    def image_path(self, i: int) -> Path:
        """File of (subsampled) frame ``i``."""
        return self._rgb_files[self.raw_index(i)]

    def groundtruth(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(timestamps [M] seconds, poses [M, 7] t + q_xyzw camera-to-world) or None."""
        if self._gt is None:
            return None
        return self._gt[0].copy(), self._gt[1].copy()

    def groundtruth_path(self) -> Path | None:
        return self._gt_path
