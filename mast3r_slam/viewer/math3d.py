"""Small numpy geometry for the viewer (no torch in the viewer process).

Poses are Sim(3) ``[t(3), q_xyzw(4), s]`` camera-to-world with OpenCV camera axes (x right,
y down, z forward). OpenGL eye axes are x right, y up, z backward, hence ``CV_TO_GL``.
"""
from __future__ import annotations

import numpy as np

#: maps OpenGL eye coordinates to OpenCV camera coordinates (and back: it is its own inverse)
CV_TO_GL = np.diag([1.0, -1.0, -1.0, 1.0])


def quat_to_rot(q: np.ndarray) -> np.ndarray:
    """Unit xyzw quaternions [..., 4] -> rotation matrices [..., 3, 3] (normalises the input)."""
    q = np.asarray(q, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True).clip(1e-12)
    x, y, z, w = np.moveaxis(q, -1, 0)
    R = np.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        axis=-1,
    )
    return R.reshape(q.shape[:-1] + (3, 3))


def rot_to_quat(R: np.ndarray) -> np.ndarray:
    """Rotation matrix [3, 3] -> xyzw quaternion [4] (qw >= 0)."""
    R = np.asarray(R, dtype=np.float64)
    tr = np.trace(R)
    cands = np.array([
        [1 + R[0, 0] - R[1, 1] - R[2, 2], R[0, 1] + R[1, 0], R[2, 0] + R[0, 2], R[2, 1] - R[1, 2]],
        [R[0, 1] + R[1, 0], 1 - R[0, 0] + R[1, 1] - R[2, 2], R[1, 2] + R[2, 1], R[0, 2] - R[2, 0]],
        [R[2, 0] + R[0, 2], R[1, 2] + R[2, 1], 1 - R[0, 0] - R[1, 1] + R[2, 2], R[1, 0] - R[0, 1]],
        [R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1], 1 + tr],
    ])
    k = int(np.argmax(np.diag(cands)))
    q = cands[k] * (0.5 / np.sqrt(max(cands[k, k], 1e-12)))
    if q[3] < 0:
        q = -q
    return q / np.linalg.norm(q)


def sim3_matrix(T: np.ndarray) -> np.ndarray:
    """Sim(3) data [..., 8] -> 4x4 matrices [..., 4, 4] with upper-left ``s R`` (scale included)."""
    T = np.asarray(T, dtype=np.float64)
    M = np.zeros(T.shape[:-1] + (4, 4))
    M[..., :3, :3] = quat_to_rot(T[..., 3:7]) * T[..., 7, None, None]
    M[..., :3, 3] = T[..., :3]
    M[..., 3, 3] = 1.0
    return M


def se3_matrix(T: np.ndarray) -> np.ndarray:
    """The rigid part of Sim(3) data [..., 8] (or SE(3) [..., 7]) -> [..., 4, 4] (scale dropped)."""
    T = np.asarray(T, dtype=np.float64)
    M = np.zeros(T.shape[:-1] + (4, 4))
    M[..., :3, :3] = quat_to_rot(T[..., 3:7])
    M[..., :3, 3] = T[..., :3]
    M[..., 3, 3] = 1.0
    return M


def make_sim3(R: np.ndarray | None = None, t=(0.0, 0.0, 0.0), s: float = 1.0) -> np.ndarray:
    """Build Sim(3) data [8] float32 from a rotation matrix, translation and scale."""
    q = np.array([0, 0, 0, 1.0]) if R is None else rot_to_quat(R)
    return np.concatenate([np.asarray(t, np.float64).reshape(3), q, [float(s)]]).astype(np.float32)


def axis_angle(axis, angle: float) -> np.ndarray:
    """Rotation matrix [3, 3] of ``angle`` radians about ``axis``."""
    a = np.asarray(axis, dtype=np.float64)
    a = a / max(np.linalg.norm(a), 1e-12)
    K = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(angle) * K + (1 - np.cos(angle)) * (K @ K)


def translation(t) -> np.ndarray:
    M = np.eye(4)
    M[:3, 3] = np.asarray(t, dtype=np.float64).reshape(3)
    return M


def rigid_inverse(M: np.ndarray) -> np.ndarray:
    """Inverse of rigid 4x4 matrices [..., 4, 4]."""
    R = M[..., :3, :3]
    t = M[..., :3, 3]
    out = np.zeros_like(M)
    Rt = np.swapaxes(R, -1, -2)
    out[..., :3, :3] = Rt
    out[..., :3, 3] = -(Rt @ t[..., None])[..., 0]
    out[..., 3, 3] = 1.0
    return out


def frustum_corners(H: int, W: int, K: np.ndarray | None, depth: float, default_hfov_deg: float = 60.0) -> np.ndarray:
    """Image-corner rays scaled to ``depth`` in the camera frame: [4, 3] (TL, TR, BR, BL; OpenCV axes).

    Without intrinsics a pinhole with a ``default_hfov_deg`` horizontal field of view and a
    centred principal point is assumed.
    """
    if K is None:
        f = 0.5 * W / np.tan(np.radians(default_hfov_deg) / 2)
        K = np.array([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1.0]])
    K = np.asarray(K, dtype=np.float64)
    uv = np.array([[0, 0], [W, 0], [W, H], [0, H]], dtype=np.float64)
    x = (uv[:, 0] - K[0, 2]) / K[0, 0]
    y = (uv[:, 1] - K[1, 2]) / K[1, 1]
    return np.stack([x, y, np.ones(4)], -1) * depth


def frustum_segments(poses: np.ndarray, corners: np.ndarray) -> np.ndarray:
    """Frustum wireframes of cameras ``poses`` [N, 4, 4] (camera-to-world) with ``corners`` [N, 4, 3]
    (or [4, 3] shared) -> line segments [N * 8, 2, 3]: 4 centre-to-corner edges and the image rectangle."""
    poses = np.asarray(poses, dtype=np.float64)
    n = poses.shape[0]
    corners = np.broadcast_to(np.asarray(corners, dtype=np.float64), (n, 4, 3))
    pts = np.concatenate([np.zeros((n, 1, 3)), corners], axis=1)  # [N, 5, 3]
    pw = np.einsum("nij,nkj->nki", poses[:, :3, :3], pts) + poses[:, None, :3, 3]
    a = np.array([0, 0, 0, 0, 1, 2, 3, 4])
    b = np.array([1, 2, 3, 4, 2, 3, 4, 1])
    return np.stack([pw[:, a], pw[:, b]], axis=2).reshape(-1, 2, 3)


def rays_from_K(K: np.ndarray, H: int, W: int) -> np.ndarray:
    """K^-1 [u, v, 1] for every pixel: [H, W, 3] (pixel centres at integer coordinates)."""
    K = np.asarray(K, dtype=np.float64)
    u, v = np.meshgrid(np.arange(W, dtype=np.float64), np.arange(H, dtype=np.float64))
    x = (u - K[0, 2]) / K[0, 0]
    y = (v - K[1, 2]) / K[1, 1]
    return np.stack([x, y, np.ones_like(x)], -1)
