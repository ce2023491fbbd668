"""Built-in synthetic sequences: ``--dataset synthetic:<name>[:<W>x<H>][:<frames>][:seed=<n>]``.

Names: ``loop``, ``fast_turn``, ``lost``, ``dynamic`` (see docs/SYNTHETIC.md). The sequence is
rendered on first use into the cache (``datasets/synthetic/`` or ``$MAST3R_SLAM_CACHE``) in
TUM layout and then read by the TUM loader, with the exact pinhole intrinsics of
``calibration.yaml``, depth and ground-truth poses for every frame.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import DatasetError
from ..synthetic.sequence import SequenceSpec, ensure_sequence, parse_spec, read_meta
from .calib import load_calibration
from .tum import TUMDataset


class SyntheticDataset(TUMDataset):
    kind = "synthetic"

    def __init__(self, spec: str | SequenceSpec, *, cache_root: str | Path | None = None, progress: bool = True):
        self.spec = spec if isinstance(spec, SequenceSpec) else parse_spec(str(spec))
        folder = ensure_sequence(self.spec, root=cache_root, progress=progress)
        super().__init__(folder, intrinsics=load_calibration(folder / "calibration.yaml"))
        self.name = f"synthetic_{self.spec.folder_name}"
        self.meta = read_meta(folder) or {}
        self.image_size = (self.spec.width, self.spec.height)

    @classmethod
    def detect(cls, path: Path) -> bool:
        """A generated folder (TUM layout + meta.json of the generator) also opens by path."""
        meta = read_meta(Path(path)) if Path(path).is_dir() else None
        return bool(meta and "generator_version" in meta and (Path(path) / "rgb.txt").is_file())

    # ---- extras for tests --------------------------------------------------------------------
    @property
    def events(self) -> dict:
        """Hard segments of the trajectory (black frames, jump, fast turn; see meta.json)."""
        return self.meta.get("events", {})

    def dynamic_mask(self, i: int) -> np.ndarray | None:
        """[H, W] bool ground-truth mask of moving objects in frame ``i`` (``dynamic`` only)."""
        import cv2

        f = self.path / "dynamic_mask" / f"{self.timestamps[i]}.png"
        if not f.is_file():
            return None
        m = cv2.imread(str(f), cv2.IMREAD_GRAYSCALE)
        if m is None:
            raise DatasetError(f"{f}: cannot read dynamic mask")
        if self.use_calibration and self.intrinsics is not None and self.intrinsics.has_distortion:
            m = self.intrinsics.undistort(m)
        return m > 127

    def moving_objects(self) -> dict | None:
        """Contents of ``objects.json`` (geometry and per-frame world poses), or None."""
        f = self.path / "objects.json"
        return json.loads(f.read_text()) if f.is_file() else None
