"""The viewer's virtual camera: follow mode plus orbit / pan / zoom with the mouse.

The eye pose is ``anchor @ offset`` (both 4x4, OpenCV axes: x right, y down, z forward):

* ``anchor`` is the followed camera's rigid pose (``T_WC`` without scale) while following, and
  frozen where it was when following is switched off;
* ``offset`` is the user's navigation relative to the anchor; it starts at ``follow_offset``
  (2 units behind the followed camera) and is kept while the anchor moves, so the user's view
  point rides along with the camera.

The OpenGL view matrix is ``inverse(anchor @ offset @ CV_TO_GL)``. Screen coordinates are
pixels with the origin at the top-left corner, x right, y down (like images and mouse events).
"""
from __future__ import annotations

import numpy as np

from .math3d import CV_TO_GL, axis_angle, rigid_inverse, translation


def perspective(fov_y_deg: float, aspect: float, near: float, far: float) -> np.ndarray:
    """OpenGL projection matrix [4, 4] (right-handed eye space, clip z in [-w, w])."""
    f = 1.0 / np.tan(np.radians(fov_y_deg) / 2)
    P = np.zeros((4, 4))
    P[0, 0] = f / aspect
    P[1, 1] = f
    P[2, 2] = (far + near) / (near - far)
    P[2, 3] = 2 * far * near / (near - far)
    P[3, 2] = -1.0
    return P


class ViewerCamera:
    def __init__(
        self,
        fov_y_deg: float = 60.0,
        near: float = 0.01,
        far: float = 500.0,
        follow: bool = True,
        follow_offset=(0.0, 0.0, -2.0),
        orbit_speed_deg: float = 0.3,
        zoom_factor: float = 0.85,
    ):
        self.fov_y_deg = float(fov_y_deg)
        self.near = float(near)
        self.far = float(far)
        self.follow = bool(follow)
        self.default_offset = translation(follow_offset)
        self.orbit_speed = np.radians(orbit_speed_deg)
        self.zoom_factor = float(zoom_factor)
        self.anchor = np.eye(4)
        self.offset = self.default_offset.copy()

    # ---- pose ----------------------------------------------------------------------------------
    @property
    def pose_cv(self) -> np.ndarray:
        """Eye-to-world [4, 4] in OpenCV axes."""
        return self.anchor @ self.offset

    def view_matrix(self) -> np.ndarray:
        """World-to-GL-eye [4, 4]."""
        return rigid_inverse(self.pose_cv @ CV_TO_GL)

    def projection(self, width: int, height: int) -> np.ndarray:
        return perspective(self.fov_y_deg, width / height, self.near, self.far)

    def focal_px(self, height: int) -> float:
        """Focal length in pixels of the viewer camera for a framebuffer ``height`` pixels tall."""
        return 0.5 * height / np.tan(np.radians(self.fov_y_deg) / 2)

    def update_follow(self, T_WC_rigid: np.ndarray | None) -> None:
        """Move the anchor to the followed camera's rigid pose [4, 4] (no-op when not following)."""
        if self.follow and T_WC_rigid is not None:
            self.anchor = np.asarray(T_WC_rigid, dtype=np.float64).copy()

    def set_follow(self, on: bool, T_WC_rigid: np.ndarray | None = None) -> None:
        """Switch following. Off: the current view is baked in (nothing moves on screen).
        On: the view jumps to the default offset behind the followed camera."""
        on = bool(on)
        if on == self.follow:
            return
        if not on:
            self.offset = self.anchor @ self.offset
            self.anchor = np.eye(4)
        else:
            self.offset = self.default_offset.copy()
            if T_WC_rigid is not None:
                self.anchor = np.asarray(T_WC_rigid, dtype=np.float64).copy()
        self.follow = on

    def reset(self) -> None:
        """Back to the default offset behind the anchor."""
        self.offset = self.default_offset.copy()

    # ---- projection helpers --------------------------------------------------------------------
    def project(self, points_world: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        """World points [N, 3] -> (pixel coordinates [N, 2] (x, y; top-left origin), eye depth [N]).

        The pixel containing a point is ``floor(xy)``; depth > 0 is in front of the eye.
        """
        p = np.asarray(points_world, dtype=np.float64).reshape(-1, 3)
        inv = rigid_inverse(self.pose_cv)
        pc = p @ inv[:3, :3].T + inv[:3, 3]  # OpenCV eye coordinates
        f = self.focal_px(height)
        z = pc[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            x = f * pc[:, 0] / z + width / 2
            y = f * pc[:, 1] / z + height / 2
        return np.stack([x, y], -1), z

    def unproject(self, x: float, y: float, depth: float, width: int, height: int) -> np.ndarray:
        """Pixel (x, y) (top-left origin) at eye depth ``depth`` -> world point [3]."""
        f = self.focal_px(height)
        pc = np.array([(x - width / 2) / f * depth, (y - height / 2) / f * depth, depth])
        P = self.pose_cv
        return P[:3, :3] @ pc + P[:3, 3]

    def depth_from_buffer(self, d: float) -> float | None:
        """Eye depth from a depth-buffer value in [0, 1] (None for the far plane / background)."""
        if not (0.0 <= d < 1.0):
            return None
        zn = 2.0 * d - 1.0
        n, f = self.near, self.far
        return 2.0 * n * f / (f + n - zn * (f - n))

    def default_depth(self) -> float:
        """Depth used when nothing is under the cursor: distance from the eye to the anchor."""
        return float(max(np.linalg.norm(self.offset[:3, 3]), 0.1))

    # ---- navigation (all keep the anchor, change the offset) ----------------------------------
    def _set_pose_cv(self, pose_world: np.ndarray) -> None:
        self.offset = rigid_inverse(self.anchor) @ pose_world

    def pan(self, dx: float, dy: float, depth: float, height: int) -> None:
        """Drag the scene by (dx, dy) pixels; points at eye depth ``depth`` follow the cursor exactly."""
        f = self.focal_px(height)
        move = translation([-dx * depth / f, -dy * depth / f, 0.0])
        self._set_pose_cv(self.pose_cv @ move)

    def orbit(self, dx: float, dy: float, pivot_world: np.ndarray) -> None:
        """Rotate the eye around ``pivot_world`` [3]: horizontal drag turns about the anchor's up
        axis (-y in OpenCV axes), vertical drag about the eye's x axis. The pivot keeps its pixel."""
        P = self.pose_cv
        up_world = -self.anchor[:3, 1]
        R = axis_angle(up_world, dx * self.orbit_speed) @ axis_angle(P[:3, 0], -dy * self.orbit_speed)
        pivot = np.asarray(pivot_world, dtype=np.float64).reshape(3)
        new = np.eye(4)
        new[:3, :3] = R @ P[:3, :3]
        new[:3, 3] = pivot + R @ (P[:3, 3] - pivot)
        self._set_pose_cv(new)

    def zoom(self, steps: float, target_world: np.ndarray) -> None:
        """Move the eye towards ``target_world`` [3] (the point under the cursor): each step scales
        the distance by ``zoom_factor``; negative steps move away. The target keeps its pixel."""
        P = self.pose_cv
        target = np.asarray(target_world, dtype=np.float64).reshape(3)
        alpha = 1.0 - self.zoom_factor ** float(steps)
        new = P.copy()
        new[:3, 3] = P[:3, 3] + alpha * (target - P[:3, 3])
        self._set_pose_cv(new)
