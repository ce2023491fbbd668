"""Moving-object handling: the judgement of moved pixels, fusion that leaves them alone, the
stand-in prior's moving objects, and the map-on-paths metric (numbers, no runs)."""
import math

import numpy as np
import pytest
import torch

from mast3r_slam import dynamic
from mast3r_slam.config import DynamicConfig
from mast3r_slam.eval.moving_objects import inside_primitives, points_on_paths
from mast3r_slam.frame import Frame
from mast3r_slam.fusion import make_fusion
from mast3r_slam.lie import Sim3

H, W = 12, 16


def _scene(gen):
    """Keyframe points on a wall at 2-3 m, a frame displaced by a known Sim(3)."""
    v, u = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    z = 2.0 + 0.5 * torch.rand(H, W, generator=gen)
    X_k = torch.stack([(u - W / 2) / 10 * z, (v - H / 2) / 10 * z, z], -1).reshape(-1, 3)
    T_kf = Sim3.exp(torch.tensor([[0.05, -0.02, 0.03, 0.01, 0.02, -0.01, 0.0]]))
    X_f = Sim3.act(Sim3.inv(T_kf), X_k)  # the same points seen from the frame
    p = torch.stack([u.reshape(-1), v.reshape(-1)], -1) * 0.97 + 0.2  # matches (any positions inside)
    return X_k, X_f, T_kf, p


def test_static_points_within_noise_are_not_flagged():
    gen = torch.Generator().manual_seed(0)
    X_k, X_f, T, p = _scene(gen)
    X_f = X_f * (1 + 0.03 * torch.randn(X_f.shape[0], 1, generator=gen))  # 3 % depth noise
    cfg = DynamicConfig(border_px=0)
    J = dynamic.judge(cfg, T, X_f, X_k, p, torch.ones(H * W, dtype=torch.bool), H, W)
    assert J.judged.all()
    assert int(J.kf_hit.sum()) == 0 and int(J.frame_hit_q.sum()) == 0 and int(J.frame_mask.sum()) == 0


@pytest.mark.parametrize("kind", ["gone", "arrived", "lateral"])
def test_moved_points_are_flagged_on_the_right_side(kind):
    gen = torch.Generator().manual_seed(1)
    X_k, X_f, T, p = _scene(gen)
    moved = torch.zeros(H, W, dtype=torch.bool)
    moved[4:8, 4:9] = True  # a 4 x 5 blob
    moved = moved.reshape(-1)
    Xf = X_f.clone()
    if kind == "gone":  # the frame sees the wall 60 % farther behind where the keyframe saw an object
        Xf[moved] = Xf[moved] * 1.6
    elif kind == "arrived":  # an object 40 % nearer in the frame
        Xf[moved] = Xf[moved] * 0.6
    else:  # an object registered onto itself but moved sideways: 15 degrees about the camera, same range
        c, s_ = math.cos(math.radians(15)), math.sin(math.radians(15))
        Xf[moved] = Xf[moved] @ torch.tensor([[c, 0.0, s_], [0.0, 1.0, 0.0], [-s_, 0.0, c]]).T
    cfg = DynamicConfig(border_px=0, dilate_px=0)
    J = dynamic.judge(cfg, T, Xf, X_k, p, torch.ones(H * W, dtype=torch.bool), H, W)
    expect_kf = kind in ("gone", "lateral")
    expect_f = kind in ("arrived", "lateral")
    assert torch.equal(J.kf_hit, moved if expect_kf else torch.zeros_like(moved))
    assert torch.equal(J.frame_hit_q, moved if expect_f else torch.zeros_like(moved))
    if expect_f:  # scattered to the matched frame pixels (rounded positions)
        pu, pv = p[moved, 0].round().long(), p[moved, 1].round().long()
        want = torch.zeros(H * W, dtype=torch.bool)
        want[pv * W + pu] = True
        assert torch.equal(J.frame_mask, want)


def test_border_matches_are_not_judged():
    gen = torch.Generator().manual_seed(2)
    X_k, X_f, T, p = _scene(gen)
    J = dynamic.judge(DynamicConfig(border_px=2), T, X_f * 2.0, X_k, p, torch.ones(H * W, dtype=torch.bool), H, W)
    u, v = p[:, 0], p[:, 1]
    inner = (u >= 2) & (u <= W - 3) & (v >= 2) & (v <= H - 3)
    assert torch.equal(J.judged, inner)
    assert torch.equal(J.kf_hit, inner)  # everything moved 2x away: all judged pixels flagged


def test_votes_mark_a_keyframe_pixel_after_enough_frames():
    cfg = DynamicConfig(keyframe_votes=2, dilate_px=0)
    kf = Frame(frame_id=0, img=torch.zeros(1, 3, H, W), uimg=torch.zeros(H, W, 3), img_shape=(H, W), T_WC=Sim3.identity(1))
    hit = torch.zeros(H, W, dtype=torch.bool)
    hit[2:5, 3:6] = True
    hit = hit.reshape(-1)
    dynamic.add_votes(cfg, kf, hit, H, W)
    assert not kf.extras["dyn_mask"].any()
    dynamic.add_votes(cfg, kf, hit, H, W)
    assert torch.equal(kf.extras["dyn_mask"], hit)


def test_clean_removes_thin_lines_and_keeps_blobs():
    m = torch.zeros(H, W, dtype=torch.bool)
    m[1, :] = True  # a one-pixel line (an occlusion edge)
    m[5:9, 6:11] = True  # a blob with a one-pixel hole
    m[7, 8] = False
    out = dynamic.clean(m.reshape(-1), H, W).reshape(H, W)
    blob = torch.zeros(H, W, dtype=torch.bool)
    blob[5:9, 6:11] = True
    assert torch.equal(out, blob)


def test_grow_spreads_over_a_surface_but_not_across_depth_edges():
    z = torch.full((H, W), 3.0)
    z[3:9, 4:10] = 1.0  # an object 2 m in front of a wall
    seed = torch.zeros(H, W, dtype=torch.bool)
    seed[5, 6] = True
    out = dynamic.grow(seed.reshape(-1), z.reshape(-1), H, W, iters=20, tol=0.03).reshape(H, W)
    assert torch.equal(out, z < 2)  # the whole object, nothing of the wall


def test_dilate_grows_by_the_radius():
    m = torch.zeros(H * W, dtype=torch.bool)
    m[6 * W + 8] = True
    assert int(dynamic.dilate(m, H, W, 1).sum()) == 9 and int(dynamic.dilate(m, H, W, 2).sum()) == 25


@pytest.mark.parametrize("mode", ["weighted_pointmap", "recent", "indep_conf"])
def test_fusion_leaves_kept_pixels_alone(mode):
    fuse = make_fusion(mode)
    f = Frame(frame_id=0, img=torch.zeros(1, 3, H, W), uimg=torch.zeros(H, W, 3), img_shape=(H, W), T_WC=Sim3.identity(1))
    X0, C0 = torch.ones(H * W, 3), torch.full((H * W, 1), 2.0)
    fuse(f, X0, C0)
    keep = torch.zeros(H * W, dtype=torch.bool)
    keep[:10] = True
    fuse(f, torch.full((H * W, 3), 3.0), torch.full((H * W, 1), 4.0), keep)
    assert torch.equal(f.X_canon[:10], X0[:10]) and torch.equal(f.C[:10], C0[:10])
    assert not torch.allclose(f.X_canon[10:], X0[10:])  # the others were updated


def test_inside_primitives_and_points_on_paths():
    prims = [
        {"type": "box", "center": [0, 0, 0.5], "half_extents": [0.2, 0.1, 0.5]},
        {"type": "sphere", "center": [0, 0, 1.2], "radius": 0.1},
        {"type": "cylinder", "center": [1, 0, 0.5], "radius": 0.1, "half_height": 0.5},
    ]
    p = np.array([[0.19, 0.0, 0.5], [0.25, 0.0, 0.5], [0.0, 0.0, 1.28], [1.05, 0.05, 0.9], [1.2, 0.0, 0.5]])
    assert inside_primitives(p, prims, 0.0).tolist() == [True, False, True, True, False]
    assert inside_primitives(p, prims, 0.06).tolist() == [True, True, True, True, False]
    # an object sliding along x over three frames sweeps its path; floor points do not count
    doc = {"objects": [{"primitives": prims[:1], "poses_tum": [[x, 0, 0, 0, 0, 0, 1] for x in (0.0, 1.0, 2.0)]}]}
    pts = np.array([[1.0, 0.0, 0.6], [2.1, 0.05, 0.3], [1.5, 0.0, 0.5], [1.0, 0.0, 0.02], [1.0, 0.5, 0.5]])
    assert points_on_paths(pts, doc, margin=0.0).tolist() == [True, True, False, False, False]


def test_oracle_registers_moving_objects_onto_the_first_view():
    from mast3r_slam.datasets import load_dataset
    from mast3r_slam.frame import create_frame
    from mast3r_slam.priors.oracle import make_oracle_prior

    ds = load_dataset("synthetic:dynamic:64x48:40")
    cov = np.array(ds.moving_objects()["mask_coverage"])
    i = int(np.argmax(cov))
    j = max((k for k in (i - 2, i - 1, i + 1, i + 2) if 0 <= k < len(cov)), key=lambda k: cov[k])
    frames = [create_frame(k, ds[k].rgb, img_size=64, timestamp=ds[k].timestamp) for k in (i, j)]
    dist = {}
    for mode in ("registered", "physical"):
        pr = make_oracle_prior(ds, {"exact": True, "img_size": 64, "moving_objects": mode})
        lab = pr.frame_data(frames[1]).obj_label
        assert (lab >= 0).sum() > 20
        assert abs(float((pr.frame_data(frames[0]).obj_label >= 0).float().mean()) - cov[i]) < 0.02  # labels = GT mask
        a, b = pr.asymmetric(frames[0], frames[1])
        dist[mode] = float(torch.cdist(b.X[lab >= 0], a.X).min(1).values.median())
    assert dist["registered"] < 0.02  # the object's view-2 points sit on its view-1 surface
    assert dist["physical"] > 0.05  # ... or where the object was at view 2's time
