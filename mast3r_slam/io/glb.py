"""glTF 2.0 binary (``.glb``) scenes: the coloured point cloud as a ``POINTS`` mesh and camera
frustums as ``LINES``; opens in browser model viewers (e.g. https://gltf-viewer.donmccurdy.com,
<model-viewer>, Blender, three.js editor). Written with numpy + struct + json only.

Layout: one buffer; buffer views for point positions (VEC3 float), point colours (VEC4
normalised unsigned byte, so every vertex element is 4-byte aligned as the spec requires),
frustum positions, frustum colours and frustum indices (unsigned int). The root node rotates
the OpenCV camera frame (x right, y down, z forward) by 180 degrees about x, so that glTF's
y-up viewers show the first camera upright; the buffers hold world coordinates unchanged.
"""
from __future__ import annotations

import json
import os
import struct

import numpy as np

from .atomic import atomic_open

GLB_MAGIC = 0x46546C67  # "glTF"
CHUNK_JSON = 0x4E4F534A  # "JSON"
CHUNK_BIN = 0x004E4942  # "BIN\0"

FLOAT, UNSIGNED_BYTE, UNSIGNED_INT = 5126, 5121, 5125
ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER = 34962, 34963
MODE_POINTS, MODE_LINES = 0, 1

#: frustum edges over the 5 vertices (centre, 4 image corners)
_FRUSTUM_EDGES = np.array([[0, 1], [0, 2], [0, 3], [0, 4], [1, 2], [2, 3], [3, 4], [4, 1]], dtype=np.uint32)


def _np(a) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.asarray(a)


def _rgba(colors, n: int) -> np.ndarray:
    c = _np(colors).reshape(n, -1)
    if c.dtype != np.uint8:
        c = np.clip(np.round(c.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    if c.shape[1] == 3:
        c = np.concatenate([c, np.full((n, 1), 255, np.uint8)], axis=1)
    return np.ascontiguousarray(c[:, :4])


def frustum_vertices(
    T_WC,  # [M, 7+] camera-to-world t + q_xyzw (a Sim(3) scale, if present, is ignored)
    K=None,  # [3, 3] or [M, 3, 3] pinhole intrinsics, or None (60 degree horizontal field of view)
    image_size: tuple[int, int] = (512, 384),  # (W, H)
    size: float = 0.05,  # frustum depth in world units
) -> np.ndarray:
    """[M, 5, 3] world positions of each camera centre and its 4 image corners at depth ``size``."""
    T = _np(T_WC).astype(np.float64).reshape(-1, _np(T_WC).shape[-1])
    M = len(T)
    W, H = image_size
    if K is None:
        f = 0.5 * W / np.tan(np.radians(30.0))
        K = np.array([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1.0]])
    K = np.broadcast_to(_np(K).astype(np.float64), (M, 3, 3))
    u = np.array([0.0, W, W, 0.0])
    v = np.array([0.0, 0.0, H, H])
    x = (u[None] - K[:, 0, 2:3]) / K[:, 0, 0:1]  # [M, 4]
    y = (v[None] - K[:, 1, 2:3]) / K[:, 1, 1:2]
    corners = np.stack([x, y, np.ones_like(x)], -1) * size  # [M, 4, 3] camera frame
    pts = np.concatenate([np.zeros((M, 1, 3)), corners], axis=1)  # [M, 5, 3]
    q = T[:, 3:7] / np.linalg.norm(T[:, 3:7], axis=1, keepdims=True)
    qv, qw = q[:, None, :3], q[:, None, 3:4]
    uv = np.cross(qv, pts)
    rotated = pts + 2.0 * (qw * uv + np.cross(qv, uv))
    return rotated + T[:, None, :3]


class _Builder:
    def __init__(self):
        self.blob = bytearray()
        self.views: list[dict] = []
        self.accessors: list[dict] = []

    def add(self, arr: np.ndarray, component: int, type_: str, target: int, normalized=False, minmax=False) -> int:
        while len(self.blob) % 4:
            self.blob.append(0)
        data = np.ascontiguousarray(arr).tobytes()
        self.views.append({"buffer": 0, "byteOffset": len(self.blob), "byteLength": len(data), "target": target})
        self.blob += data
        acc = {"bufferView": len(self.views) - 1, "componentType": component, "count": int(len(arr)), "type": type_}
        if normalized:
            acc["normalized"] = True
        if minmax:
            acc["min"] = [float(v) for v in arr.min(axis=0)]
            acc["max"] = [float(v) for v in arr.max(axis=0)]
        self.accessors.append(acc)
        return len(self.accessors) - 1


def glb_bytes(
    points=None,  # [N, 3] world positions
    colors=None,  # [N, 3|4] uint8 or float [0, 1]
    frustums=None,  # [M, 5, 3] from frustum_vertices
    frustum_colors=None,  # [M, 3|4] one colour per camera (default blue)
) -> bytes:
    """The GLB file content."""
    b = _Builder()
    meshes, nodes = [], []
    if points is not None and len(_np(points)):
        P = _np(points).astype(np.float32).reshape(-1, 3)
        C = _rgba(colors if colors is not None else np.full((len(P), 3), 200, np.uint8), len(P))
        pos = b.add(P, FLOAT, "VEC3", ARRAY_BUFFER, minmax=True)
        col = b.add(C, UNSIGNED_BYTE, "VEC4", ARRAY_BUFFER, normalized=True)
        meshes.append({"name": "map", "primitives": [{"attributes": {"POSITION": pos, "COLOR_0": col}, "mode": MODE_POINTS}]})
        nodes.append({"name": "map", "mesh": len(meshes) - 1})
    if frustums is not None and len(_np(frustums)):
        F = _np(frustums).astype(np.float32).reshape(-1, 5, 3)
        M = len(F)
        fc = np.tile([[40, 90, 255]], (M, 1)).astype(np.uint8) if frustum_colors is None else _rgba(frustum_colors, M)
        fc = _rgba(fc, M)
        verts = F.reshape(-1, 3)
        vcol = np.repeat(fc, 5, axis=0)
        idx = (_FRUSTUM_EDGES[None] + 5 * np.arange(M, dtype=np.uint32)[:, None, None]).reshape(-1)
        pos = b.add(verts, FLOAT, "VEC3", ARRAY_BUFFER, minmax=True)
        col = b.add(vcol, UNSIGNED_BYTE, "VEC4", ARRAY_BUFFER, normalized=True)
        ind = b.add(idx, UNSIGNED_INT, "SCALAR", ELEMENT_ARRAY_BUFFER)
        meshes.append(
            {"name": "cameras", "primitives": [{"attributes": {"POSITION": pos, "COLOR_0": col}, "indices": ind, "mode": MODE_LINES}]}
        )
        nodes.append({"name": "cameras", "mesh": len(meshes) - 1})
    root = {"name": "world (OpenCV camera frame rotated to y-up)", "rotation": [1.0, 0.0, 0.0, 0.0]}
    if nodes:
        root["children"] = list(range(1, len(nodes) + 1))
    gltf = {
        "asset": {"version": "2.0", "generator": "mast3r_slam"},
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [root] + nodes,
    }
    while len(b.blob) % 4:
        b.blob.append(0)
    if meshes:
        gltf.update(meshes=meshes, accessors=b.accessors, bufferViews=b.views, buffers=[{"byteLength": len(b.blob)}])
    js = json.dumps(gltf, separators=(",", ":")).encode("utf-8")
    js += b" " * (-len(js) % 4)
    chunks = struct.pack("<II", len(js), CHUNK_JSON) + js
    if meshes:
        chunks += struct.pack("<II", len(b.blob), CHUNK_BIN) + bytes(b.blob)
    return struct.pack("<III", GLB_MAGIC, 2, 12 + len(chunks)) + chunks


def write_glb(path: str | os.PathLike, points=None, colors=None, frustums=None, frustum_colors=None) -> None:
    """Write a GLB scene (atomic). See :func:`glb_bytes` and :func:`frustum_vertices`."""
    data = glb_bytes(points, colors, frustums, frustum_colors)
    with atomic_open(path, "wb") as f:
        f.write(data)


def read_glb(path_or_bytes) -> tuple[dict, bytes]:
    """Split a GLB into (JSON dict, binary chunk) with header checks (for tests and tools)."""
    data = path_or_bytes if isinstance(path_or_bytes, (bytes, bytearray)) else open(path_or_bytes, "rb").read()
    magic, version, length = struct.unpack_from("<III", data, 0)
    if magic != GLB_MAGIC or version != 2 or length != len(data):
        raise ValueError(f"not a glTF 2.0 binary (magic {magic:#x}, version {version}, length {length}/{len(data)})")
    jlen, jtype = struct.unpack_from("<II", data, 12)
    if jtype != CHUNK_JSON:
        raise ValueError("first GLB chunk is not JSON")
    gltf = json.loads(data[20 : 20 + jlen])
    off = 20 + jlen
    binary = b""
    if off < len(data):
        blen, btype = struct.unpack_from("<II", data, off)
        if btype != CHUNK_BIN:
            raise ValueError("second GLB chunk is not BIN")
        binary = bytes(data[off + 8 : off + 8 + blen])
    return gltf, binary
