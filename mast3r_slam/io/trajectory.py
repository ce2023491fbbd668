"""Trajectory files in the TUM RGB-D format, ground-truth readers and pose interpolation.

TUM format: one pose per line, ``timestamp tx ty tz qx qy qz qw`` separated by spaces, ``#``
comment lines allowed; the pose is camera-to-world (``T_WC``) with the quaternion scalar-last.
:func:`write_tum` writes numbers at full precision (shortest round-trip representation) and
timestamps given as strings exactly as given; :func:`read_tum` returns timestamps as the strings
found in the file, so a write/read round trip is lossless.

:func:`read_trajectory` also reads the ground-truth layouts of EuRoC (the dataset's own
``state_groundtruth_estimate0/data.csv`` and the space-separated ``timestamp_ns p q_wxyz`` files
distributed with published evaluations) and always returns scalar-last quaternions.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import TrajectoryFileError
from .atomic import atomic_open

TUM_LAYOUT = "timestamp tx ty tz qx qy qz qw"

def _as_numpy(a) -> np.ndarray:
    if hasattr(a, "detach"):  # torch tensor
        a = a.detach().cpu().double().numpy()
    return np.asarray(a, dtype=np.float64)


def _fmt(x: float) -> str:
    """Shortest string that reads back to the same float64 (e.g. '0.1', '1e-05')."""
    return repr(float(x))


def format_timestamp(t) -> str:
    """Strings are kept exactly; numbers are written at full precision."""
    if isinstance(t, str):
        return t
    if isinstance(t, (int, np.integer)):
        return str(int(t))
    return _fmt(t)


def write_tum(path_or_file, timestamps: Sequence, poses_xyz_quat_xyzw) -> None:  # poses [N, 7]
    """Write a TUM trajectory ``timestamp tx ty tz qx qy qz qw``.

    ``timestamps`` are strings (written as given) or numbers (full precision); ``poses`` is an
    [N, 7] array or tensor ``[t, q_xyzw]`` (for Sim(3) poses pass ``T[..., :7]``: the scale is
    dropped). A path is written atomically; an open text handle is written in place.
    """
    poses = _as_numpy(poses_xyz_quat_xyzw)
    if poses.ndim != 2 or poses.shape[1] != 7:
        raise ValueError(f"write_tum: poses must be [N, 7] (t, q_xyzw), got shape {poses.shape}")
    if len(timestamps) != len(poses):
        raise ValueError(f"write_tum: {len(timestamps)} timestamps but {len(poses)} poses")
    lines = [
        format_timestamp(t) + " " + " ".join(_fmt(v) for v in row) for t, row in zip(timestamps, poses.tolist())
    ]
    text = "".join(line + "\n" for line in lines)
    if hasattr(path_or_file, "write"):
        path_or_file.write(text)
        return
    with atomic_open(path_or_file, "w") as f:
        f.write(text)


def _read_text(path_or_file) -> tuple[str, str]:
    """Return (text, display name)."""
    if hasattr(path_or_file, "read"):
        return path_or_file.read(), getattr(path_or_file, "name", "<stream>")
    p = Path(path_or_file)
    if not p.is_file():
        raise TrajectoryFileError(f"{p}: trajectory file not found")
    try:
        return p.read_text(encoding="utf-8"), str(p)
    except UnicodeDecodeError:
        raise TrajectoryFileError(f"{p}: not a text file (expected lines '{TUM_LAYOUT}')") from None


def _rows(text: str, name: str, ncols: int | None, layout: str, sep: str | None = None):
    """Split non-comment lines; check the column count; return (first-column strings, float rows)."""
    stamps, rows = [], []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(sep) if sep else line.replace(",", " ").split()
        parts = [p.strip() for p in parts]
        if ncols is not None and len(parts) != ncols:
            raise TrajectoryFileError(
                f"{name}:{lineno}: expected {ncols} columns '{layout}' separated by spaces, found {len(parts)}"
            )
        try:
            rows.append([float(v) for v in parts[1:]])
        except ValueError:
            raise TrajectoryFileError(f"{name}:{lineno}: non-numeric value in '{line}' (expected '{layout}')") from None
        stamps.append(parts[0])
    return stamps, rows


def read_tum(path_or_file) -> tuple[list[str], np.ndarray]:
    """Read a TUM trajectory: (timestamps as strings [N], poses [N, 7] float64 ``t, q_xyzw``)."""
    text, name = _read_text(path_or_file)
    stamps, rows = _rows(text, name, 8, TUM_LAYOUT)
    poses = np.asarray(rows, dtype=np.float64).reshape(-1, 7)
    return stamps, poses


def _header_says_wxyz(text: str) -> bool:
    """EuRoC-style headers name the scalar first: 'q_RS_w [] q_RS_x' or 'qw qx qy qz'."""
    for line in text.splitlines():
        s = line.strip()
        if not s:
            continue
        if not s.startswith("#"):
            return False
        low = s.lower().replace("[]", " ")
        for w, x in (("q_rs_w", "q_rs_x"), ("qw", "qx")):
            if w in low and x in low:
                return low.index(w) < low.index(x)
    return False


def read_trajectory(path_or_file) -> tuple[list[str], np.ndarray]:
    """Read a TUM file or an EuRoC ground-truth file; returns (timestamps [N] strings, [N, 7] t + q_xyzw).

    Recognised layouts: TUM (8 columns, scalar-last); EuRoC ``data.csv`` (comma separated,
    ``timestamp, p_xyz, q_wxyz, ...``, 17 columns); 8 space-separated columns whose header
    comment names the scalar first (``#timestamp [ns] p_RS_R_x ... q_RS_w q_RS_x ...``).
    """
    text, name = _read_text(path_or_file)
    first = next((ln for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")), "")
    if first.count(",") >= 7:  # EuRoC csv
        stamps, rows = _rows(text, name, None, "timestamp, p_x, p_y, p_z, q_w, q_x, q_y, q_z, ...", sep=",")
        arr = np.asarray(rows, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[1] < 7:
            raise TrajectoryFileError(f"{name}: expected at least 8 comma-separated columns 'timestamp, p_xyz, q_wxyz'")
        arr = arr[:, :7]
        wxyz = True
    else:
        stamps, rows = _rows(text, name, 8, TUM_LAYOUT)
        arr = np.asarray(rows, dtype=np.float64).reshape(-1, 7)
        wxyz = _header_says_wxyz(text)
    if wxyz:
        arr = np.concatenate([arr[:, :3], arr[:, 4:7], arr[:, 3:4]], axis=1)
    return stamps, arr


# ----------------------------------------------------------------------------------------------
# timestamps and interpolation
# ----------------------------------------------------------------------------------------------
NS_THRESHOLD = 1e14  # larger timestamps are taken to be nanoseconds (EuRoC: ~1.4e18)


def timestamps_to_seconds(timestamps: Sequence) -> np.ndarray:
    """Timestamps (strings or numbers) -> float64 seconds; nanosecond stamps (> 1e14) are divided by 1e9.

    Integer nanosecond strings are converted exactly before the division (no float rounding of
    the 19-digit integer).
    """
    vals = list(timestamps)
    try:
        arr = np.asarray([float(t) for t in vals], dtype=np.float64)
    except ValueError as e:
        raise TrajectoryFileError(f"non-numeric timestamp ({e})") from None
    if not (arr.size and np.nanmax(np.abs(arr)) > NS_THRESHOLD):
        return arr
    out = np.empty(len(vals), dtype=np.float64)
    for i, t in enumerate(vals):
        head = str(t).strip().split(".")[0]
        if head.isdigit():  # exact integer nanoseconds
            whole = int(head)
            out[i] = (whole // 10**9) + (whole % 10**9) / 1e9
        else:
            out[i] = float(t) / 1e9
    return out


def pose7_to_matrix(p: np.ndarray) -> np.ndarray:
    """[7] t + q_xyzw -> [4, 4] (float64)."""
    t, q = np.asarray(p[:3], float), np.asarray(p[3:7], float)
    x, y, z, w = q / np.linalg.norm(q)
    R = np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, t
    return T


def normalize_quat(q: np.ndarray) -> np.ndarray:  # [..., 4]
    return q / np.linalg.norm(q, axis=-1, keepdims=True)


def slerp(q0: np.ndarray, q1: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Spherical interpolation of unit xyzw quaternions q0, q1 [N, 4] at fractions a [N]."""
    q0 = normalize_quat(q0)
    q1 = normalize_quat(q1)
    d = np.sum(q0 * q1, axis=-1)
    q1 = np.where(d[:, None] < 0, -q1, q1)
    d = np.abs(d).clip(max=1.0)
    theta = np.arccos(d)
    sin_t = np.sin(theta)
    small = sin_t < 1e-8
    safe = np.where(small, 1.0, sin_t)
    w0 = np.where(small, 1 - a, np.sin((1 - a) * theta) / safe)
    w1 = np.where(small, a, np.sin(a * theta) / safe)
    return normalize_quat(w0[:, None] * q0 + w1[:, None] * q1)


def interpolate_poses(
    times_gt: np.ndarray,  # [M] seconds, increasing
    poses_gt: np.ndarray,  # [M, 7] t + q_xyzw
    times_query: np.ndarray,  # [N] seconds
    max_gap: float | None = 0.1,
    tolerance: float = 1e-6,
) -> tuple[np.ndarray, np.ndarray]:
    """Linear (translation) + slerp (rotation) interpolation of poses at query times.

    Returns (poses [N, 7], valid [N] bool). A query is valid when it lies within the ground-truth
    time span (``tolerance`` seconds of slack at the ends) and, if ``max_gap`` is given, the two
    bracketing samples are at most ``max_gap`` seconds apart. Invalid rows are NaN.
    """
    t = np.asarray(times_gt, dtype=np.float64)
    P = np.asarray(poses_gt, dtype=np.float64)
    tq = np.asarray(times_query, dtype=np.float64)
    out = np.full((tq.size, 7), np.nan)
    if t.size == 0 or tq.size == 0:
        return out, np.zeros(tq.size, dtype=bool)
    order = np.argsort(t, kind="stable")
    t, P = t[order], P[order]
    if t.size == 1:
        valid = np.abs(tq - t[0]) <= tolerance
        out[valid] = P[0]
        return out, valid
    tc = np.clip(tq, t[0], t[-1])
    j = np.clip(np.searchsorted(t, tc, side="right") - 1, 0, t.size - 2)
    dt = t[j + 1] - t[j]
    a = np.where(dt > 0, (tc - t[j]) / np.where(dt > 0, dt, 1.0), 0.0)
    valid = (tq >= t[0] - tolerance) & (tq <= t[-1] + tolerance)
    if max_gap is not None:
        valid &= dt <= max_gap
    trans = P[j, :3] + a[:, None] * (P[j + 1, :3] - P[j, :3])
    quat = slerp(P[j, 3:], P[j + 1, 3:], a)
    res = np.concatenate([trans, quat], axis=1)
    out[valid] = res[valid]
    return out, valid


def to_text(timestamps: Sequence, poses) -> str:
    """The TUM text of a trajectory (for tests and logs)."""
    buf = io.StringIO()
    write_tum(buf, timestamps, poses)
    return buf.getvalue()
