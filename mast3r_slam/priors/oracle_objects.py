"""Moving objects in the ground-truth prior (synthetic ``dynamic`` sequence; not the network).

Each view's own pointmap shows the moving objects where they are at that view's time. What the
stand-in does with a moving object in the *cross-view* pointmap X_ji (view j's points in camera
i) is set by ``OracleErrorModel.moving_objects``:

* ``"registered"`` (default): the object's points are put where the object is in view i, as if
  it had not moved: the object's own motion between the two times is applied to its points. A
  two-view network trained on static scenes explains two images with one rigid motion and tends
  to register a moving object onto itself like this; the matches on the object then agree in
  3D and pass the matcher's distance check, and without special handling the object's motion
  leaks into the camera pose.
* ``"physical"``: the object stays where it was at view j's time (geometrically correct; the
  matcher's distance check then rejects most matches on fast objects by itself).
* ``"masked"``: registered, but every object pixel gets the lowest confidence (C = 1, Q = 0) in
  every prediction: no match on an object is used and no object point reaches the map. What
  perfect moving-object handling could reach (an evaluation floor, not a model of the network).

Objects and their per-frame poses come from the sequence's ``objects.json``; pixels are labelled
with the object whose primitives contain their ground-truth world point.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..eval.moving_objects import inside_primitives
from ..io.trajectory import pose7_to_matrix

MODES = ("registered", "physical", "masked")


@dataclass
class MovingObjects:
    names: list[str]
    prims: list[list[dict]]
    poses: dict[str, np.ndarray]  # timestamp -> [n_obj, 4, 4] object-to-world

    @classmethod
    def from_dataset(cls, dataset) -> "MovingObjects | None":
        get = getattr(dataset, "moving_objects", None)
        doc = get() if callable(get) else None
        if not doc or not doc.get("objects"):
            return None
        objs = doc["objects"]
        stamps = [str(t) for t in doc["timestamps"]]
        per_frame = np.stack([np.stack([pose7_to_matrix(p) for p in o["poses_tum"]]) for o in objs], 1)  # [F, n, 4, 4]
        return cls([o["name"] for o in objs], [o["primitives"] for o in objs], dict(zip(stamps, per_frame)))

    def at(self, timestamp: str) -> np.ndarray | None:
        return self.poses.get(str(timestamp))

    def labels(self, timestamp: str, P_world: np.ndarray, margin: float = 0.03) -> np.ndarray:
        """[N] int64 object index of each world point at this time (-1: static scene)."""
        lab = np.full(len(P_world), -1, np.int64)
        poses = self.at(timestamp)
        if poses is None:
            return lab
        for k, (T, prims) in enumerate(zip(poses, self.prims)):
            local = (P_world - T[:3, 3]) @ T[:3, :3]
            lab[(lab < 0) & inside_primitives(local, prims, margin)] = k
        return lab


def register(X2: torch.Tensor, labels2: torch.Tensor, T1: torch.Tensor, T2: torch.Tensor, O1: torch.Tensor, O2: torch.Tensor) -> torch.Tensor:
    """Move view-2 points of moving objects (camera-2 frame) by each object's motion from time 2 to time 1.

    X2 [B, HW, 3] camera-2 points; labels2 [B, HW] object index or -1; T1, T2 [B, 4, 4] float64
    camera-to-world; O1, O2 [B, n, 4, 4] float64 object-to-world at the two times.
    Returns X2 with the objects' points replaced by T2^-1 O1 O2^-1 T2 X2 (still camera 2).
    """
    B, n = O1.shape[:2]
    T2i = torch.linalg.inv(T2)
    M = T2i[:, None] @ O1 @ torch.linalg.inv(O2) @ T2[:, None]  # [B, n, 4, 4]
    M = M.float().reshape(B * n, 4, 4)
    flat = (torch.arange(B, device=X2.device)[:, None] * n + labels2.clamp_min(0)).reshape(-1)
    R, t = M[flat, :3, :3], M[flat, :3, 3]  # [B*HW, 3, 3], [B*HW, 3]
    moved = (R @ X2.reshape(-1, 3, 1))[..., 0] + t
    return torch.where((labels2 >= 0).reshape(-1, 1), moved, X2.reshape(-1, 3)).reshape(X2.shape)
