"""Absolute trajectory error (ATE) of an estimated trajectory against ground truth.

Protocol (the same numbers as ``evo_ape tum GT EST -as``):

1. Timestamps of both sides are converted to seconds (nanosecond stamps, e.g. EuRoC, are
   divided by 1e9 on the side that has them).
2. Association, evo's rule: every pose of the trajectory with FEWER poses (the estimate when
   both have as many) is paired with the nearest-in-time pose of the other within ``max_diff``
   (0.01 s); poses without a partner are dropped. When both sides are sampled more than
   2 * max_diff apart this is one-to-one.
3. Alignment of the estimated positions onto the ground truth with Umeyama
   (:func:`mast3r_slam.lie.umeyama`): ``sim3`` (rotation, translation, scale; default, for
   monocular runs), ``se3`` (no scale; calibrated runs) or ``none``.
4. Errors are the distances between aligned estimated and ground-truth positions; the result
   holds rmse, mean, median, std, min, max, sse and counts. The inputs are never modified.

Command line::

    python -m mast3r_slam.eval.ate EST.txt --gt GT.txt [--align sim3|se3|none] [--max-diff 0.01]
    python -m mast3r_slam.eval.ate EST.txt --dataset SEQUENCE [--metrics metrics.json --key keyframes]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import Mast3rSlamError
from ..io.trajectory import read_trajectory, timestamps_to_seconds
from ..lie import umeyama

ALIGN_MODES = ("sim3", "se3", "none")
DEFAULT_MAX_DIFF = 0.01


def _load(traj, what: str) -> tuple[np.ndarray, np.ndarray]:
    """A trajectory file path, or (timestamps [N], poses [N, 3+]) -> (seconds [N], positions [N, 3])."""
    if isinstance(traj, (str, Path)):
        stamps, poses = read_trajectory(traj)
    elif isinstance(traj, (tuple, list)) and len(traj) == 2:
        stamps, poses = traj
        if isinstance(poses, torch.Tensor):
            poses = poses.detach().cpu().double().numpy()
        poses = np.asarray(poses, dtype=np.float64)
        if isinstance(stamps, torch.Tensor):
            stamps = stamps.detach().cpu().numpy()
        stamps = list(stamps) if not isinstance(stamps, np.ndarray) else stamps
    else:
        raise TypeError(f"{what}: expected a file path or (timestamps, poses), got {type(traj).__name__}")
    if poses.ndim != 2 or poses.shape[1] < 3 or len(poses) != len(stamps):
        raise Mast3rSlamError(f"ATE: {what} must be N timestamps and [N, 3+] poses, got {len(stamps)} and {poses.shape}")
    if isinstance(stamps, np.ndarray) and stamps.dtype.kind == "f":
        t = stamps.astype(np.float64)
        if t.size and np.abs(t).max() > 1e14:
            t = t / 1e9
    else:
        t = timestamps_to_seconds(stamps)
    return t, poses[:, :3]


def associate(t_ref: np.ndarray, t_est: np.ndarray, max_diff: float = DEFAULT_MAX_DIFF) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i_ref [K], i_est [K]) by nearest timestamp within ``max_diff`` (evo's rule).

    Vectorised: the shorter side's stamps are looked up in the longer side with searchsorted;
    ties go to the earlier stamp.
    """
    t_ref = np.asarray(t_ref, dtype=np.float64)
    t_est = np.asarray(t_est, dtype=np.float64)
    est_is_short = not (len(t_est) > len(t_ref))
    short, long_ = (t_est, t_ref) if est_is_short else (t_ref, t_est)
    if len(short) == 0 or len(long_) == 0:
        e = np.zeros(0, dtype=np.int64)
        return e, e
    order = np.argsort(long_, kind="stable")
    L = long_[order]
    j = np.clip(np.searchsorted(L, short, side="right"), 0, len(L) - 1)
    diff_ub = L[j] - short
    diff_lb = np.where(j > 0, short - L[np.maximum(j - 1, 0)], np.inf)
    in_range = (short >= L[0] - max_diff) & (short <= L[-1] + max_diff)
    take_ub = (diff_ub <= max_diff) & (diff_ub < diff_lb)
    take_lb = ~take_ub & (diff_lb <= max_diff) & (diff_lb <= diff_ub)
    ok = in_range & (take_ub | take_lb)
    best = np.where(take_ub, j, j - 1)
    i_short = np.nonzero(ok)[0]
    i_long = order[best[ok]]
    return (i_long, i_short) if est_is_short else (i_short, i_long)


def align_positions(
    p_est: np.ndarray,  # [K, 3]
    p_ref: np.ndarray,  # [K, 3]
    align: str = "sim3",
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(aligned estimate [K, 3], R [3, 3], t [3], s) mapping the estimate onto the reference."""
    if align not in ALIGN_MODES:
        raise Mast3rSlamError(f"ATE: unknown alignment '{align}', expected one of {', '.join(ALIGN_MODES)}")
    if align == "none":
        return p_est.copy(), np.eye(3), np.zeros(3), 1.0
    try:
        R, t, s = umeyama(torch.from_numpy(p_est), torch.from_numpy(p_ref), with_scale=(align == "sim3"))
    except ValueError as e:
        raise Mast3rSlamError(f"ATE: cannot align the trajectories ({e})") from None
    R, t, s = R.numpy(), t.numpy(), float(s)
    return s * p_est @ R.T + t, R, t, s


def compute_ate(
    gt_path_or_arrays,
    est_path_or_arrays,
    align: str = "sim3",
    max_diff: float = DEFAULT_MAX_DIFF,
) -> dict:
    """ATE statistics (metres) of the estimate against the ground truth.

    Each side is a TUM/EuRoC trajectory file or ``(timestamps [N], poses [N, 7] or positions
    [N, 3])``; timestamps may be strings or numbers, in seconds or nanoseconds.
    Returns {rmse, mean, median, std, min, max, sse, n_matched, n_est, n_gt, align, scale,
    max_diff}.
    """
    t_gt, p_gt = _load(gt_path_or_arrays, "ground truth")
    t_est, p_est = _load(est_path_or_arrays, "estimate")
    i_gt, i_est = associate(t_gt, t_est, max_diff)
    if len(i_gt) == 0:
        raise Mast3rSlamError(
            f"ATE: no matching timestamps between ground truth ({len(t_gt)} poses) and estimate ({len(t_est)} poses) "
            f"within {max_diff} s"
        )
    min_pairs = 3 if align != "none" else 1
    if len(i_gt) < min_pairs:
        raise Mast3rSlamError(f"ATE: only {len(i_gt)} matched poses, need at least {min_pairs} to align with {align}")
    ref, est = p_gt[i_gt], p_est[i_est]
    est_aligned, R, t, s = align_positions(est, ref, align)
    err = np.linalg.norm(est_aligned - ref, axis=1)
    return {
        "rmse": float(np.sqrt(np.mean(err**2))),
        "mean": float(np.mean(err)),
        "median": float(np.median(err)),
        "std": float(np.std(err)),
        "min": float(np.min(err)),
        "max": float(np.max(err)),
        "sse": float(np.sum(err**2)),
        "n_matched": int(len(err)),
        "n_est": int(len(t_est)),
        "n_gt": int(len(t_gt)),
        "align": align,
        "scale": s,
        "max_diff": max_diff,
    }


def dataset_groundtruth(dataset):
    """What to evaluate a dataset's run against: its ground-truth file as published when there
    is one (TUM, ETH3D, EuRoC), else its ground-truth arrays (7-Scenes, synthetic), else None."""
    p = dataset.groundtruth_path()
    if p is not None:
        return p
    return dataset.groundtruth()


# ---- command line ----------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mast3r_slam.eval.ate", description="ATE RMSE after Umeyama alignment (as evo_ape -as).")
    ap.add_argument("estimate", help="estimated trajectory (TUM format)")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--gt", help="ground-truth trajectory file (TUM or EuRoC layout)")
    src.add_argument("--dataset", help="sequence whose ground truth to use (any --dataset accepted by main.py)")
    ap.add_argument("--align", choices=ALIGN_MODES, default="sim3")
    ap.add_argument("--max-diff", type=float, default=DEFAULT_MAX_DIFF, help="association tolerance in seconds (default 0.01)")
    ap.add_argument("--metrics", help="merge the result into this metrics.json under ate.<key>")
    ap.add_argument("--key", default="keyframes", help="name of the result inside metrics.json 'ate' (default: keyframes)")
    args = ap.parse_args(argv)
    try:
        if args.gt is not None:
            gt = args.gt
        else:
            from ..datasets import load_dataset

            gt = dataset_groundtruth(load_dataset(args.dataset))
            if gt is None:
                raise Mast3rSlamError(f"{args.dataset}: the sequence has no ground truth")
        res = compute_ate(gt, args.estimate, args.align, args.max_diff)
    except Mast3rSlamError as e:
        sys.stderr.write(f"error: {e}\n")
        return 1
    print(f"ATE rmse {res['rmse']:.6f} m  (mean {res['mean']:.6f}, median {res['median']:.6f}, max {res['max']:.6f}; "
          f"{res['n_matched']} poses, align {res['align']}, scale {res['scale']:.4f})")  # fmt: skip
    if args.metrics:
        p = Path(args.metrics)
        data = json.loads(p.read_text()) if p.is_file() else {}
        data.setdefault("ate", {})[args.key] = res
        from ..io.atomic import atomic_write_text

        atomic_write_text(p, json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
