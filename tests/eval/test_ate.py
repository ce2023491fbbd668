"""ATE: association, Umeyama alignment, statistics, evo cross-check, command lines."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from mast3r_slam.errors import Mast3rSlamError
from mast3r_slam.eval.ate import associate, compute_ate, main as ate_main
from mast3r_slam.eval.table import main as table_main
from mast3r_slam.io.trajectory import interpolate_poses, read_tum, timestamps_to_seconds, write_tum

DATA = Path(__file__).resolve().parents[1] / "data"
TUM = DATA / "tum_fr1_rpy"


def _sim3_apply(P, q, t, s):
    return s * P @ Rotation.from_quat(q).as_matrix().T + t


def _trajectory(n=60, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(n) * 0.1 + 100.0
    P = np.cumsum(rng.normal(scale=0.1, size=(n, 3)), axis=0)
    Q = Rotation.random(n, random_state=seed).as_quat()
    return t, np.concatenate([P, Q], 1)


def test_recovers_known_sim3_exactly():
    t, gt = _trajectory()
    q = Rotation.from_euler("xyz", [20, -35, 70], degrees=True).as_quat()
    est = gt.copy()
    est[:, :3] = _sim3_apply(gt[:, :3], q, [1.0, -2.0, 0.5], 1.234)
    res = compute_ate((t, gt), (t, est))
    assert res["rmse"] < 1e-9 and res["max"] < 1e-9
    assert res["scale"] == pytest.approx(1 / 1.234, rel=1e-9)
    assert res["n_matched"] == 60 and res["align"] == "sim3"
    # without scale the error does not vanish; without alignment it is large
    assert compute_ate((t, gt), (t, est), align="se3")["rmse"] > 0.01
    assert compute_ate((t, gt), (t, est), align="none")["rmse"] > 1.0


def test_statistics_of_known_errors():
    t, gt = _trajectory(n=8)
    est = gt.copy()
    # offsets along x with zero mean and no rotation/scale component left for alignment to absorb
    d = np.array([0.1, -0.1, 0.2, -0.2, 0.0, 0.0, 0.3, -0.3])
    est[:, 0] += d
    res = compute_ate((t, gt), (t, est), align="none")
    assert res["rmse"] == pytest.approx(np.sqrt(np.mean(d**2)))
    assert res["mean"] == pytest.approx(np.mean(np.abs(d)))
    assert res["median"] == pytest.approx(np.median(np.abs(d)))
    assert res["max"] == pytest.approx(0.3) and res["min"] == 0.0
    assert res["sse"] == pytest.approx(np.sum(d**2))


def test_association_rule():
    t_gt = np.arange(0, 1.0, 0.03)  # 34 stamps
    t_est = np.array([0.004, 0.031, 0.505, 0.6049, 0.695, 0.715, 2.0])  # 0.715 -> 0.72; 2.0: no partner
    i_gt, i_est = associate(t_gt, t_est, 0.01)
    assert list(i_est) == [0, 1, 2, 3, 4, 5]
    np.testing.assert_allclose(t_gt[i_gt], [0.0, 0.03, 0.51, 0.6, 0.69, 0.72])
    i_gt, i_est = associate(t_gt, np.array([0.045, 0.046]), 0.01)  # 0.015 from both neighbours
    assert len(i_gt) == 0
    # tie: exactly between two stamps -> the earlier one
    i_gt, i_est = associate(np.array([0.0, 0.02]), np.array([0.01]), 0.01)
    assert list(i_gt) == [0]
    # the shorter side drives the search (here the ground truth)
    i_gt, i_est = associate(np.array([0.5]), np.arange(0, 1, 0.001), 0.01)
    assert list(i_gt) == [0] and list(i_est) == [500]


def test_nanosecond_timestamps_on_one_side():
    t, gt = _trajectory()
    t = t + 1403715274.0
    ns = [str(int(round(x * 1e6)) * 1000) for x in t]  # EuRoC-style nanoseconds on the estimate side
    res = compute_ate((t, gt), (ns, gt), align="se3")
    assert res["n_matched"] == 60 and res["rmse"] < 1e-9


def test_errors_are_one_line():
    t, gt = _trajectory()
    with pytest.raises(Mast3rSlamError, match="no matching timestamps"):
        compute_ate((t, gt), (t + 100, gt))
    with pytest.raises(Mast3rSlamError, match="only 2 matched poses"):
        compute_ate((t, gt), (t[:2], gt[:2]))
    line = np.zeros((10, 7))
    line[:, 0] = np.arange(10)
    with pytest.raises(Mast3rSlamError, match="cannot align"):
        compute_ate((np.arange(10.0), line), (np.arange(10.0), line))
    with pytest.raises(Mast3rSlamError, match="unknown alignment"):
        compute_ate((t, gt), (t, gt), align="affine")


def _estimate_from_gt(tmp_path, stamps, seed=1):
    """An estimate at the given (string) stamps: interpolated ground truth, Sim(3)-moved, noisy."""
    gts, gtp = read_tum(TUM / "groundtruth.txt")
    P, ok = interpolate_poses(timestamps_to_seconds(gts), gtp, timestamps_to_seconds(stamps))
    stamps = [s for s, k in zip(stamps, ok) if k]
    P = P[ok]
    rng = np.random.default_rng(seed)
    q = Rotation.from_euler("xyz", [5, 40, -10], degrees=True).as_quat()
    P[:, :3] = _sim3_apply(P[:, :3], q, [0.3, 0.2, -1.0], 0.37) + rng.normal(scale=0.01, size=(len(P), 3))
    p = tmp_path / "est.txt"
    write_tum(p, stamps, P)
    return p


def _evo_rmse(gt_path, est_path):
    evo_sync = pytest.importorskip("evo.core.sync")
    from evo.core.metrics import PoseRelation
    from evo.main_ape import ape
    from evo.tools import file_interface

    ref = file_interface.read_tum_trajectory_file(str(gt_path))
    est = file_interface.read_tum_trajectory_file(str(est_path))
    ref, est = evo_sync.associate_trajectories(ref, est, max_diff=0.01)
    res = ape(copy.deepcopy(ref), copy.deepcopy(est), pose_relation=PoseRelation.translation_part, align=True, correct_scale=True)
    return res.stats


def test_matches_evo_on_tum_frames(tmp_path):
    pytest.importorskip("evo")
    rgb = [ln.split()[0] for ln in (TUM / "rgb.txt").read_text().splitlines() if ln and ln[0] != "#"]
    est = _estimate_from_gt(tmp_path, rgb)  # estimate shorter than the ground truth
    ours = compute_ate(TUM / "groundtruth.txt", est)
    theirs = _evo_rmse(TUM / "groundtruth.txt", est)
    assert ours["n_matched"] == 20
    assert ours["rmse"] == pytest.approx(theirs["rmse"], abs=1e-6)
    assert ours["mean"] == pytest.approx(theirs["mean"], abs=1e-6)
    assert ours["max"] == pytest.approx(theirs["max"], abs=1e-6)
    assert 0.003 < ours["rmse"] < 0.03


def test_matches_evo_when_estimate_is_longer(tmp_path):
    pytest.importorskip("evo")
    gts, gtp = read_tum(TUM / "groundtruth.txt")
    sparse = tmp_path / "gt_sparse.txt"
    write_tum(sparse, gts[::7], gtp[::7])  # ground truth shorter than the estimate
    est = _estimate_from_gt(tmp_path, [f"{float(s) + 0.003:.4f}" for s in gts], seed=2)
    ours = compute_ate(sparse, est)
    theirs = _evo_rmse(sparse, est)
    assert ours["n_matched"] == len(gts[::7]) == 38 and ours["n_est"] == 263  # the last stamp + 3 ms is past the ground truth
    assert ours["rmse"] == pytest.approx(theirs["rmse"], abs=1e-6)


def test_ate_and_table_command_lines(tmp_path, capsys):
    rgb = [ln.split()[0] for ln in (TUM / "rgb.txt").read_text().splitlines() if ln and ln[0] != "#"]
    est = _estimate_from_gt(tmp_path, rgb)
    run = tmp_path / "results" / "tum" / "calib" / "seq_b"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"frames": 20, "keyframes": 5, "fps": 10.0, "prior": "oracle"}))
    assert ate_main([str(est), "--dataset", str(TUM), "--metrics", str(run / "metrics.json")]) == 0
    m = json.loads((run / "metrics.json").read_text())
    assert m["frames"] == 20 and m["ate"]["keyframes"]["rmse"] == pytest.approx(compute_ate(TUM / "groundtruth.txt", est)["rmse"])
    run2 = tmp_path / "results" / "tum" / "calib" / "seq_a"
    run2.mkdir()
    (run2 / "metrics.json").write_text(json.dumps({"frames": 10, "keyframes": 3, "fps": 20.0, "prior": "mast3r", "ate": {"keyframes": {"rmse": 0.05}}}))
    capsys.readouterr()
    assert table_main([str(tmp_path / "results" / "tum" / "calib")]) == 0
    out = capsys.readouterr().out
    md, csv_text = out.split("\n\n")
    lines = md.splitlines()
    assert lines[0] == "| sequence | ate_kf_rmse_m | ate_frames_rmse_m | frames | keyframes | fps | prior |"
    assert lines[2] == "| seq_a | 0.0500 |  | 10 | 3 | 20.00 | mast3r |"
    assert lines[3].startswith("| seq_b | 0.0")
    kf_b = m["ate"]["keyframes"]["rmse"]
    assert lines[4] == f"| mean (2 runs) | {(0.05 + kf_b) / 2:.4f} |  | 15.0 | 4.0 | 15.00 |  |"
    assert csv_text.splitlines()[1] == "seq_a,0.05,,10,3,20.0,mast3r"
    assert table_main([str(tmp_path / "nothing")]) == 1
    assert ate_main([str(est), "--gt", str(tmp_path / "missing.txt")]) == 1
