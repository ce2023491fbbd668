"""Binary little-endian PLY point clouds: ``x y z`` float32, ``red green blue`` uchar and an
optional ``confidence`` float32 per vertex. Written in one vectorised block (numpy structured
array), atomically when given a path."""
from __future__ import annotations

import os

import numpy as np

from ..errors import Mast3rSlamError
from .atomic import atomic_open


def _np(a) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.asarray(a)


def _vertex_dtype(with_confidence: bool) -> np.dtype:
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")]
    if with_confidence:
        fields.append(("confidence", "<f4"))
    return np.dtype(fields)


def ply_bytes(xyz, rgb, confidence=None) -> bytes:  # xyz [N, 3], rgb [N, 3] uint8, confidence [N]
    """The PLY file content for ``N`` points (colours: uint8, or float in [0, 1])."""
    xyz = _np(xyz).reshape(-1, 3)
    rgb = _np(rgb).reshape(-1, 3)
    if rgb.dtype != np.uint8:
        rgb = np.clip(np.round(rgb.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    if len(rgb) != len(xyz):
        raise ValueError(f"ply: {len(xyz)} points but {len(rgb)} colours")
    conf = None if confidence is None else _np(confidence).reshape(-1)
    if conf is not None and len(conf) != len(xyz):
        raise ValueError(f"ply: {len(xyz)} points but {len(conf)} confidences")
    dtype = _vertex_dtype(conf is not None)
    v = np.empty(len(xyz), dtype=dtype)
    v["x"], v["y"], v["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    v["red"], v["green"], v["blue"] = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    if conf is not None:
        v["confidence"] = conf
    header = [
        "ply",
        "format binary_little_endian 1.0",
        "comment written by mast3r_slam",
        f"element vertex {len(xyz)}",
        "property float x",
        "property float y",
        "property float z",
        "property uchar red",
        "property uchar green",
        "property uchar blue",
    ]
    if conf is not None:
        header.append("property float confidence")
    header.append("end_header")
    return ("\n".join(header) + "\n").encode("ascii") + v.tobytes()


def write_ply(path: str | os.PathLike, xyz, rgb, confidence=None) -> None:  # [N, 3], [N, 3], [N]
    """Write a binary PLY (atomic)."""
    data = ply_bytes(xyz, rgb, confidence)
    with atomic_open(path, "wb") as f:
        f.write(data)


_PLY_TYPES = {
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
    "uchar": "u1", "uint8": "u1", "char": "i1", "int8": "i1",
    "ushort": "u2", "uint16": "u2", "short": "i2", "int16": "i2",
    "uint": "u4", "uint32": "u4", "int": "i4", "int32": "i4",
}  # fmt: skip


def read_ply(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a binary little-endian PLY with one ``vertex`` element of scalar properties.

    Returns {property name: array [N]}. (Enough for files written by :func:`write_ply`.)
    """
    with open(path, "rb") as f:
        data = f.read()
    end = data.find(b"end_header\n")
    if not data.startswith(b"ply\n") or end < 0:
        raise Mast3rSlamError(f"{path}: not a PLY file (missing 'ply' / 'end_header')")
    header = data[:end].decode("ascii").splitlines()
    if "format binary_little_endian 1.0" not in header:
        raise Mast3rSlamError(f"{path}: only binary_little_endian PLY files are supported")
    n, fields = 0, []
    for line in header:
        parts = line.split()
        if parts[:2] == ["element", "vertex"]:
            n = int(parts[2])
        elif parts and parts[0] == "element":
            raise Mast3rSlamError(f"{path}: unsupported element '{parts[1]}' (only vertex)")
        elif parts and parts[0] == "property":
            if parts[1] not in _PLY_TYPES:
                raise Mast3rSlamError(f"{path}: unsupported property type '{parts[1]}'")
            fields.append((parts[2], "<" + _PLY_TYPES[parts[1]]))
    v = np.frombuffer(data, dtype=np.dtype(fields), count=n, offset=end + len(b"end_header\n"))
    return {name: v[name].copy() for name, _ in fields}
