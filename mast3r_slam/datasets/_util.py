"""Helpers shared by the loaders: list files, image reading, natural sort, YAML with OpenCV headers."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..errors import DatasetError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv")


def natural_key(s: str | Path) -> list:
    """Sort key where digit runs compare as numbers: frame2 < frame10."""
    s = s.name if isinstance(s, Path) else str(s)
    return [int(p) if p.isdigit() else p.lower() for p in re.split(r"(\d+)", s)]


def natural_sorted(items) -> list:
    return sorted(items, key=natural_key)


def list_images(folder: Path, pattern: str | None = None) -> list[Path]:
    """Image files (png/jpg/jpeg, any case) in ``folder``, natural order; ``pattern`` narrows (glob)."""
    if pattern is not None:
        files = [p for p in folder.glob(pattern) if p.is_file()]
    else:
        files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    return natural_sorted(files)


def read_list_file(path: Path, min_cols: int = 2) -> list[list[str]]:
    """Lines of a TUM-style list file (``timestamp file`` ...), ``#`` comments and blank lines skipped.

    Raises :class:`DatasetError` naming the file and line for a missing file, an empty list or a
    line with fewer than ``min_cols`` fields.
    """
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    rows = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.replace(",", " ").split()
            if len(parts) < min_cols:
                raise DatasetError(f"{path}:{lineno}: expected {min_cols} fields 'timestamp filename', found '{line}'")
            rows.append(parts)
    if not rows:
        raise DatasetError(f"{path}: no entries (expected lines 'timestamp filename')")
    return rows


def check_files_exist(files: list[Path], listed_in: Path) -> None:
    missing = [f for f in files if not f.is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DatasetError(f"{listed_in}: names {missing[0]} which does not exist{more}")


def read_rgb(path: Path) -> np.ndarray:
    """Read an image file as [H, W, 3] uint8 RGB (grey images are replicated to 3 channels)."""
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise DatasetError(f"{path}: cannot read image (missing, empty or not a png/jpg file)")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_grey_as_rgb(path: Path) -> np.ndarray:
    """Read a grey image and replicate it to [H, W, 3] uint8."""
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise DatasetError(f"{path}: cannot read image (missing, empty or not a png/jpg file)")
    return np.repeat(img[:, :, None], 3, axis=2)


def read_depth(path: Path, units_per_metre: float = 5000.0) -> np.ndarray:
    """16-bit depth PNG -> [H, W] float32 metres (0 = missing)."""
    import cv2

    d = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if d is None or d.ndim != 2:
        raise DatasetError(f"{path}: cannot read 16-bit depth image")
    return d.astype(np.float32) / np.float32(units_per_metre)


def load_yaml(path: Path) -> dict:
    """YAML file (an OpenCV ``%YAML:1.0`` first line is accepted) -> dict."""
    import yaml

    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.splitlines()
    if lines and lines[0].startswith("%YAML"):
        lines = lines[1:]
    lines = [ln for ln in lines if not ln.startswith("---")]
    try:
        data = yaml.safe_load("\n".join(lines))
    except yaml.YAMLError as e:
        msg = str(e).replace("\n", " ")
        raise DatasetError(f"{path}: not valid YAML ({msg})") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a YAML mapping of keys, found {type(data).__name__}")
    return data


def associate_nearest(t_query: np.ndarray, t_ref: np.ndarray, max_diff: float) -> np.ndarray:
    """Index of the nearest reference time for each query time, -1 when farther than ``max_diff``.

    Vectorised (searchsorted); reference times need not be sorted.
    """
    t_query = np.asarray(t_query, dtype=np.float64)
    t_ref = np.asarray(t_ref, dtype=np.float64)
    if t_ref.size == 0:
        return np.full(t_query.size, -1, dtype=np.int64)
    order = np.argsort(t_ref, kind="stable")
    ts = t_ref[order]
    j = np.clip(np.searchsorted(ts, t_query), 1, max(ts.size - 1, 1))
    if ts.size == 1:
        best = np.zeros(t_query.size, dtype=np.int64)
    else:
        left, right = ts[j - 1], ts[j]
        best = np.where(np.abs(t_query - left) <= np.abs(right - t_query), j - 1, j)
    idx = order[best]
    ok = np.abs(t_ref[idx] - t_query) <= max_diff
    return np.where(ok, idx, -1)


def format_seconds(t: float) -> str:
    """Timestamp string for generated times (video frames, image folders): microsecond precision."""
    return f"{t:.6f}"
