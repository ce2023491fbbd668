"""TUM RGB-D loader on the real fr1_rpy excerpt in tests/data."""
from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy.spatial.transform import Rotation, Slerp

from mast3r_slam.datasets import load_dataset
from mast3r_slam.datasets.tum import TUMDataset, tum_camera_from_path
from mast3r_slam.errors import CalibrationError

DATA = Path(__file__).resolve().parents[1] / "data" / "tum_fr1_rpy"
REPO = Path(__file__).resolve().parents[2]


def _rgb_list():
    return [ln.split() for ln in (DATA / "rgb.txt").read_text().splitlines() if ln and not ln.startswith("#")]


def test_frames_timestamps_and_intrinsics():
    ds = load_dataset(DATA)
    assert isinstance(ds, TUMDataset) and ds.kind == "tum"
    rows = _rgb_list()
    assert len(ds) == 20
    assert ds.timestamps == [r[0] for r in rows]  # strings exactly as in rgb.txt
    s = ds[3]
    assert s.timestamp == "1305031229.926248"
    assert s.rgb.shape == (480, 640, 3) and s.rgb.dtype == np.uint8
    # pixels are what the file holds (BGR on disk -> RGB)
    ref = cv2.imread(str(DATA / rows[3][1]))[:, :, ::-1]
    np.testing.assert_array_equal(s.rgb, ref)
    intr = ds.intrinsics
    assert (intr.width, intr.height, intr.fx, intr.fy, intr.cx, intr.cy) == (640, 480, 517.3, 516.5, 318.6, 255.3)
    np.testing.assert_allclose(intr.distortion, [0.2624, -0.9531, -0.0054, 0.0026, 1.1633])
    assert not ds.use_calibration  # uncalibrated by default: raw images, as the original
    np.testing.assert_allclose(ds.K, intr.K)


def test_depth_known_value_and_association():
    ds = load_dataset(DATA)
    s = ds[0]
    assert s.depth.shape == (480, 640) and s.depth.dtype == np.float32
    raw = cv2.imread(str(DATA / "depth" / "1305031229.528784.png"), cv2.IMREAD_UNCHANGED)  # nearest (36 us away)
    assert raw[240, 320] == 6192
    assert s.depth[240, 320] == pytest.approx(6192 / 5000.0)
    assert s.depth[240, 320] == pytest.approx(1.2384)
    np.testing.assert_array_equal(s.depth == 0, raw == 0)


def test_depth_without_depth_txt(tmp_path):
    seq = tmp_path / "seq"
    shutil.copytree(DATA, seq)
    (seq / "depth.txt").unlink()
    ds = TUMDataset(seq)  # nearest depth by file-name timestamps
    assert ds[0].depth[240, 320] == pytest.approx(1.2384)


def test_groundtruth_interpolation_matches_scipy():
    ds = load_dataset(DATA)
    gt = np.array([[float(v) for v in ln.split()] for ln in (DATA / "groundtruth.txt").read_text().splitlines() if ln and ln[0] != "#"])
    t_frame = float(ds.timestamps[5])
    j = np.searchsorted(gt[:, 0], t_frame) - 1
    a = (t_frame - gt[j, 0]) / (gt[j + 1, 0] - gt[j, 0])
    assert 0 < a < 1
    t_ref = gt[j, 1:4] + a * (gt[j + 1, 1:4] - gt[j, 1:4])
    slerp = Slerp([0.0, 1.0], Rotation.from_quat(gt[j : j + 2, 4:8]))
    q_ref = slerp([a]).as_quat()[0]
    T = ds[5].T_WC_gt
    np.testing.assert_allclose(T[:3], t_ref, atol=1e-12)
    assert abs(abs(np.dot(T[3:], q_ref)) - 1) < 1e-12
    times, poses = ds.groundtruth()
    assert poses.shape == (len(gt), 7) and times[0] == pytest.approx(gt[0, 0])
    assert ds.groundtruth_path() == DATA / "groundtruth.txt"


def test_calibrated_mode_undistorts_with_centred_principal_point():
    ds = load_dataset(DATA, use_calib=True)
    assert ds.use_calibration
    K = ds.K
    # OpenCV optimal new camera matrix (alpha 0, principal point centred) for fr1
    assert K[0, 2] == pytest.approx(319.5) and K[1, 2] == pytest.approx(239.5)
    assert K[0, 0] == pytest.approx(573.513185, abs=1e-4) and K[1, 1] == pytest.approx(572.626252, abs=1e-4)
    # the remap follows the radial-tangential model: undistorted pixel -> raw pixel
    intr = ds.intrinsics
    mapx, mapy = intr._maps
    u, v = np.array([10.0, 320.0, 600.0]), np.array([15.0, 240.0, 470.0])
    x, y = (u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1]
    k1, k2, p1, p2, k3 = intr.distortion
    r2 = x * x + y * y
    rad = 1 + k1 * r2 + k2 * r2**2 + k3 * r2**3
    xd = x * rad + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * rad + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    np.testing.assert_allclose(mapx[v.astype(int), u.astype(int)], intr.fx * xd + intr.cx, atol=2e-3)
    np.testing.assert_allclose(mapy[v.astype(int), u.astype(int)], intr.fy * yd + intr.cy, atol=2e-3)
    s_raw, s_und = load_dataset(DATA)[0], ds[0]
    assert s_und.rgb.shape == s_raw.rgb.shape and np.abs(s_und.rgb.astype(int) - s_raw.rgb).mean() > 5


def test_subsample_keeps_timestamps():
    full = load_dataset(DATA)
    ds = load_dataset(DATA, subsample=3)
    assert len(ds) == 7
    assert ds.timestamps == full.timestamps[::3]
    s = ds[2]
    assert s.index == 2 and s.timestamp == full.timestamps[6]
    np.testing.assert_array_equal(s.rgb, full[6].rgb)
    np.testing.assert_allclose(s.T_WC_gt, full[6].T_WC_gt)


def test_detected_by_content_not_name(tmp_path):
    seq = tmp_path / "my_sequence"
    shutil.copytree(DATA, seq)
    ds = load_dataset(seq)
    assert type(ds) is TUMDataset and len(ds) == 20
    assert tum_camera_from_path(seq) is None and ds.intrinsics is None  # the name says nothing
    with pytest.raises(CalibrationError, match="needs intrinsics") as e:
        load_dataset(seq, use_calib=True)
    assert "\n" not in str(e.value)
    # --calib supplies the camera
    ds = load_dataset(seq, calib_path=REPO / "config" / "intrinsics.yaml")
    assert ds.use_calibration and ds.intrinsics.fx == 517.3
    np.testing.assert_allclose(ds.K, load_dataset(DATA, use_calib=True).K)
    # explicit camera argument
    assert TUMDataset(seq, camera="fr3").intrinsics.fx == 535.4
    # a calibration.yaml inside the folder
    (seq / "calibration.yaml").write_text("width: 640\nheight: 480\ncalibration: [500.0, 501.0, 320.0, 240.0]\n")
    assert load_dataset(seq, use_calib=True).intrinsics.fy == 501.0


@pytest.mark.parametrize(
    "name, cam", [("rgbd_dataset_freiburg2_desk", 2), ("tum_fr3_office", 3), ("freiburg1", 1), ("frame12", None), ("fr12", None)]
)
def test_camera_from_folder_name(tmp_path, name, cam):
    assert tum_camera_from_path(tmp_path / name) == cam
