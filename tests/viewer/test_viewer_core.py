"""Viewer pieces without OpenGL: config, in-memory source/control, Sim(3) matrices, camera maths."""
import pickle

import numpy as np
import pytest
import torch

from mast3r_slam.errors import ConfigError
from mast3r_slam.lie import Sim3
from mast3r_slam.viewer import KeyframeData, RecordingControl, StaticSource, ViewerConfig
from mast3r_slam.viewer.camera import ViewerCamera
from mast3r_slam.viewer.gui import overlay_mask
from mast3r_slam.viewer.math3d import (
    CV_TO_GL,
    axis_angle,
    frustum_corners,
    frustum_segments,
    make_sim3,
    se3_matrix,
    sim3_matrix,
    translation,
)
from mast3r_slam.viewer.source import ViewerControl, ViewerSource


# ---- config --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kw, name",
    [
        ({"point_mode": "splat"}, "viewer.point_mode"),
        ({"conf_threshold": -1.0}, "viewer.conf_threshold"),
        ({"width": 8}, "viewer.width"),
        ({"far": 0.001}, "viewer.far"),
        ({"edge_color": (1, 0)}, "viewer.edge_color"),
        ({"point_stride": 0}, "viewer.point_stride"),
    ],
)
def test_config_errors_name_the_option(kw, name):
    with pytest.raises(ConfigError) as e:
        ViewerConfig(**kw)
    msg = str(e.value)
    assert msg.startswith(name) and "\n" not in msg


def test_config_replace_validates_and_rejects_unknown():
    c = ViewerConfig().replace(point_mode="point", width=320)
    assert (c.point_mode, c.width, c.conf_threshold) == ("point", 320, 1.5)
    with pytest.raises(ConfigError, match="viewer.bogus"):
        ViewerConfig().replace(bogus=1)


# ---- source / control ----------------------------------------------------------------------------
def _kf(fid=0, H=4, W=5):
    return KeyframeData(fid, make_sim3(), np.ones((H, W, 3), np.float32), np.ones((H, W), np.float32),
                        np.zeros((H, W, 3), np.uint8))


def test_static_source_versions_and_pickling():
    src = StaticSource()
    assert isinstance(src, ViewerSource) and isinstance(RecordingControl(), ViewerControl)
    src.add_keyframe(_kf(0))
    src.add_keyframe(_kf(1))
    v0 = src.keyframe_versions().copy()
    assert v0.dtype == np.int64 and v0.shape == (2,) and v0[0] != v0[1]
    src.set_pose(1, make_sim3(t=(1, 2, 3)))  # poses are not versioned
    assert np.array_equal(src.keyframe_versions(), v0)
    np.testing.assert_allclose(src.keyframe_poses()[1, :3], [1, 2, 3])
    src.touch_keyframe(0)
    v1 = src.keyframe_versions()
    assert v1[0] != v0[0] and v1[1] == v0[1]
    src.pop_keyframe()
    assert src.keyframe_versions().shape == (1,) and src.status().n_keyframes == 1
    assert src.keyframe(5) is None
    assert src.current_version() == -1 and src.current() is None
    src.set_edges([0], [0], [True])
    clone = pickle.loads(pickle.dumps(src))
    assert np.array_equal(clone.keyframe_versions(), src.keyframe_versions())
    assert clone.edges()[2].tolist() == [True]


def test_recording_control_records_in_order():
    c = RecordingControl()
    c.set_paused(True)
    c.step()
    c.set_conf_threshold(2.5)
    c.terminate()
    assert c.events == [("set_paused", True), ("step", None), ("set_conf_threshold", 2.5), ("terminate", None)]
    assert c.paused and c.steps == 1 and c.conf_threshold == 2.5 and c.terminated


# ---- Sim(3) matrices and frustums ------------------------------------------------------------------
def test_sim3_matrix_matches_lie_module():
    rng = np.random.default_rng(0)
    xi = torch.tensor(rng.normal(size=(5, 7)) * 0.5, dtype=torch.float64)
    T = Sim3.exp(xi)
    M_ref = Sim3.matrix(T).numpy()
    M = sim3_matrix(T.numpy())
    np.testing.assert_allclose(M, M_ref, atol=1e-9)
    # scale is in the model matrix; the rigid part drops it
    R = se3_matrix(T.numpy())[:, :3, :3]
    np.testing.assert_allclose(np.einsum("nij,nkj->nik", R, R), np.broadcast_to(np.eye(3), (5, 3, 3)), atol=1e-9)
    np.testing.assert_allclose(M[:, :3, :3], R * T.numpy()[:, 7, None, None], atol=1e-9)


def test_make_sim3_roundtrip():
    R = axis_angle([0.3, -1, 0.2], 1.1)
    T = make_sim3(R, t=(1, 2, 3), s=0.5)
    M = sim3_matrix(T)
    np.testing.assert_allclose(M[:3, :3], 0.5 * R, atol=1e-6)
    np.testing.assert_allclose(M[:3, 3], [1, 2, 3])


def test_frustum_segments_geometry():
    H, W, d = 48, 64, 0.5
    K = np.array([[50.0, 0, 32], [0, 50.0, 24], [0, 0, 1]])
    c = frustum_corners(H, W, K, d)
    np.testing.assert_allclose(c[0], [-32 / 50 * d, -24 / 50 * d, d])  # top-left corner (OpenCV axes)
    np.testing.assert_allclose(c[2], [32 / 50 * d, 24 / 50 * d, d])
    pose = se3_matrix(make_sim3(axis_angle([0, 1, 0], 0.5), t=(1, 0, 0))[None])
    segs = frustum_segments(pose, c)
    assert segs.shape == (8, 2, 3)
    np.testing.assert_allclose(segs[:4, 0], np.broadcast_to([1, 0, 0], (4, 3)), atol=1e-12)  # all from the centre
    lengths = np.linalg.norm(segs[:4, 1] - segs[:4, 0], axis=-1)
    np.testing.assert_allclose(lengths, np.linalg.norm(c, axis=-1))


# ---- camera ------------------------------------------------------------------------------------------
def _gl_project(cam, p, W, H):
    """Reference projection through the OpenGL matrices (what the shaders do)."""
    clip = cam.projection(W, H) @ cam.view_matrix() @ np.append(p, 1.0)
    ndc = clip[:3] / clip[3]
    return np.array([(ndc[0] + 1) / 2 * W, H - (ndc[1] + 1) / 2 * H])


def test_camera_projection_matches_gl_matrices_and_cv_axes():
    cam = ViewerCamera(fov_y_deg=60)
    W, H = 320, 240
    cam.anchor = se3_matrix(make_sim3(axis_angle([1, 2, 0.5], 0.4), t=(0.3, -0.2, 1.0)))
    rng = np.random.default_rng(1)
    pts = (cam.pose_cv[:3, :3] @ np.c_[rng.uniform(-1, 1, (20, 2)), rng.uniform(1, 5, 20)].T).T + cam.pose_cv[:3, 3]
    uv, z = cam.project(pts, W, H)
    assert np.all(z > 0)
    ref = np.stack([_gl_project(cam, p, W, H) for p in pts])
    np.testing.assert_allclose(uv, ref, atol=1e-6)
    # OpenCV axes: +x right, +y down on screen
    cam.anchor = np.eye(4)
    cam.offset = np.eye(4)
    uv, _ = cam.project(np.array([[0, 0, 2.0], [0.5, 0, 2.0], [0, 0.5, 2.0]]), W, H)
    np.testing.assert_allclose(uv[0], [W / 2, H / 2])
    assert uv[1, 0] > W / 2 and uv[2, 1] > H / 2
    np.testing.assert_allclose(CV_TO_GL @ CV_TO_GL, np.eye(4))


def test_camera_follow_keeps_user_offset_and_bakes_on_switch_off():
    cam = ViewerCamera(follow_offset=(0, 0, -2))
    T1 = se3_matrix(make_sim3(axis_angle([0, 1, 0], 0.3), t=(1, 0, 0)))
    cam.update_follow(T1)
    np.testing.assert_allclose(cam.pose_cv, T1 @ translation([0, 0, -2]))
    cam.pan(10, -5, depth=2.0, height=240)
    offset = cam.offset.copy()
    T2 = se3_matrix(make_sim3(axis_angle([1, 0, 0], -0.2), t=(0, 1, 3)))
    cam.update_follow(T2)
    np.testing.assert_allclose(cam.pose_cv, T2 @ offset, atol=1e-12)  # the user's offset rides along
    before = cam.pose_cv.copy()
    cam.set_follow(False)
    np.testing.assert_allclose(cam.pose_cv, before, atol=1e-12)  # nothing jumps
    cam.update_follow(T1)  # ignored while not following
    np.testing.assert_allclose(cam.pose_cv, before, atol=1e-12)
    cam.set_follow(True, T1)
    np.testing.assert_allclose(cam.pose_cv, T1 @ translation([0, 0, -2]), atol=1e-12)


def test_camera_navigation_invariants():
    W, H = 320, 240
    cam = ViewerCamera(follow=False)
    p = np.array([0.4, -0.3, 2.5])
    uv0, z0 = cam.project(p[None], W, H)
    # pan: a point at the pan depth moves exactly by the drag
    cam.pan(12.0, -7.0, depth=float(z0[0]), height=H)
    uv1, _ = cam.project(p[None], W, H)
    np.testing.assert_allclose(uv1 - uv0, [[12.0, -7.0]], atol=1e-9)
    # orbit: the pivot keeps its pixel and its distance, the view rotates
    d0 = np.linalg.norm(cam.pose_cv[:3, 3] - p)
    R0 = cam.pose_cv[:3, :3].copy()
    cam.orbit(40.0, 25.0, p)
    uv2, _ = cam.project(p[None], W, H)
    np.testing.assert_allclose(uv2, uv1, atol=1e-6)
    assert np.linalg.norm(cam.pose_cv[:3, 3] - p) == pytest.approx(d0)
    assert np.degrees(np.arccos((np.trace(R0.T @ cam.pose_cv[:3, :3]) - 1) / 2)) > 5
    # zoom: the target keeps its pixel, its distance shrinks by zoom_factor per step
    cam.zoom(2, p)
    uv3, _ = cam.project(p[None], W, H)
    np.testing.assert_allclose(uv3, uv1, atol=1e-6)
    assert np.linalg.norm(cam.pose_cv[:3, 3] - p) == pytest.approx(d0 * 0.85**2)
    # unproject inverts project; depth buffer values invert the projection's depth mapping
    q = cam.unproject(100.0, 50.0, 3.0, W, H)
    uvq, zq = cam.project(q[None], W, H)
    np.testing.assert_allclose(uvq, [[100.0, 50.0]], atol=1e-9)
    assert zq[0] == pytest.approx(3.0)
    clip = cam.projection(W, H) @ np.array([0, 0, -3.0, 1])
    assert cam.depth_from_buffer((clip[2] / clip[3] + 1) / 2) == pytest.approx(3.0)
    assert cam.depth_from_buffer(1.0) is None


def test_overlay_mask_blends_only_masked_pixels():
    rgb = np.full((4, 5, 3), 100, np.uint8)
    m = np.zeros((4, 5), bool)
    m[1, 2] = True
    out = overlay_mask(rgb, m, (1.0, 0.0, 0.0), alpha=0.5)
    assert out[1, 2].tolist() == [178, 50, 50]
    assert (out[~m] == 100).all()
    assert np.array_equal(overlay_mask(rgb, None, (1, 0, 0)), rgb)


def test_mode_names_accept_enum_int_and_str():
    from mast3r_slam.frame import Mode
    from mast3r_slam.viewer.app import mode_name

    assert [mode_name(m) for m in (Mode.RELOC, 3, "tracking", "INIT")] == ["RELOC", "TERMINATED", "TRACKING", "INIT"]
