"""Microsoft 7-Scenes sequences.

Layout: ``<scene>/seq-XX/frame-NNNNNN.color.png`` (640x480) with ``frame-NNNNNN.pose.txt``
(4x4 camera-to-world matrix). The depth images are not registered to the colour camera and
are not loaded.

* Detection: ``seq-XX/*.color.png`` under the folder, or ``*.color.png`` in it.
* Given the scene folder, ``seq-01`` is used (as the original and its evaluation); given a
  ``seq-XX`` folder, that sequence.
* Timestamps: the frame numbers ``0, 1, 2, ...`` (as in the evaluation ground-truth files).
* Intrinsics: fx = fy = 585, cx = 320, cy = 240 (used in calibrated mode; no distortion).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..errors import DatasetError
from ._util import natural_sorted, read_rgb
from .base import Dataset, Intrinsics, Sample

SEVEN_SCENES_K = (585.0, 585.0, 320.0, 240.0)


class SevenScenesDataset(Dataset):
    kind = "7scenes"

    def __init__(self, path: str | Path, sequence: str = "seq-01"):
        super().__init__(path)
        if not self.path.is_dir():
            raise DatasetError(f"{self.path}: folder not found")
        seq = self.path if list(self.path.glob("*.color.png")) else self.path / sequence
        files = natural_sorted(seq.glob("*.color.png")) if seq.is_dir() else []
        if not files:
            raise DatasetError(f"{seq}: no *.color.png frames found")
        self.seq_path = seq
        if seq != self.path:
            self.name = f"{self.path.name}_{seq.name}"
        self._files = files
        nums = []
        for f in files:
            m = re.search(r"(\d+)", f.name)
            nums.append(int(m.group(1)) if m else len(nums))
        self._nums = nums
        self.timestamps = [str(n) for n in nums]
        self.intrinsics = Intrinsics(640, 480, *SEVEN_SCENES_K)
        self._gt = None

    @classmethod
    def detect(cls, path: Path) -> bool:
        p = Path(path)
        if not p.is_dir():
            return False
        return any(True for _ in p.glob("*.color.png")) or any(True for _ in p.glob("seq-*/*.color.png"))

    def read(self, i: int) -> Sample:
        k = self.raw_index(i)
        T = None
        gt = self._frame_poses()
        if gt is not None and not np.isnan(gt[k, 0]):
            T = gt[k].copy()
        return Sample(index=i, timestamp=self.timestamps[i], rgb=read_rgb(self._files[k]), T_WC_gt=T)

    def _frame_poses(self) -> np.ndarray | None:
        """[N_raw, 7] poses from the per-frame pose files (NaN rows where missing)."""
        if self._gt is None:
            poses = np.full((len(self._files), 7), np.nan)
            mats, rows = [], []
            for k, f in enumerate(self._files):
                pf = f.with_name(f.name.replace(".color.png", ".pose.txt"))
                if pf.is_file():
                    try:
                        M = np.loadtxt(pf, dtype=np.float64).reshape(4, 4)
                    except ValueError:
                        raise DatasetError(f"{pf}: expected a 4x4 matrix of numbers") from None
                    mats.append(M)
                    rows.append(k)
            if mats:
                import torch

                from ..lie import SE3

                M = torch.from_numpy(np.stack(mats))
                U, _, Vh = torch.linalg.svd(M[:, :3, :3])
                M[:, :3, :3] = U @ Vh
                poses[rows] = SE3.from_matrix(M).numpy()
            self._gt = poses
        return self._gt if np.isfinite(self._gt[:, 0]).any() else None

    def groundtruth(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(frame numbers [M], poses [M, 7]) from the ``*.pose.txt`` files, or None."""
        gt = self._frame_poses()
        if gt is None:
            return None
        ok = np.isfinite(gt[:, 0])
        return np.asarray(self._nums, dtype=np.float64)[ok], gt[ok].copy()

