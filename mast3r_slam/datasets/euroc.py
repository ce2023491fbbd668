"""EuRoC MAV sequences (left camera ``cam0``).

Layout: ``mav0/cam0/data.csv`` (``#timestamp [ns],filename``), ``mav0/cam0/data/*.png`` (grey,
752x480), ``mav0/cam0/sensor.yaml`` (``%YAML:1.0`` header; ``resolution``, ``intrinsics``
[fu, fv, cu, cv], radial-tangential ``distortion_coefficients``, extrinsics ``T_BS``).

* Detection: ``mav0/cam0/data.csv`` under the folder.
* Frames: grey replicated to 3 channels; **always undistorted** (as the original); the
  intrinsics are used by the optimisation only in calibrated mode.
* Timestamps: the nanosecond strings of ``data.csv``.
* Ground truth (optional), the first found of: ``mav0/state_groundtruth_estimate0/data.csv``
  (EuRoC CSV), ``groundtruth*.txt`` inside the sequence folder, ``<name>.txt``,
  ``groundtruth_<name>.txt`` or ``groundtruths/<name>.txt`` beside it. Both TUM (``qx qy qz
  qw``) and EuRoC (``qw qx qy qz``, named in the header) column orders are read. These are body
  (IMU) poses; :meth:`groundtruth` and ``Sample.T_WC_gt`` give *camera* poses ``T_WB * T_BS``,
  while evaluation uses the file as published (positions only matter after Sim(3) alignment).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DatasetError
from ..io.trajectory import interpolate_poses, read_trajectory, timestamps_to_seconds
from ._util import check_files_exist, load_yaml, read_grey_as_rgb, read_list_file
from .base import Dataset, Intrinsics, Sample

GT_MAX_GAP = 0.1  # seconds


def _se3_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Compose poses [N, 7] * [7] (t, q_xyzw) with float64 numpy."""
    import torch

    from ..lie import SE3

    return SE3.mul(torch.from_numpy(a), torch.from_numpy(b)[None]).numpy()


class EuRoCDataset(Dataset):
    kind = "euroc"
    always_undistort = True

    def __init__(self, path: str | Path):
        super().__init__(path)
        cam = self.path / "mav0" / "cam0"
        if not cam.is_dir():
            raise DatasetError(f"{self.path}: not a EuRoC sequence (no mav0/cam0 folder)")
        csv = cam / "data.csv"
        rows = read_list_file(csv)
        self.timestamps = [r[0] for r in rows]
        self._files = [cam / "data" / r[1] for r in rows]
        check_files_exist(self._files, csv)
        self._times = timestamps_to_seconds(self.timestamps)
        self.intrinsics, self._T_BS = self._read_sensor(cam / "sensor.yaml")
        self.use_calibration = True
        self._gt_path = self._find_groundtruth()
        self._gt = None
        self._gt_frames = None
        if self._gt_path is not None:
            stamps, poses = read_trajectory(self._gt_path)
            if len(stamps):
                poses = poses.copy()
                poses[:, 3:] /= np.linalg.norm(poses[:, 3:], axis=1, keepdims=True)
                if self._T_BS is not None:
                    poses = _se3_mul(poses, self._T_BS)
                t = timestamps_to_seconds(stamps)
                self._gt = (t, poses)
                self._gt_frames, _ = interpolate_poses(t, poses, self._times, max_gap=GT_MAX_GAP)

    @classmethod
    def detect(cls, path: Path) -> bool:
        return (Path(path) / "mav0" / "cam0" / "data.csv").is_file()

    @staticmethod
    def _read_sensor(path: Path) -> tuple[Intrinsics, np.ndarray | None]:
        d = load_yaml(path)
        try:
            w, h = (int(v) for v in d["resolution"])
            fu, fv, cu, cv = (float(v) for v in d["intrinsics"])
            dist = [float(v) for v in d.get("distortion_coefficients", [])]
        except KeyError as e:
            raise DatasetError(f"{path}: missing field {e.args[0]} (expected resolution, intrinsics, distortion_coefficients)") from None
        except (TypeError, ValueError):
            raise DatasetError(f"{path}: resolution must be [w, h] and intrinsics [fu, fv, cu, cv]") from None
        model = str(d.get("distortion_model", "radial-tangential"))
        if dist and model not in ("radial-tangential", "radtan", "plumb_bob"):
            raise DatasetError(f"{path}: distortion_model '{model}' is not supported (expected radial-tangential)")
        T_BS = None
        if isinstance(d.get("T_BS"), dict) and len(d["T_BS"].get("data", [])) == 16:
            import torch

            from ..lie import SE3

            M = torch.tensor(d["T_BS"]["data"], dtype=torch.float64).reshape(4, 4)
            U, _, Vh = torch.linalg.svd(M[:3, :3])  # re-orthonormalise the 12-digit matrix
            M[:3, :3] = U @ Vh
            T_BS = SE3.from_matrix(M).numpy()
        return Intrinsics(w, h, fu, fv, cu, cv, distortion=dist), T_BS

    def _find_groundtruth(self) -> Path | None:
        name = self.path.name
        cands = [self.path / "mav0" / "state_groundtruth_estimate0" / "data.csv", self.path / "groundtruth.txt"]
        cands += sorted(self.path.glob("groundtruth*.txt"))
        parent = self.path.parent
        cands += [parent / f"{name}.txt", parent / f"groundtruth_{name}.txt", parent / "groundtruths" / f"{name}.txt"]
        for c in cands:
            if c.is_file():
                return c
        return None

    def read(self, i: int) -> Sample:
        k = self.raw_index(i)
        rgb = read_grey_as_rgb(self._files[k])
        T = None
        if self._gt_frames is not None and not np.isnan(self._gt_frames[k, 0]):
            T = self._gt_frames[k].copy()
        return Sample(index=i, timestamp=self.timestamps[i], rgb=rgb, T_WC_gt=T)

    def groundtruth(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(timestamps [M] seconds, camera poses [M, 7] t + q_xyzw) or None."""
        if self._gt is None:
            return None
        return self._gt[0].copy(), self._gt[1].copy()

    def groundtruth_path(self) -> Path | None:
        """The ground-truth file as published (body poses; TUM or EuRoC column order)."""
        return self._gt_path
