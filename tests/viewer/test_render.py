"""Offscreen (EGL) rendering checked pixel by pixel against the viewer camera's projection."""
import numpy as np
import pytest
from PIL import Image

from mast3r_slam.viewer import CurrentData, RecordingControl, StaticSource
from mast3r_slam.viewer.math3d import axis_angle, frustum_corners, frustum_segments, make_sim3, se3_matrix, sim3_matrix

from viewer_testutils import (
    H_FB,
    H_PM,
    W_FB,
    W_PM,
    base_config,
    block_colors,
    colored,
    plane_keyframe,
    plane_pointmap,
    requires_egl,
    sample,
)

pytestmark = pytest.mark.viz


@pytest.fixture
def viewer_factory():
    requires_egl()
    from mast3r_slam.viewer.headless import HeadlessViewer

    made = []

    def make(source, config, control=None, gui=False):
        v = HeadlessViewer(source, control or RecordingControl(), config, gui=gui)
        made.append(v)
        return v

    yield make
    for v in made:
        v.close()


def block_centres():
    """Pointmap pixels at the centres of the 8x8 colour blocks: (u [N], v [N])."""
    bu, bv = np.meshgrid(np.arange(W_PM // 8), np.arange(H_PM // 8))
    return (8 * bu + 4).ravel(), (8 * bv + 4).ravel()


T_KF = make_sim3(axis_angle([0.2, 1, 0], 0.35), t=(0.3, -0.2, 0.5), s=0.8)


@pytest.mark.parametrize("mode", ["surfel", "point"])
def test_points_appear_where_they_project(viewer_factory, mode):
    src = StaticSource()
    src.add_keyframe(plane_keyframe(T_KF))
    cfg = base_config(point_mode=mode, point_size=3.0)
    v = viewer_factory(src, cfg)
    img = v.render()
    u, vv = block_centres()
    X = plane_pointmap()[vv, u]
    expected = block_colors()[vv, u].astype(np.int64)
    M = sim3_matrix(T_KF)
    uv, z = v.app.camera.project(X @ M[:3, :3].T + M[:3, 3], W_FB, H_FB)
    got, ok = sample(img, uv)
    assert ok.all() and (z > 0).all()
    match = np.abs(got - expected).max(-1) <= 1
    assert match.mean() >= 0.95, f"{match.sum()}/{match.size} block centres have their colour"
    # the model matrix carries the Sim(3) scale: the drawn extent is that of the scaled plane
    ys, xs = np.nonzero(colored(img, cfg))
    drawn = np.array([xs.min(), ys.min(), xs.max(), ys.max()])
    P = plane_pointmap()[1:-1, 1:-1].reshape(-1, 3)  # border pixels are skipped
    for M, close in ((M, True), (se3_matrix(T_KF), False)):
        uvp, _ = v.app.camera.project(P @ M[:3, :3].T + M[:3, 3], W_FB, H_FB)
        box = np.r_[uvp.min(0), uvp.max(0)]
        assert (np.abs(box - drawn).max() <= 4) == close, (box, drawn)


def test_keyframe_and_current_frustums_are_drawn(viewer_factory):
    src = StaticSource()
    src.add_keyframe(plane_keyframe(T_KF))
    T_cur = make_sim3(axis_angle([1, 0, 0], -0.3), t=(-0.6, 0.3, 0.8))
    src.set_current(CurrentData(5, T_cur, plane_pointmap(), np.full((H_PM, W_PM), 3.0, np.float32), block_colors()))
    cfg = base_config(show_keyframe_points=False, show_current_points=False, show_keyframe_frustums=True,
                      show_current_frustum=True, frustum_scale=0.6, line_width=3.0)
    v = viewer_factory(src, cfg)
    img = v.render()
    for T, color in ((T_KF, cfg.keyframe_frustum_color), (T_cur, cfg.current_frustum_color)):
        segs = frustum_segments(se3_matrix(T)[None], frustum_corners(H_PM, W_PM, None, cfg.frustum_scale))
        pts = np.concatenate([segs[:, 0] + t * (segs[:, 1] - segs[:, 0]) for t in (0.3, 0.5, 0.7)])
        uv, z = v.app.camera.project(pts, W_FB, H_FB)
        got, ok = sample(img, uv)
        assert ok.all() and (z > 0).all()
        hit = np.abs(got - np.round(np.array(color) * 255)).max(-1) <= 3
        assert hit.mean() >= 0.9, f"{hit.sum()}/{hit.size} frustum edge samples drawn in {color}"
    # switched off: nothing at all is drawn
    v.app.opts.show_keyframe_frustums = v.app.opts.show_current_frustum = False
    assert not colored(v.render(), cfg).any()


def test_confidence_threshold_removes_low_confidence_points(viewer_factory):
    C = np.full((H_PM, W_PM), 3.0, np.float32)
    C[:, : W_PM // 2] = 1.0  # left half low confidence
    src = StaticSource()
    src.add_keyframe(plane_keyframe(make_sim3(), C=C))
    control = RecordingControl()
    v = viewer_factory(src, base_config(), control)
    counts = {}
    for thr in (0.5, 1.5, 5.0):
        v.app.set_conf_threshold(thr)
        counts[thr] = colored(v.render(), base_config())
    n_all, n_high = counts[0.5].sum(), counts[1.5].sum()
    assert n_all > 5000
    assert 0.42 < n_high / n_all < 0.58
    xs = np.nonzero(counts[1.5])[1]
    assert xs.min() >= W_FB // 2 - 2  # only the right half survives
    assert counts[5.0].sum() == 0
    assert control.conf_threshold == 5.0 and [e[0] for e in control.events] == ["set_conf_threshold"] * 3


def test_follow_camera_tracks_current_pose_and_keeps_user_offset(viewer_factory):
    def current(T):
        return CurrentData(1, T, plane_pointmap(), np.full((H_PM, W_PM), 3.0, np.float32), block_colors())

    T1 = make_sim3(axis_angle([0, 1, 0], 0.4), t=(0.5, 0.0, 0.2))
    T2 = make_sim3(axis_angle([1, 0.3, 0], -0.5), t=(-1.0, 0.7, 2.0), s=1.0)
    src = StaticSource()
    src.set_current(current(T1))
    cfg = base_config(follow=True, current_points_color="image")
    v = viewer_factory(src, cfg)
    img1 = v.render()
    np.testing.assert_allclose(v.app.camera.pose_cv, se3_matrix(T1) @ np.array(
        [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, -2.0], [0, 0, 0, 1]]), atol=1e-6)
    src.set_current(current(T2))
    img2 = v.render()
    assert colored(img1, cfg).sum() > 5000
    assert (img1 == img2).all(-1).mean() > 0.99  # the view rides with the camera
    # the user's navigation is an offset relative to the followed camera
    v.app.mouse_press(160, 120, "left")
    v.app.mouse_drag(180, 110, 20, -10)
    v.app.mouse_release(180, 110)
    img2p = v.render()
    assert (img2p[30:200, 40:260] == img2[40:210, 20:240]).all(-1).mean() > 0.97  # shifted by (20, -10)
    src.set_current(current(T1))
    img1p = v.render()
    assert (img1p == img2p).all(-1).mean() > 0.99
    # not following: the camera stays, the current frame moves on screen
    v.app.set_follow(False)
    src.set_current(current(T2))
    assert (v.render() == img1p).all(-1).mean() < 0.8


def test_uploads_only_for_changed_versions(viewer_factory):
    src = StaticSource()
    for k in range(3):
        src.add_keyframe(plane_keyframe(make_sim3(t=(k - 1.0, 0, 0)), frame_id=k))
    v = viewer_factory(src, base_config(max_uploads_per_frame=0))
    r = v.app.renderer
    img0 = v.render()
    assert (r.stats.keyframe_uploads, r.stats.rgb_uploads) == (3, 3)
    v.render()
    v.render()
    assert (r.stats.keyframe_uploads, r.stats.rgb_uploads) == (3, 3)
    assert src.reads == {0: 1, 1: 1, 2: 1}
    # a pose change (global optimisation) moves the map without any upload
    src.set_pose(2, make_sim3(t=(1.0, 0.8, 0)))
    assert (v.render() != img0).any(-1).sum() > 500
    assert r.stats.keyframe_uploads == 3
    # fused pointmap of keyframe 1 changed: one pointmap upload, the image is kept
    src.touch_keyframe(1)
    v.render()
    assert (r.stats.keyframe_uploads, r.stats.rgb_uploads) == (4, 3) and src.reads[1] == 2
    # slot 1 replaced by another frame: the image is uploaded too
    src.set_keyframe(1, plane_keyframe(make_sim3(), frame_id=7))
    v.render()
    assert (r.stats.keyframe_uploads, r.stats.rgb_uploads) == (5, 4)
    # keyframe removed: its textures are released
    src.pop_keyframe()
    v.render()
    assert r.stats.released == 1 and sorted(r.keyframes) == [0, 1]


def test_upload_budget_spreads_a_burst_over_frames(viewer_factory):
    src = StaticSource()
    for k in range(5):
        src.add_keyframe(plane_keyframe(make_sim3(t=(k, 0, 0)), frame_id=k))
    v = viewer_factory(src, base_config(max_uploads_per_frame=2))
    seen = []
    for _ in range(4):
        v.render()
        seen.append(v.app.renderer.stats.keyframe_uploads)
    assert seen == [2, 4, 5, 5]


def test_graph_edges_loop_edges_and_trajectory(viewer_factory):
    centres = np.array([[-1.0, 0, 1.0], [0.0, 0.5, 1.5], [1.0, 0, 1.0]])
    src = StaticSource()
    for k, c in enumerate(centres):
        src.add_keyframe(plane_keyframe(make_sim3(t=c), frame_id=k))
    cur_c = np.array([0.0, -0.6, 1.2])
    src.set_current(CurrentData(9, make_sim3(t=cur_c), plane_pointmap(), np.ones((H_PM, W_PM), np.float32),
                                block_colors()))
    src.set_edges([0, 0], [1, 2], [False, True])
    cfg = base_config(show_keyframe_points=False, show_current_points=False, show_edges=True, line_width=3.0)
    v = viewer_factory(src, cfg)

    def check(img, a, b, color):
        pts = np.stack([a + t * (b - a) for t in (0.3, 0.5, 0.7)])
        got, ok = sample(img, v.app.camera.project(pts, W_FB, H_FB)[0])
        assert ok.all()
        return np.abs(got - np.round(np.array(color) * 255)).max(-1) <= 3

    img = v.render()
    assert check(img, centres[0], centres[1], cfg.edge_color).all()
    assert check(img, centres[0], centres[2], cfg.loop_edge_color).all()
    assert not check(img, centres[1], centres[2], cfg.edge_color).any()  # no edge 1-2
    v.app.opts.show_edges, v.app.opts.show_trajectory = False, True
    img = v.render()
    for a, b in ((centres[0], centres[1]), (centres[1], centres[2]), (centres[2], cur_c)):
        assert check(img, a, b, cfg.trajectory_color).all()


def test_dynamic_mask_overlay_tints_moving_points(viewer_factory):
    mask = np.zeros((H_PM, W_PM), bool)
    mask[16:24, 16:32] = True  # blocks (2, 2) and (3, 2)
    src = StaticSource()
    src.set_current(CurrentData(3, make_sim3(), plane_pointmap(), np.full((H_PM, W_PM), 3.0, np.float32),
                                block_colors(), dynamic_mask=mask))
    cfg = base_config(current_points_color="image")
    v = viewer_factory(src, cfg)
    u, vv = block_centres()
    uv, _ = v.app.camera.project(plane_pointmap()[vv, u], W_FB, H_FB)
    rgb = block_colors()[vv, u].astype(np.float64)
    m = mask[vv, u]
    tinted = np.round(0.3 * rgb + 0.7 * 255 * np.array(cfg.mask_color))
    got, _ = sample(v.render(), uv)
    assert m.sum() == 2
    assert (np.abs(got[m] - tinted[m]).max(-1) <= 2).all()
    assert (np.abs(got[~m] - rgb[~m]).max(-1) <= 1).mean() >= 0.95
    v.app.opts.show_dynamic_mask = False
    got, _ = sample(v.render(), uv)
    assert (np.abs(got[m] - rgb[m]).max(-1) <= 1).all()


def test_calibrated_keyframe_points_lie_on_the_calibrated_rays(viewer_factory):
    X = plane_pointmap()
    K = np.array([[40.0, 0, W_PM / 2], [0, 40.0, H_PM / 2], [0, 0, 1]])
    X_bad = X.copy()
    X_bad[..., :2] *= 1.3  # wrong x, y; z is right
    ref_src, src = StaticSource(), StaticSource()
    ref_src.add_keyframe(plane_keyframe(T_KF))
    kf = plane_keyframe(T_KF)
    kf.X, kf.K = X_bad, K
    src.add_keyframe(kf)
    ref = viewer_factory(ref_src, base_config()).render()
    got = viewer_factory(src, base_config()).render()
    assert (ref == got).all(-1).mean() > 0.995


def test_screenshot_key_writes_png_of_the_3d_view(viewer_factory, tmp_path):
    src = StaticSource()
    src.add_keyframe(plane_keyframe(T_KF))
    src.set_status(mode="TRACKING", stand_in="ground-truth stand-in")
    v = viewer_factory(src, base_config(show_gui=True, screenshot_dir=str(tmp_path / "shots")), gui=True)
    v.app.key("p")
    frame = v.render()
    files = sorted((tmp_path / "shots").glob("*.png"))
    assert len(files) == 1
    shot = np.asarray(Image.open(files[0]).convert("RGB"))
    assert shot.shape == (H_FB, W_FB, 3)
    assert np.array_equal(shot, v.scene())  # the 3D view, without the GUI
    assert (shot != frame).any(-1).sum() > 1000  # the frame had the GUI on top
    assert "screenshot saved" in v.app.message
    path = v.app.request_screenshot(tmp_path / "explicit.png")
    v.render()
    assert path.exists()


def test_gui_overlay_is_drawn_headless(viewer_factory):
    src = StaticSource()
    src.add_keyframe(plane_keyframe(T_KF))
    src.set_status(mode="TRACKING", frame=12, n_frames=40, stand_in="ground-truth stand-in")
    v = viewer_factory(src, base_config(show_gui=True, width=800, height=600), gui=True)
    assert v.app.gui is not None
    frame = v.render()
    scene = v.scene()
    diff = (frame != scene).any(-1)
    inside = np.zeros_like(diff)
    for rect in (v.app.gui.panel_rect, v.app.gui.images_rect):  # controls; keyframe image
        x, y, w, h = (int(round(a)) for a in rect)
        assert w > 100 and h > 100
        assert diff[y: y + h, x: x + w].mean() > 0.5
        inside[max(y - 1, 0): y + h + 1, max(x - 1, 0): x + w + 1] = True
    assert not diff[~inside].any()  # the overlay stays in its windows
    assert src.reads == {0: 1}  # the keyframe panel reuses the uploaded data
    # the stand-in label is drawn in orange; without a stand-in there is no orange text
    orange = (frame[..., 0] > 200) & (frame[..., 1] > 100) & (frame[..., 1] < 170) & (frame[..., 2] < 80)
    assert orange.sum() > 20
    src.set_status(stand_in=None)
    frame = v.render()
    orange = (frame[..., 0] > 200) & (frame[..., 1] > 100) & (frame[..., 1] < 170) & (frame[..., 2] < 80)
    assert orange.sum() == 0
    # G hides the GUI
    v.app.key("g")
    assert np.array_equal(v.render(), v.scene())


def test_pause_step_and_threshold_act_on_slam(viewer_factory):
    control = RecordingControl()
    v = viewer_factory(StaticSource(), base_config(), control)
    v.render()
    v.app.key("n")  # not paused: step is ignored
    v.app.key("space")
    v.app.key("n")
    v.app.key("n")
    v.app.key("space")
    v.app.set_conf_threshold(2.0)
    v.app.close()
    assert control.events == [("set_paused", True), ("step", None), ("step", None), ("set_paused", False),
                              ("set_conf_threshold", 2.0), ("terminate", None)]


def test_mouse_orbit_and_zoom_about_the_point_under_the_cursor(viewer_factory):
    src = StaticSource()
    src.add_keyframe(plane_keyframe(make_sim3()))  # plane z = 2, eye at z = -2
    v = viewer_factory(src, base_config())
    img0 = v.render()
    x, y = 200.0, 100.0
    v.app.mouse_press(x, y, "right")
    pivot = v.app._drag[2]
    assert pivot[2] == pytest.approx(2.0, abs=0.01)  # depth read back from the framebuffer
    expected = v.app.camera.unproject(x, y, 4.0, W_FB, H_FB)
    np.testing.assert_allclose(pivot, expected, atol=0.01)
    v.app.mouse_drag(x + 30, y + 15, 30, 15)
    v.app.mouse_release(x + 30, y + 15, "right")
    img1 = v.render()
    assert (img1 != img0).any(-1).mean() > 0.03  # the view turned
    np.testing.assert_allclose(v.app.camera.project(pivot[None], W_FB, H_FB)[0][0], [x, y], atol=1e-6)
    assert np.abs(img1[int(y), int(x)].astype(int) - img0[int(y), int(x)]).max() <= 1  # same surface point
    area1 = colored(img1, base_config()).sum()
    v.app.scroll(3, 120.0, 140.0)
    img2 = v.render()
    assert np.abs(img2[140, 120].astype(int) - img1[140, 120]).max() <= 1
    assert colored(img2, base_config()).sum() > 1.3 * area1


def test_msaa_view_matches_and_falls_back_for_picking(viewer_factory):
    src = StaticSource()
    src.add_keyframe(plane_keyframe(T_KF))
    ref = colored(viewer_factory(src, base_config()).render(), base_config())
    v = viewer_factory(src, base_config(samples=4))
    got = colored(v.render(), base_config())
    assert abs(int(got.sum()) - int(ref.sum())) < 0.03 * ref.sum()
    assert (got == ref).mean() > 0.97
    assert v.app.depth_at(160, 120) is None  # no depth read-back from a multisampled buffer
    v.app.mouse_press(160, 120, "right")  # orbit still works around the default-depth point
    np.testing.assert_allclose(v.app._drag[1], v.app.camera.default_depth())
