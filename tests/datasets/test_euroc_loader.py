"""EuRoC loader on the real V1_01 excerpt in tests/data."""
from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from scipy.spatial.transform import Rotation

from mast3r_slam.datasets import load_dataset
from mast3r_slam.datasets.euroc import EuRoCDataset
from mast3r_slam.image import prepare_image

DATA = Path(__file__).resolve().parents[1] / "data" / "euroc_v1_01"


def test_frames_timestamps_grey_to_rgb():
    ds = load_dataset(DATA, use_calib=False)
    assert isinstance(ds, EuRoCDataset)
    assert ds.timestamps == [
        "1403715274262142976",
        "1403715274312143104",
        "1403715274362142976",
        "1403715274412143104",
        "1403715274462142976",
    ]
    raw = ds.read(2).rgb  # without undistortion
    grey = cv2.imread(str(DATA / "mav0/cam0/data/1403715274362142976.png"), cv2.IMREAD_GRAYSCALE)
    assert raw.shape == (480, 752, 3) and raw.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(raw[:, :, c], grey)


def test_always_undistorted_and_intrinsics():
    ds = load_dataset(DATA, use_calib=False)
    assert ds.use_calibration  # EuRoC frames are undistorted even in uncalibrated mode
    intr = ds.intrinsics
    assert (intr.width, intr.height) == (752, 480)
    assert (intr.fx, intr.fy, intr.cx, intr.cy) == (458.654, 457.296, 367.215, 248.375)
    np.testing.assert_allclose(intr.distortion, [-0.28340811, 0.07395907, 0.00019359, 1.76187114e-05])
    dist = intr.distortion
    K_ref, _ = cv2.getOptimalNewCameraMatrix(intr.K, dist, (752, 480), 0, (752, 480), True)
    np.testing.assert_allclose(ds.K, K_ref)
    assert ds.K[0, 2] == pytest.approx(375.5) and ds.K[1, 2] == pytest.approx(239.5)
    s = ds[2]
    assert s.rgb.shape == (480, 752, 3)
    assert not np.array_equal(s.rgb, ds.read(2).rgb)
    und = cv2.remap(ds.read(2).rgb, *intr._maps, cv2.INTER_LINEAR)
    np.testing.assert_array_equal(s.rgb, und)


def test_network_size_crop_and_intrinsics():
    ds = load_dataset(DATA, use_calib=True)
    prep = prepare_image(ds[0].rgb, 512)
    assert prep.true_shape == (320, 512)  # 752x480 -> 512x327 -> crop 512x320
    assert prep.resized_shape == (327, 512)
    K = prep.adjust_intrinsics(ds.K)
    K0 = ds.K
    assert K[0, 0] == pytest.approx(K0[0, 0] * 512 / 752)
    assert K[1, 1] == pytest.approx(K0[1, 1] * 327 / 480)
    assert K[0, 2] == pytest.approx(K0[0, 2] * 512 / 752)
    assert K[1, 2] == pytest.approx(K0[1, 2] * 327 / 480 - 3.5)


def test_groundtruth_is_camera_pose():
    ds = load_dataset(DATA)
    assert ds.groundtruth_path() == DATA / "groundtruth_V1_01_easy.txt"
    assert ds[0].T_WC_gt is None  # the file starts at the second frame
    line = [ln for ln in (DATA / "groundtruth_V1_01_easy.txt").read_text().splitlines() if ln[0] != "#"][0]
    v = np.array([float(x) for x in line.split()])
    T_WB = np.eye(4)
    T_WB[:3, :3] = Rotation.from_quat(v[[5, 6, 7, 4]]).as_matrix()  # file: qw qx qy qz
    T_WB[:3, 3] = v[1:4]
    sensor = yaml.safe_load("\n".join((DATA / "mav0/cam0/sensor.yaml").read_text().splitlines()[1:]))
    T_BS = np.array(sensor["T_BS"]["data"]).reshape(4, 4)
    T_WC = T_WB @ T_BS
    T = ds[1].T_WC_gt
    np.testing.assert_allclose(T[:3], T_WC[:3, 3], atol=1e-9)
    np.testing.assert_allclose(Rotation.from_quat(T[3:]).as_matrix(), T_WC[:3, :3], atol=1e-8)
    times, poses = ds.groundtruth()
    assert times[0] == pytest.approx(1403715274.312143104, abs=1e-6)
    assert poses.shape == (6, 7)


def test_groundtruth_beside_the_sequence(tmp_path):
    seq = tmp_path / "V1_01_easy"
    shutil.copytree(DATA, seq)
    gt = seq / "groundtruth_V1_01_easy.txt"
    (tmp_path / "groundtruths").mkdir()
    gt.rename(tmp_path / "groundtruths" / "V1_01_easy.txt")
    ds = EuRoCDataset(seq)
    assert ds.groundtruth_path() == tmp_path / "groundtruths" / "V1_01_easy.txt"
    assert ds[1].T_WC_gt is not None
