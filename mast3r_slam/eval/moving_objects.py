"""Map points left along moving objects' paths (synthetic ``dynamic`` sequence, ground truth).

A run's exported map (``map.ply``) is brought into the ground-truth world by the Sim(3) that
aligns its keyframe trajectory with the ground truth (Umeyama), and every point is tested
against the moving objects' primitives (``objects.json``: cylinders, spheres, boxes in each
object's frame, one object-to-world pose per frame) at every frame of the sequence: a point
inside an object at any time lies on that object's path. The static scene of the ``dynamic``
sequence leaves the walkway free, so such points are smear from the moving objects (points on
the floor, below ``floor_z``, are not counted).

    python -m mast3r_slam.eval.moving_objects RESULTS_DIR SEQUENCE_DIR
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import Mast3rSlamError
from ..io.trajectory import pose7_to_matrix


def inside_primitives(p: np.ndarray, prims: list[dict], margin: float) -> np.ndarray:
    """[P] bool: points p [P, 3] (object frame) inside any primitive grown by ``margin``."""
    hit = np.zeros(len(p), bool)
    for d in prims:
        q = p - np.asarray(d["center"], np.float64)
        kind = d["type"]
        if kind == "sphere":
            hit |= np.linalg.norm(q, axis=1) <= d["radius"] + margin
        elif kind == "cylinder":  # axis along the object's z
            hit |= (np.linalg.norm(q[:, :2], axis=1) <= d["radius"] + margin) & (np.abs(q[:, 2]) <= d["half_height"] + margin)
        elif kind == "box":
            hit |= np.all(np.abs(q) <= np.asarray(d["half_extents"]) + margin, axis=1)
        else:
            raise Mast3rSlamError(f"objects.json: unknown primitive type {kind!r}")
    return hit


def points_on_paths(xyz: np.ndarray, objects: dict, margin: float = 0.03, floor_z: float = 0.05) -> np.ndarray:
    """[P] bool: world points (ground-truth frame) inside a moving object at some frame."""
    xyz = np.asarray(xyz, np.float64)
    hit = np.zeros(len(xyz), bool)
    above = xyz[:, 2] > floor_z
    for obj in objects["objects"]:
        prims = obj["primitives"]
        reach = max(np.linalg.norm(d["center"]) + max(d.get("radius", 0.0), d.get("half_height", 0.0), *(d.get("half_extents") or [0.0])) for d in prims) + margin
        for pose in obj["poses_tum"]:
            T = pose7_to_matrix(pose)
            t, R = T[:3, 3], T[:3, :3]
            near = above & ~hit & (np.linalg.norm(xyz - t, axis=1) <= reach)
            if not near.any():
                continue
            idx = np.nonzero(near)[0]
            local = (xyz[idx] - t) @ R  # R^T (p - t)
            hit[idx[inside_primitives(local, prims, margin)]] = True
    return hit


def map_points_on_paths(results_dir: str | Path, sequence_dir: str | Path, margin: float = 0.03) -> dict:
    """Count a run's exported map points on the moving objects' paths.

    Returns {"points": total map points, "on_paths": count, "fraction": on_paths / points}."""
    from ..eval.ate import align_positions, associate
    from ..io.ply import read_ply
    from ..io.trajectory import read_tum

    results_dir, sequence_dir = Path(results_dir), Path(sequence_dir)
    obj_file = sequence_dir / "objects.json"
    if not obj_file.is_file():
        raise Mast3rSlamError(f"{obj_file}: no moving-object ground truth (only the synthetic 'dynamic' sequence has one)")
    objects = json.loads(obj_file.read_text())
    ply = read_ply(results_dir / "map.ply")
    xyz = np.stack([ply["x"], ply["y"], ply["z"]], 1).astype(np.float64) if "x" in ply else np.asarray(ply["xyz"], np.float64)
    t_est, P_est = read_tum(results_dir / "trajectory_keyframes.txt")
    t_gt, P_gt = read_tum(sequence_dir / "groundtruth.txt")
    i_gt, i_est = associate(np.asarray(t_gt, np.float64), np.asarray(t_est, np.float64))
    if len(i_gt) < 3:
        raise Mast3rSlamError(f"{results_dir}: fewer than 3 keyframes match the ground truth; cannot align the map")
    _, R, t, s = align_positions(P_est[i_est, :3], P_gt[i_gt, :3], "sim3")
    xyz_gt = s * xyz @ R.T + t
    on = points_on_paths(xyz_gt, objects, margin)
    n = int(len(xyz))
    return {"points": n, "on_paths": int(on.sum()), "fraction": float(on.sum() / max(n, 1)), "margin_m": margin}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mast3r_slam.eval.moving_objects", description=__doc__.split("\n\n")[0])
    ap.add_argument("results", help="results folder of a run (map.ply, trajectory_keyframes.txt)")
    ap.add_argument("sequence", help="the synthetic dynamic sequence folder (objects.json, groundtruth.txt)")
    ap.add_argument("--margin", type=float, default=0.03, help="grow the objects by this much (metres)")
    args = ap.parse_args(argv)
    try:
        print(json.dumps(map_points_on_paths(args.results, args.sequence, args.margin)))
    except Mast3rSlamError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
