"""Synthetic sequences: determinism, TUM layout, depth/pose consistency and the trajectories' events."""
import threading

import cv2
import numpy as np
import pytest

from mast3r_slam.datasets import load_dataset
from mast3r_slam.datasets.calib import load_calibration
from mast3r_slam.errors import DatasetError
from mast3r_slam.priors.oracle import pose7_to_matrix
from mast3r_slam.synthetic import sequence as seq

LOOP = "synthetic:loop:96x72:60"  # same specs as tests/priors: generated once per session
FAST = "synthetic:fast_turn:64x48:50"
LOST = "synthetic:lost:64x48:40"
DYN = "synthetic:dynamic:96x72:60"


def _rot_deg(R):
    return float(np.degrees(np.arccos(np.clip((np.trace(R) - 1) / 2, -1, 1))))


def _rel(ds, i, j):
    return np.linalg.inv(pose7_to_matrix(ds[i].T_WC_gt)) @ pose7_to_matrix(ds[j].T_WC_gt)


def _backproject(depth, K):
    H, W = depth.shape
    v, u = np.mgrid[0:H, 0:W]
    return np.stack([(u - K[0, 2]) / K[0, 0] * depth, (v - K[1, 2]) / K[1, 1] * depth, depth], -1).reshape(-1, 3)


def test_parse_spec():
    s = seq.parse_spec("synthetic:loop:128x96:60:seed=2")
    assert (s.name, s.width, s.height, s.frames, s.seed) == ("loop", 128, 96, 60, 2)
    assert s.folder_name == "loop_128x96_60_s2"
    d = seq.parse_spec("synthetic:fast_turn")
    assert (d.width, d.height, d.frames) == (320, 240, 120)
    for bad in ("synthetic:", "synthetic:spiral", "synthetic:loop:12x", "synthetic:loop:1", "synthetic:loop:8x8"):
        with pytest.raises(DatasetError, match="--dataset"):
            seq.parse_spec(bad)


def test_generation_is_deterministic(tmp_path):
    spec = seq.parse_spec("synthetic:dynamic:40x30:4")
    a, b = tmp_path / "a", tmp_path / "b"
    seq.write_sequence(spec, a, progress=False)
    seq.write_sequence(spec, b, progress=False)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 4 * 3 + 6  # rgb, depth, masks + 6 text files
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f


def test_tum_layout_and_registry(make_seq, synthetic_root, monkeypatch):
    ds = make_seq(LOOP)
    root = ds.path
    assert root.parent == synthetic_root and root.name == "loop_96x72_60"
    rgb_lines = [ln for ln in (root / "rgb.txt").read_text().splitlines() if not ln.startswith("#")]
    assert rgb_lines[0] == "0.000000 rgb/0.000000.png" and rgb_lines[1] == "0.033333 rgb/0.033333.png"
    assert len(rgb_lines) == 60 and ds.timestamps[59] == "1.966667"
    d16 = cv2.imread(str(root / "depth" / "0.000000.png"), cv2.IMREAD_UNCHANGED)
    assert d16.dtype == np.uint16 and d16.shape == (72, 96)
    s = ds[0]
    np.testing.assert_allclose(s.depth, d16 / 5000.0, atol=1e-6)
    gt_t, gt_p = ds.groundtruth()
    assert gt_p.shape == (60, 7) and abs(gt_t[1] - 1 / 30) < 1e-6
    assert ds.groundtruth_path() == root / "groundtruth.txt"
    np.testing.assert_allclose(np.linalg.norm(gt_p[:, 3:], axis=1), 1, atol=1e-8)
    calib = load_calibration(root / "calibration.yaml")
    assert (calib.width, calib.height) == (96, 72) and calib.cx == 47.5 and calib.cy == 35.5
    np.testing.assert_allclose(ds.K, calib.K)
    # pinhole, no distortion: calibrated mode keeps the same K
    monkeypatch.setenv("MAST3R_SLAM_CACHE", str(synthetic_root))
    ds2 = load_dataset(LOOP, use_calib=True)
    np.testing.assert_allclose(ds2.K, calib.K, atol=1e-6)
    assert np.array_equal(ds2[3].rgb, ds[3].rgb)
    assert ds.name == "synthetic_loop_96x72_60"


def test_depth_and_colour_consistent_across_views(make_seq):
    ds = make_seq(LOOP)
    K = ds.K
    H, W = 72, 96
    errs, cerrs = [], []
    for i in range(0, 55, 9):
        j = i + 2
        a, b = ds[i], ds[j]
        T = np.linalg.inv(pose7_to_matrix(b.T_WC_gt)) @ pose7_to_matrix(a.T_WC_gt)  # a -> b
        P = _backproject(a.depth, K) @ T[:3, :3].T + T[:3, 3]
        u = np.rint(K[0, 0] * P[:, 0] / P[:, 2] + K[0, 2]).astype(int)
        v = np.rint(K[1, 1] * P[:, 1] / P[:, 2] + K[1, 2]).astype(int)
        ok = (u >= 1) & (u < W - 1) & (v >= 1) & (v < H - 1) & (P[:, 2] > 0)
        zb = b.depth[np.clip(v, 0, H - 1), np.clip(u, 0, W - 1)]
        rel = np.abs(zb - P[:, 2]) / P[:, 2]
        co = ok & (rel < 0.05)
        assert co.mean() > 0.5, f"frames {i},{j} overlap only {co.mean():.2f}"
        errs.append(np.median(rel[co]))
        ca = a.rgb.reshape(-1, 3)[co].astype(float)
        cb = b.rgb[v[co], u[co]].astype(float)
        cerrs.append(np.median(np.abs(ca - cb)))
    assert max(errs) < 0.01, errs  # median depth error < 1 %
    assert max(cerrs) < 12, cerrs  # median colour error (8-bit levels) at nearest-pixel resolution


def test_loop_returns_to_start_and_moves_smoothly(make_seq):
    ds = make_seq(LOOP)
    T = _rel(ds, 0, 59)
    assert np.linalg.norm(T[:3, 3]) < 0.01 and _rot_deg(T[:3, :3]) < 1.0
    steps = [_rel(ds, i, i + 1) for i in range(59)]
    trans = np.array([np.linalg.norm(s[:3, 3]) for s in steps])
    rot = np.array([_rot_deg(s[:3, :3]) for s in steps])
    # 60 frames here; at the default 150 frames the steps are 2.5x smaller: <= 6.5 cm and <= 4.5 deg
    f = 60 / 150
    assert trans.max() * f < 0.065 and rot.max() * f < 4.5, (trans.max() * f, rot.max() * f)
    lo, hi = ds.meta["depth_range_m"]
    assert 0.3 < lo < 0.8 and 3.0 < hi < 7.0
    # the lap visits every direction: headings cover 360 deg
    heads = np.array([pose7_to_matrix(ds[i].T_WC_gt)[:2, 2] for i in range(60)])
    ang = np.sort(np.degrees(np.arctan2(heads[:, 1], heads[:, 0])))
    assert np.max(np.diff(np.concatenate([ang, ang[:1] + 360]))) < 20


def test_fast_turn_has_intended_angular_speed(make_seq):
    ds = make_seq(FAST)
    ev = ds.events["fast_turn"]
    assert (ev["start"], ev["end"], ev["deg_per_frame"]) == (14, 29, 12.0)
    rot = np.array([_rot_deg(_rel(ds, i, i + 1)[:3, :3]) for i in range(len(ds) - 1)])
    trans = np.array([np.linalg.norm(_rel(ds, i, i + 1)[:3, 3]) for i in range(len(ds) - 1)])
    turn = rot[ev["start"] - 1 : ev["end"] - 1]
    np.testing.assert_allclose(turn, 12.0, atol=0.05)
    assert trans[ev["start"] - 1 : ev["end"] - 1].max() < 1e-6  # in place
    assert np.delete(rot, np.arange(ev["start"] - 1, ev["end"] - 1)).max() < 1.0
    assert abs(sum(turn) - 180.0) < 0.5


def test_lost_has_black_frames_and_a_jump_back(make_seq):
    ds = make_seq(LOST)
    ev = ds.events
    black, jump, target = ev["black_frames"], ev["jump_frame"], ev["jump_target_frame"]
    assert black == [24, 25, 26, 27, 28] and jump == 29
    for i in black:
        s = ds[i]
        assert s.rgb.max() == 0 and s.depth.max() == 0
    assert ds[23].rgb.std() > 10 and ds[jump].rgb.std() > 10
    J = _rel(ds, jump - 1, jump)
    assert np.linalg.norm(J[:3, 3]) > 0.5 or _rot_deg(J[:3, :3]) > 45  # a sudden jump
    B = _rel(ds, target, jump)  # back to a viewpoint seen before the loss
    assert target < black[0] and np.linalg.norm(B[:3, 3]) < 0.15 and _rot_deg(B[:3, :3]) < 6


def test_dynamic_masks_match_moving_objects(make_seq):
    ds = make_seq(DYN)
    objs = ds.moving_objects()
    assert [o["name"] for o in objs["objects"]] == ["figure", "cart"]
    cov = np.array(objs["mask_coverage"])
    assert cov.max() > 0.2 and (cov > 0.1).sum() >= 5  # crossing the view, a large part of the image
    K = ds.K
    checked = 0
    for i in np.nonzero(cov > 0.05)[0][::3]:
        s = ds[i]
        m = ds.dynamic_mask(i)
        assert abs(m.mean() - cov[i]) < 1e-6
        Xw = _backproject(s.depth, K) @ pose7_to_matrix(s.T_WC_gt)[:3, :3].T + s.T_WC_gt[:3]
        centres = np.array([o["poses_tum"][i][:2] for o in objs["objects"]])  # object positions (xy)
        d = np.linalg.norm(Xw[:, None, :2] - centres[None], axis=2).min(1)
        inside = m.reshape(-1)
        assert np.percentile(d[inside], 99) < 0.5  # masked points lie on an object
        assert np.mean(d[~inside] < 0.15) < 0.01  # unmasked points (almost) never do
        checked += 1
    assert checked >= 3


def test_cache_reuse_and_concurrent_generation(tmp_path):
    spec = seq.parse_spec("synthetic:loop:32x24:3")
    paths = []
    threads = [threading.Thread(target=lambda: paths.append(seq.ensure_sequence(spec, tmp_path, progress=False))) for _ in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(paths) == 2 and paths[0] == paths[1] == tmp_path / "loop_32x24_3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loop_32x24_3"]  # no temporary leftovers
    meta = paths[0] / "meta.json"
    mtime = meta.stat().st_mtime_ns
    assert seq.ensure_sequence(spec, tmp_path) == paths[0] and meta.stat().st_mtime_ns == mtime
    meta.write_text(meta.read_text().replace('"generator_version": 1', '"generator_version": 0'))
    seq.ensure_sequence(spec, tmp_path)  # stale version -> regenerated
    assert seq.read_meta(paths[0])["generator_version"] == seq.GENERATOR_VERSION
