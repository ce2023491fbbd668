"""Camera trajectories (camera-to-world 4x4, OpenCV camera axes) and their events.

All trajectories live in the room of :func:`mast3r_slam.synthetic.scene.build_room` (z up,
camera height about 1.4 m). Per-frame motion at the default lengths is a few centimetres and
a few degrees, except in the intended hard segments:

* ``loop``: one lap of an ellipse (1.5 x 0.9 m) looking outwards towards the walls with a
  slow yaw / pitch / height oscillation; the last pose equals the first (loop closure).
* ``fast_turn``: slow sideways walk, an in-place turn of ``turn_deg`` at ``deg_per_frame``
  (default 180 deg at 12 deg/frame, i.e. 360 deg/s at 30 Hz), then slow walking again.
* ``lost``: 60 % of the loop, ``n_black`` black frames (lens covered, no depth), a jump back
  to a viewpoint seen early in the sequence, then the loop continues over seen areas.
* ``dynamic``: the ``loop`` camera plus moving objects (see :func:`moving_object_poses`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

CAM_HEIGHT = 1.4
LOOP_AXES = (1.5, 0.9)


@dataclass
class Trajectory:
    poses: np.ndarray  # [N, 4, 4] camera-to-world
    events: dict = field(default_factory=dict)  # JSON-serialisable description of hard segments


def look_pose(position, yaw: float, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
    """Camera-to-world pose at ``position`` looking along heading ``yaw`` (rad, from +x towards
    +y), tilted up by ``pitch`` and rolled by ``roll``; camera axes x right, y down, z forward."""
    f = np.array([np.cos(pitch) * np.cos(yaw), np.cos(pitch) * np.sin(yaw), np.sin(pitch)])
    right = np.cross(f, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(f, right)
    c, s = np.cos(roll), np.sin(roll)
    right, down = c * right + s * down, -s * right + c * down
    T = np.eye(4)
    T[:3, 0], T[:3, 1], T[:3, 2], T[:3, 3] = right, down, f, position
    return T


def _loop_pose(phi: float) -> np.ndarray:
    a, b = LOOP_AXES
    pos = np.array([a * np.cos(phi), b * np.sin(phi), CAM_HEIGHT + 0.08 * np.sin(3 * phi)])
    yaw = phi + 0.35 * np.sin(2 * phi)
    pitch = -0.12 + 0.05 * np.sin(5 * phi)
    roll = 0.03 * np.sin(4 * phi)
    return look_pose(pos, yaw, pitch, roll)


def loop(n: int = 150, laps: int = 1) -> Trajectory:
    phis = 2 * np.pi * laps * np.arange(n) / max(n - 1, 1)
    return Trajectory(np.stack([_loop_pose(p) for p in phis]), {"loop_closure": {"first": 0, "last": n - 1}})


def fast_turn(n: int = 120, turn_deg: float = 180.0, deg_per_frame: float = 12.0) -> Trajectory:
    n_turn = int(round(turn_deg / deg_per_frame))
    start = max((n - n_turn) * 2 // 5, 1)
    n_after = n - start - n_turn
    if n_after < 1:
        raise ValueError(f"fast_turn needs more than {start + n_turn} frames, got {n}")
    step = 0.025  # metres per frame while walking
    yaw0 = -np.pi / 2 + 0.3  # start facing the shelf wall
    poses = []
    pos = np.array([-0.6, -0.2, CAM_HEIGHT])
    walk_dir = np.array([1.0, 0.0, 0.0])  # sideways to the view: parallax without forward motion
    yaw = yaw0
    for k in range(n):
        if k < start:
            p = pos + walk_dir * step * k
            yaw = yaw0 + 0.004 * k
        elif k < start + n_turn:
            p = pos + walk_dir * step * (start - 1)
            yaw = yaw0 + 0.004 * (start - 1) + np.deg2rad(deg_per_frame) * (k - start + 1)
        else:
            j = k - start - n_turn + 1
            p = pos + walk_dir * step * (start - 1) - walk_dir * step * j
            yaw = yaw0 + 0.004 * (start - 1) + np.deg2rad(turn_deg) + 0.004 * j
        poses.append(look_pose(p, yaw, -0.1, 0.0))
    ev = {"fast_turn": {"start": start, "end": start + n_turn, "deg_per_frame": deg_per_frame, "turn_deg": turn_deg}}
    return Trajectory(np.stack(poses), ev)


def lost(n: int = 150, n_black: int = 5, loss_at: float = 0.6, jump_to: float = 0.15) -> Trajectory:
    """Loop fraction ``loss_at`` (fraction of a lap) in 60 % of the frames, then black frames,
    then a jump back to lap fraction ``jump_to`` and onwards at the same speed."""
    n_before = int(round(0.6 * n))
    if n_before + n_black + 2 > n:
        raise ValueError(f"lost needs more frames, got {n}")
    dphi = 2 * np.pi * loss_at / n_before
    phis = [dphi * k for k in range(n_before)]
    phis += [dphi * (n_before + k) for k in range(n_black)]  # camera keeps moving while covered
    jump = n_before + n_black
    phis += [2 * np.pi * jump_to + dphi * k for k in range(n - jump)]
    ev = {
        "black_frames": list(range(n_before, jump)),
        "jump_frame": jump,
        "jump_target_frame": int(round(2 * np.pi * jump_to / dphi)),
    }
    return Trajectory(np.stack([_loop_pose(p) for p in phis]), ev)


def moving_object_poses(n: int) -> dict:
    """World poses [n, 4, 4] of the moving objects of the ``dynamic`` sequence.

    A walking figure and a box cart circle the room between the camera path and the furniture,
    against the camera's direction, so each crosses the outward-looking camera's view twice or
    more at 0.7-1 m distance (a large part of the image).
    """
    f = np.arange(n)
    out = {}
    for name, axes, speed, first_cross in (("figure", (2.3, 1.75), 1.0, 0.2), ("cart", (2.1, 1.55), 1.5, 0.45)):
        # the camera looks along phi(f) = 2 pi f / (n - 1); crossing when psi(f) == phi(f)
        psi0 = 2 * np.pi * first_cross * (1 + speed)
        psi = psi0 - speed * 2 * np.pi * f / max(n - 1, 1)
        a, b = axes
        pos = np.stack([a * np.cos(psi), b * np.sin(psi), np.zeros(n)], 1)
        vel = np.stack([a * np.sin(psi), -b * np.cos(psi)], 1)  # direction of travel (psi decreasing)
        yaw = np.arctan2(vel[:, 1], vel[:, 0])
        if name == "figure":
            pos[:, 2] = 0.03 * np.abs(np.sin(psi * 12))  # gait bounce
        T = np.tile(np.eye(4), (n, 1, 1))
        c, s = np.cos(yaw), np.sin(yaw)
        T[:, 0, 0], T[:, 0, 1], T[:, 1, 0], T[:, 1, 1] = c, -s, s, c
        T[:, :3, 3] = pos
        out[name] = T
    return out


def dynamic(n: int = 150, laps: int = 1) -> Trajectory:
    tr = loop(n, laps)
    tr.events = {"moving_objects": ["figure", "cart"]}
    return tr


TRAJECTORIES = {"loop": loop, "fast_turn": fast_turn, "lost": lost, "dynamic": dynamic}
DEFAULT_FRAMES = {"loop": 150, "fast_turn": 120, "lost": 150, "dynamic": 150}
