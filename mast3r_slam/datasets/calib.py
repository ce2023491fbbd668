"""``--calib intrinsics.yaml``: intrinsics for any source.

File layout (see ``config/intrinsics.yaml``)::

    width: 640
    height: 480
    calibration: [fx, fy, cx, cy]                       # pinhole
    calibration: [fx, fy, cx, cy, k1, k2, p1, p2]       # + OpenCV radial-tangential
    calibration: [fx, fy, cx, cy, k1, k2, p1, p2, k3]
"""
from __future__ import annotations

import math
from pathlib import Path

from ..errors import CalibrationError, DatasetError
from .base import Intrinsics
from ._util import load_yaml

CALIB_LAYOUT = "calibration: [fx, fy, cx, cy, (optional) k1, k2, p1, p2, (k3)]"


def load_calibration(path: str | Path, center_principal_point: bool = True) -> Intrinsics:
    """Read an intrinsics YAML file; any wrong field raises a one-line :class:`CalibrationError`."""
    path = Path(path)
    if not path.is_file():
        raise CalibrationError(f"{path}: calibration file not found")
    try:
        data = load_yaml(path)
    except DatasetError as e:
        raise CalibrationError(str(e)) from None
    missing = [k for k in ("width", "height", "calibration") if k not in data]
    if missing:
        raise CalibrationError(f"{path}: expected keys width, height, calibration; missing {', '.join(missing)}")
    size = {}
    for key in ("width", "height"):
        v = data[key]
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise CalibrationError(f"{path}: field '{key}' must be a positive integer, found {v!r}")
        size[key] = v
    calib = data["calibration"]
    if not isinstance(calib, (list, tuple)):
        raise CalibrationError(f"{path}: field 'calibration' must be a list ({CALIB_LAYOUT}), found {calib!r}")
    if len(calib) not in (4, 8, 9):
        raise CalibrationError(
            f"{path}: field 'calibration' must have 4, 8 or 9 numbers ({CALIB_LAYOUT}), found {len(calib)}"
        )
    vals = []
    for v in calib:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise CalibrationError(f"{path}: field 'calibration' must hold finite numbers, found {v!r}")
        vals.append(float(v))
    fx, fy, cx, cy = vals[:4]
    if fx <= 0 or fy <= 0:
        raise CalibrationError(f"{path}: field 'calibration' needs positive focal lengths fx, fy, found {fx}, {fy}")
    return Intrinsics(
        width=size["width"],
        height=size["height"],
        fx=fx,
        fy=fy,
        cx=cx,
        cy=cy,
        distortion=vals[4:],
        center_principal_point=center_principal_point,
    )
