"""Input sources: a registry of loaders and :func:`load_dataset`.

``DATASETS`` maps a type name to ``"module:Class"`` inside this package; modules are imported
only when used (so only ``realsense.py`` needs ``pyrealsense2``). The type of a ``--dataset``
argument is found from its CONTENTS (each class's ``detect(path)``, tried in
``DETECTION_ORDER``), never from folder names; ``kind`` (``--dataset-type``) overrides.

Special specs: ``webcam`` / ``webcam:N``, ``realsense`` / ``realsense:<serial>`` (or a recorded
``.db3``/``.bag`` file) and ``synthetic:<name>`` (whole spec passed to the synthetic generator).
"""
from __future__ import annotations

import importlib
from pathlib import Path

from ..errors import CalibrationError, DatasetError
from .base import Dataset, Intrinsics, Sample
from .calib import load_calibration

#: type name -> "module:Class" (relative to this package)
DATASETS: dict[str, str] = {
    "tum": "tum:TUMDataset",
    "eth3d": "eth3d:ETH3DDataset",
    "euroc": "euroc:EuRoCDataset",
    "7scenes": "seven_scenes:SevenScenesDataset",
    "video": "video:VideoDataset",
    "folder": "folder:ImageFolderDataset",
    "webcam": "webcam:WebcamDataset",
    "realsense": "realsense:RealSenseDataset",
    "synthetic": "synthetic:SyntheticDataset",
}

#: other accepted spellings of ``kind``
ALIASES: dict[str, str] = {
    "7-scenes": "7scenes",
    "seven_scenes": "7scenes",
    "sevenscenes": "7scenes",
    "images": "folder",
    "image_folder": "folder",
    "rgb_folder": "folder",
    "mp4": "video",
    "camera": "webcam",
}

#: content detection order (ETH3D before TUM: both have rgb.txt, ETH3D adds calibration.txt)
DETECTION_ORDER = ("realsense", "video", "eth3d", "tum", "euroc", "7scenes", "folder")

#: spec prefixes that name a source rather than a path
_SCHEMES = ("webcam", "realsense", "synthetic")

__all__ = [
    "DATASETS",
    "Dataset",
    "Intrinsics",
    "Sample",
    "dataset_class",
    "detect_kind",
    "load_calibration",
    "load_dataset",
]


def dataset_class(kind: str) -> type[Dataset]:
    """The loader class registered under ``kind`` (imports its module)."""
    name = ALIASES.get(kind.lower(), kind.lower())
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset type '{kind}': expected one of {', '.join(DATASETS)}")
    module, cls = DATASETS[name].split(":")
    mod = importlib.import_module(f"{__name__}.{module}")
    return getattr(mod, cls)


def _scheme(spec: str) -> str | None:
    head = spec.split(":", 1)[0].lower()
    if head in _SCHEMES and (spec.lower() == head or spec[len(head)] == ":") and not Path(spec).exists():
        return head
    return None


def detect_kind(path: str | Path) -> str:
    """Type name of the sequence at ``path`` from its contents; one-line error when nothing fits."""
    p = Path(path)
    if not p.exists():
        raise DatasetError(f"{p}: no such file or folder (expected a sequence folder, video file, webcam[:N], realsense or synthetic:<name>)")
    for name in DETECTION_ORDER:
        if dataset_class(name).detect(p):
            return name
    if p.is_dir():
        raise DatasetError(
            f"{p}: no images found and not a known dataset layout (TUM rgb.txt, ETH3D calibration.txt, "
            "EuRoC mav0/cam0/data.csv, 7-Scenes seq-XX/*.color.png, or a folder of png/jpg images)"
        )
    raise DatasetError(f"{p}: not a video (mp4/avi/mov/mkv), recording (.db3/.bag) or dataset folder")


def load_dataset(
    spec: str | Path,
    kind: str | None = None,
    *,
    subsample: int = 1,
    calib_path: str | Path | None = None,
    use_calib: bool = False,
    center_principal_point: bool = True,
) -> Dataset:
    """Open an input source.

    spec: a sequence folder, video file, image folder, ``webcam[:N]``, ``realsense[:serial]``,
    a ``.db3``/``.bag`` recording or ``synthetic:<name>``. kind: force a type (``--dataset-type``).
    subsample: keep every n-th frame (timestamps kept). calib_path: intrinsics YAML
    (``--calib``), implies calibrated mode. use_calib: calibrated mode - frames are undistorted
    and the dataset must have intrinsics (one-line error otherwise). EuRoC is undistorted always.
    """
    if isinstance(subsample, bool) or not isinstance(subsample, int) or subsample < 1:
        raise DatasetError(f"subsample must be an integer >= 1, got {subsample!r}")
    spec_str = str(spec)
    if kind is None:
        scheme = _scheme(spec_str)
        name = scheme if scheme is not None else detect_kind(spec_str)
    else:
        name = ALIASES.get(kind.lower(), kind.lower())
        if name not in DATASETS:
            raise DatasetError(f"unknown dataset type '{kind}' (--dataset-type): expected one of {', '.join(DATASETS)}")
        if name not in _SCHEMES and not Path(spec_str).exists():
            raise DatasetError(f"{spec_str}: no such file or folder")
    cls = dataset_class(name)
    ds = cls(spec_str)
    if not ds.name:  # e.g. --dataset .
        ds.name = Path(spec_str).resolve().name or "sequence"

    calib = None
    if calib_path is not None:
        calib = load_calibration(calib_path, center_principal_point=center_principal_point)
        use_calib = True
        _check_calibration_size(ds, calib, Path(calib_path))
    elif ds.intrinsics is not None:
        ds.intrinsics.center_principal_point = center_principal_point
        ds.intrinsics._maps = None  # rebuilt with the flag above
    if use_calib and calib is None and ds.intrinsics is None:
        raise CalibrationError(
            f"{spec_str}: calibrated mode (use_calib) needs intrinsics but this {name} source has none; "
            "pass --calib intrinsics.yaml or set use_calib: False"
        )
    ds.set_calibration(calib, apply=use_calib or getattr(ds, "always_undistort", False))
    if subsample > 1:
        ds.subsample(subsample)
    return ds


def _check_calibration_size(ds: Dataset, calib: Intrinsics, calib_path: Path) -> None:
    size = getattr(ds, "image_size", None)
    if size is None and not ds.is_live and len(ds) > 0:
        h, w = ds.read(0).rgb.shape[:2]
        size = (w, h)
    if size is not None and tuple(size) != (calib.width, calib.height):
        raise CalibrationError(
            f"{calib_path}: width x height is {calib.width}x{calib.height} but the images of {ds.path} are {size[0]}x{size[1]}"
        )
