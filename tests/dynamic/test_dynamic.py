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

H, W = 48, 64
F_PX = 50.0  # focal length (pixels)
K4 = torch.tensor([F_PX, F_PX, (W - 1) / 2, (H - 1) / 2])


def _render(R: torch.Tensor, c: torch.Tensor, box_x: float) -> torch.Tensor:
    """Pointmap [HW, 3] (camera frame) of a wall at z = 3 m and a 0.6 x 0.8 m board at z = 1.5 m
    centred at x = box_x (world = keyframe camera frame), seen from a camera at c with rotation R."""
    v, u = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    d_cam = torch.stack([(u - K4[2]) / F_PX, (v - K4[3]) / F_PX, torch.ones_like(u)], -1).reshape(-1, 3)
    d = d_cam @ R.T  # world directions
    t_box = (1.5 - c[2]) / d[:, 2]
    hit = c + t_box[:, None] * d
    on_box = ((hit[:, 0] - box_x).abs() <= 0.3) & (hit[:, 1].abs() <= 0.4)
    t = torch.where(on_box, t_box, (3.0 - c[2]) / d[:, 2])
    return (t[:, None] * d_cam).float(), on_box  # camera-frame point = t * camera direction


def _pair(shift: float, box_move: float, noise: float = 0.0, seed: int = 0):
    """Keyframe at the origin, frame translated by ``shift`` along x (parallax); the board moves by
    ``box_move`` between the two times. Returns the judgement and the true board masks."""
    ang = math.radians(2.0)
    R = torch.tensor([[math.cos(ang), 0, math.sin(ang)], [0, 1, 0], [-math.sin(ang), 0, math.cos(ang)]], dtype=torch.float64)
    c = torch.tensor([shift, 0.05, -0.1], dtype=torch.float64)
    X_k, box_k = _render(torch.eye(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), 0.0)
    X_f, box_f = _render(R, c, box_move)
    if noise:  # smooth depth error of std ``noise`` (different in the two views) + 0.3 % per pixel
        gen = torch.Generator().manual_seed(seed)
        for X in (X_k, X_f):
            a, b = torch.rand(2, generator=gen) * 6.28
            v, u = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
            smooth = (torch.sin(u / 9.0 + a) * torch.cos(v / 7.0 + b)).reshape(-1, 1) * 2 * noise
            X *= 1 + smooth + 0.003 * torch.randn(H * W, 1, generator=gen)
    T = torch.eye(4, dtype=torch.float64)
    T[:3, :3], T[:3, 3] = R, c
    T_kf = Sim3.from_matrix(T[None].float())  # keyframe <- frame
    ok = torch.ones(H * W, dtype=torch.bool)
    J = dynamic.judge(DynamicConfig(enabled=True), T_kf, X_f, X_k, K4, K4, ok, ok, H, W)
    return J, box_f, box_k


def test_static_scene_with_parallax_occlusions_is_not_flagged():
    for shift in (0.1, 0.3):  # the board hides different parts of the wall in the two views
        J, _, _ = _pair(shift, box_move=0.0, noise=0.02, seed=int(10 * shift))
        assert int(J.frame_mask.sum()) == 0 and int(J.kf_hit.sum()) == 0
        assert J.judged_f.float().mean() > 0.5 and J.judged_k.float().mean() > 0.5


def test_moved_board_is_flagged_in_both_views():
    J, box_f, box_k = _pair(0.1, box_move=0.7, noise=0.01)
    # the frame sees the board where the keyframe saw the wall: it arrived
    inter = (J.frame_mask & box_f).sum().item()
    assert inter >= 0.9 * box_f.sum().item()
    assert not (J.frame_mask & ~dynamic.dilate(box_f, H, W, 1)).any()  # nothing beyond the 1-pixel dilation
    # the keyframe's board points are in front of the wall the frame sees now: gone (where not
    # hidden behind the board's new position)
    gone = box_k & ~J.kf_hit
    assert J.kf_hit[box_k].float().mean() > 0.6 and not (J.kf_hit & ~box_k).any()
    assert gone.sum() < box_k.sum()


def test_pinhole_fit_recovers_the_focal_length():
    X, _ = _render(torch.eye(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), 0.0)
    k = dynamic.pinhole(X, H, W)
    assert abs(float(k[0]) - F_PX) < 1e-3 and abs(float(k[2]) - (W - 1) / 2) < 1e-9


def test_votes_mark_a_keyframe_pixel_after_enough_frames():
    cfg = DynamicConfig(enabled=True, keyframe_votes=2, dilate_px=0)
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
    out = dynamic.grow(seed.reshape(-1), z.reshape(-1), H, W, iters=20, tol=0.03)
    obj = (z < 2).reshape(-1)
    assert not (out & ~obj).any()  # nothing of the wall
    assert (out | ~dynamic.erode(obj, H, W, 1)).all()  # the object but its 1-pixel edge (the dilation adds it back)


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
    dist, preds = {}, {}
    for mode in ("registered", "physical", "masked"):
        pr = make_oracle_prior(ds, {"exact": True, "img_size": 64, "moving_objects": mode})
        lab = pr.frame_data(frames[1]).obj_label
        assert (lab >= 0).sum() > 20
        assert abs(float((pr.frame_data(frames[0]).obj_label >= 0).float().mean()) - cov[i]) < 0.02  # labels = GT mask
        a, b = preds[mode] = pr.asymmetric(frames[0], frames[1])
        dist[mode] = float(torch.cdist(b.X[lab >= 0], a.X).min(1).values.median())
    assert dist["registered"] < 0.02  # the object's view-2 points sit on its view-1 surface
    assert dist["physical"] > 0.05  # ... or where the object was at view 2's time
    # "masked" (perfect handling): registered geometry, object pixels at the lowest confidence
    lab1, lab2 = (pr.frame_data(f).obj_label >= 0 for f in frames)
    (ra, rb), (ma, mb) = preds["registered"], preds["masked"]
    assert torch.equal(ma.X, ra.X) and torch.equal(mb.X, rb.X)
    for lab, m, r in ((lab1, ma, ra), (lab2, mb, rb)):
        assert bool((m.C[lab] == 1.0).all()) and bool((m.Q[lab] == 0.0).all())
        assert torch.equal(m.C[~lab], r.C[~lab]) and torch.equal(m.Q[~lab], r.Q[~lab])
        assert float(r.Q[lab].mean()) > 0.5 and float(r.C[lab].mean()) > 1.5  # what the mask took away


def _keyframe(X, T, fid):
    return Frame(frame_id=fid, img=torch.zeros(1, 3, H, W), uimg=torch.zeros(H, W, 3), img_shape=(H, W), T_WC=T,
                 X_canon=X, C=torch.full((H * W, 1), 5.0), N=1)


@pytest.mark.parametrize("moved", [False, True])
@pytest.mark.parametrize("scale_b", [1.0, 0.8])  # 0.8: keyframe b's pointmap 20 % too small for its pose
def test_cross_check_cleans_the_map_with_neighbouring_keyframes(moved, scale_b):
    X_a, box_a = _render(torch.eye(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), 0.0)
    c = torch.tensor([0.2, 0.0, 0.0], dtype=torch.float64)
    X_b, box_b = _render(torch.eye(3, dtype=torch.float64), c, 0.8 if moved else 0.0)
    X_b = X_b * scale_b
    T_b = torch.tensor([[0.2, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0]])
    kfs = [_keyframe(X_a, Sim3.identity(1), 0), _keyframe(X_b, T_b, 1)]
    added = dynamic.cross_check(DynamicConfig(enabled=True), kfs)
    m = kfs[0].extras[dynamic.MASK]
    if not moved:
        assert added == 0 and not m.any() and not kfs[1].extras[dynamic.MASK].any()
    else:  # keyframe a's board is in front of the wall keyframe b sees there: gone, with its outline
        band = dynamic.depth_edges(X_a[:, 2], H, W, 0.05, 1)  # (edge window at this width: 1 pixel)
        assert m[box_a].all() and not (m & ~box_a & ~band).any()
        m_b, band_b = kfs[1].extras[dynamic.MASK], dynamic.depth_edges(X_b[:, 2], H, W, 0.05, 1)
        assert m_b[box_b].all() and not (m_b & ~box_b & ~band_b).any()  # b's board, where a saw the wall


def _board_depth(blur: bool = False) -> torch.Tensor:
    """Depth [HW]: a wall at 3 m, a 16 x 12 board at 1 m (optionally with blurred, ramped edges) and
    a second, 8 x 8 board at 1.2 m elsewhere."""
    z = torch.full((H, W), 3.0)
    z[10:22, 10:26] = 1.0
    z[30:38, 40:48] = 1.2
    if blur:  # one ring of in-between depths around the first board, as a network predicts
        ring = dynamic.dilate((z == 1.0).reshape(-1), H, W, 1).reshape(H, W) & (z == 3.0)
        z[ring] = 2.0
    return z.reshape(-1)


def test_fill_surfaces_flags_a_mostly_flagged_surface_whole():
    z = _board_depth()
    band = dynamic.depth_edges(z, H, W, 0.05, 1)
    board = (z == 1.0) & ~band
    for frac_flagged, whole in ((0.6, True), (0.3, False)):
        m = torch.zeros(H, W, dtype=torch.bool)
        m[10:22, 10 : 10 + int(16 * frac_flagged)] = True
        m = m.reshape(-1)
        out = dynamic.fill_surfaces(m, band, H, W, 0.5)
        assert bool(out[board].all()) == whole
        assert not (out & ~m & ~board).any()  # nothing beyond the board's surface (wall, band, second board)


def test_outline_takes_the_blurred_edge_around_a_mask_only():
    z = _board_depth(blur=True)
    band = dynamic.depth_edges(z, H, W, 0.05, 1)
    board = (z == 1.0).reshape(-1)
    ring = dynamic.dilate(board, H, W, 1) & ~board  # the blurred depths around the first board
    out = dynamic.outline(board & ~band, band, H, W, 4)
    assert out[ring].all()  # its mixed pixels go with it
    assert not (out & ~dynamic.dilate(board, H, W, 4)).any()  # within the steps
    assert not out[(z == 1.2)].any()  # the other board's edges stay
    assert torch.equal(dynamic.outline(board & ~band, band, H, W, 0), board & ~band)


def test_unregistered_views_give_no_evidence():
    """A pose or scale so wrong that most judged pixels 'moved' is a registration failure: no mask, no votes."""
    X_k, _ = _render(torch.eye(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), 0.0)
    ok = torch.ones(H * W, dtype=torch.bool)
    T = Sim3.identity(1)
    J_ok = dynamic.judge(DynamicConfig(enabled=True), T, X_k * 0.995, X_k, K4, K4, ok, ok, H, W)
    J_bad = dynamic.judge(DynamicConfig(enabled=True), T, X_k * 0.6, X_k, K4, K4, ok, ok, H, W)
    J_all = dynamic.judge(DynamicConfig(enabled=True, max_moving_frac=1.0), T, X_k * 0.6, X_k, K4, K4, ok, ok, H, W)
    assert not J_ok.frame_mask.any() and not J_bad.frame_mask.any() and not J_bad.kf_hit.any()
    assert J_all.frame_mask.float().mean() > 0.9  # (what the guard prevents: the whole frame flagged)


def _step_inputs(device: str, calibrated: bool, box_move: float = 0.25):
    """Inputs of dynamic.track_step for the board scene (frame shifted, board moved)."""
    ang = math.radians(2.0)
    R = torch.tensor([[math.cos(ang), 0, math.sin(ang)], [0, 1, 0], [-math.sin(ang), 0, math.cos(ang)]], dtype=torch.float64)
    c = torch.tensor([0.1, 0.05, -0.1], dtype=torch.float64)
    X_k, _ = _render(torch.eye(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), 0.0)
    X_f, _ = _render(R, c, box_move)
    T = torch.eye(4, dtype=torch.float64)
    T[:3, :3], T[:3, 3] = R, c
    T_kf = Sim3.from_matrix(T[None].float())
    gen = torch.Generator().manual_seed(3)
    p = torch.rand(H * W, 2, generator=gen) * torch.tensor([W - 1, H - 1])
    Xf = X_f[torch.randperm(H * W, generator=gen)]  # any matched points: only the residual test uses them
    sqrt_w = torch.rand(H * W, 1, generator=gen)
    ok = torch.ones(H * W, dtype=torch.bool)
    votes = torch.randint(0, 2, (H * W,), generator=gen, dtype=torch.int16)
    kf_dyn = torch.zeros(H * W, dtype=torch.bool)
    kf_dyn[:40] = True
    K = () if not calibrated else (torch.tensor([[F_PX, 0, K4[2]], [0, F_PX, K4[3]], [0, 0, 1]]),)
    args = (T_kf, X_f, X_k, Xf, X_k.clone(), p, sqrt_w, ok, ok, votes, kf_dyn, *K)
    return tuple(a.to(device) for a in args)


@pytest.mark.parametrize("calibrated", [False, True])
def test_track_step_equals_its_parts(calibrated):
    """The fused per-frame step gives what judge + update_votes give (the tracker's old path)."""
    cfg = DynamicConfig(enabled=True)
    args = _step_inputs("cpu", calibrated)
    T, X_f, X_k, Xf, Xk, p, sqrt_w, ok_f, ok_k, votes, kf_dyn = args[:11]
    frame_mask, sqrt_w2, keep, votes2, kf_mask = dynamic.track_step(*args, cfg=cfg, H=H, W=W)
    k4 = K4 if calibrated else None
    kf_ = dynamic.intrinsics_of(None if k4 is None else args[11], X_f, H, W, ok_f)
    kk_ = dynamic.intrinsics_of(None if k4 is None else args[11], X_k, H, W, ok_k)
    if calibrated:
        assert torch.allclose(kf_, K4)
    J = dynamic.judge(cfg, T, X_f, X_k, kf_, kk_, ok_f, ok_k, H, W)
    assert int(J.frame_mask.sum()) > 50  # the moved board is found
    assert torch.equal(frame_mask, J.frame_mask)
    assert torch.equal(keep, J.kf_hit | kf_dyn)
    v_ref, m_ref = dynamic.update_votes(cfg, votes, J.kf_hit, H, W, X_k[:, 2])
    assert torch.equal(votes2, v_ref) and torch.equal(kf_mask, m_ref)
    pix = p.round().long()
    moved = J.frame_mask[pix[:, 1] * W + pix[:, 0]]
    assert bool((sqrt_w2[moved | J.kf_hit] == 0).all())
    assert bool((sqrt_w2 <= sqrt_w).all())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("calibrated", [False, True])
def test_track_step_cuda_graph_equals_eager(calibrated):
    from mast3r_slam.network.cuda_graphs import CudaGraphRunner

    cfg = DynamicConfig(enabled=True)
    runner = CudaGraphRunner(dynamic.track_step, warmup=1)
    for move in (0.25, 0.0, 0.4):  # replays with new inputs
        args = _step_inputs("cuda", calibrated, move)
        eager = dynamic.track_step(*args, cfg=cfg, H=H, W=W)
        graphed = runner.run((H, W, calibrated), args, {"cfg": cfg, "H": H, "W": W})
        for a, b in zip(eager, graphed):
            assert torch.equal(a, b)
    assert len(runner) == 1


@pytest.mark.parametrize("scale_b", [1.0, 1.5])  # 1.5: keyframe b's current pose is wrong (scale)
def test_backend_drops_moving_matches_only_when_the_poses_agree(scale_b):
    """The backend leaves out matches of nearby keyframes that disagree in 3D (a moving object),
    but not when most of an edge disagrees: then the current poses are wrong, not the world."""
    from types import SimpleNamespace

    from mast3r_slam.backend.factor_graph import FactorGraph
    from mast3r_slam.config import Config

    X_a, _ = _render(torch.eye(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), 0.0)
    c = torch.tensor([0.2, 0.0, 0.0], dtype=torch.float64)
    X_b, box_b = _render(torch.eye(3, dtype=torch.float64), c, 0.8)  # the board has moved
    T_b = torch.tensor([[0.2, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, scale_b]])
    a, b = _keyframe(X_a, Sim3.identity(1), 0), _keyframe(X_b, T_b, 1)
    b.extras[dynamic.MASK] = box_b  # the frontend has seen motion in b
    # true matches: b's pixel -> a's pixel where its world point (true pose) projects
    P = X_b.double() + c
    uv = torch.stack([K4[0] * P[:, 0] / P[:, 2] + K4[2], K4[1] * P[:, 1] / P[:, 2] + K4[3]], -1).round().long()
    idx_b2a = (uv[:, 1].clamp(0, H - 1) * W + uv[:, 0].clamp(0, W - 1))[None]
    idx_a2b = torch.arange(H * W)[None]  # (the other direction: identity, judged too)
    # matched where a sees the same point (not behind a's board), and on b's moved board (a network
    # that registers the object onto itself matches it anyway)
    seen = (X_a[idx_b2a[0], 2].double() - P[:, 2]).abs() < 0.05 * P[:, 2]
    valid = (seen | box_b).reshape(1, H * W, 1)
    cfg = Config()
    cfg.dynamic.enabled = True
    graph = SimpleNamespace(cfg=cfg)
    ii, jj = torch.tensor([0]), torch.tensor([1])
    valid_b, _ = FactorGraph._drop_moving_matches(graph, [a], [b], ii, jj, idx_b2a, idx_a2b, valid.clone(), valid.clone())
    dropped = valid[0, :, 0] & ~valid_b[0, :, 0]
    if scale_b == 1.0:  # the moved board's matches go, the wall's stay
        assert dropped[box_b].float().mean() > 0.9 and not dropped[~dynamic.dilate(box_b, H, W, 1)].any()
    else:
        assert not dropped.any()
