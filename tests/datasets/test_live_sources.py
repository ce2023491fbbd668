"""Live sources without hardware: a RealSense recording made with a software device, and the
one-line errors when no camera is attached."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from mast3r_slam.datasets import load_dataset
from mast3r_slam.datasets._live import LIVE_LENGTH
from mast3r_slam.errors import DatasetError

W, H = 640, 480
FX, FY, PPX, PPY = 600.5, 601.25, 320.5, 240.25
N_FRAMES = 6


def _pyrealsense2():
    try:
        import pyrealsense2 as rs
    except ImportError as e:
        pytest.skip(f"pyrealsense2 not usable here ({e}); CI installs libusb-1.0-0")
    return rs


def _frame(i: int) -> np.ndarray:
    img = np.empty((H, W, 3), np.uint8)
    img[..., 0] = 40 * i
    img[..., 1] = (np.arange(W) % 256)[None, :]
    img[..., 2] = (np.arange(H) % 256)[:, None]
    return img


def _record(rs, path: Path) -> None:
    """Feed RGB8 frames through a software device into ``rs.recorder`` (rosbag2 .db3)."""
    dev = rs.software_device()
    sensor = dev.add_sensor("Color")
    intr = rs.intrinsics()
    intr.width, intr.height, intr.fx, intr.fy, intr.ppx, intr.ppy = W, H, FX, FY, PPX, PPY
    intr.model = rs.distortion.none
    intr.coeffs = [0.0] * 5
    vs = rs.video_stream()
    vs.type, vs.index, vs.uid = rs.stream.color, 0, 0
    vs.width, vs.height, vs.fps, vs.bpp, vs.fmt = W, H, 30, 3, rs.format.rgb8
    vs.intrinsics = intr
    profile = sensor.add_video_stream(vs)
    recorder = rs.recorder(str(path), dev)
    queue = rs.frame_queue(N_FRAMES + 2)
    sensor.open(profile)
    sensor.start(queue)
    for i in range(N_FRAMES):
        f = rs.software_video_frame()
        f.pixels = _frame(i)
        f.stride, f.bpp = W * 3, 3
        f.timestamp = 1000.0 + 100.0 * i  # ms
        f.domain = rs.timestamp_domain.hardware_clock
        f.frame_number = i
        f.profile = profile.as_video_stream_profile()
        sensor.on_video_frame(f)
        time.sleep(0.02)
    sensor.stop()
    sensor.close()
    del recorder  # flushes the file


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    rs = _pyrealsense2()
    path = tmp_path_factory.mktemp("rs") / "synthetic.db3"
    _record(rs, path)
    return path


def test_realsense_recording_playback(recording):
    ds = load_dataset(recording)
    try:
        assert type(ds).__name__ == "RealSenseDataset" and ds.is_live
        assert len(ds) == LIVE_LENGTH  # unknown until the stream ends
        intr = ds.intrinsics
        assert (intr.width, intr.height) == (W, H)
        assert (intr.fx, intr.fy, intr.cx, intr.cy) == pytest.approx((FX, FY, PPX, PPY))
        samples = list(ds)
        assert len(samples) == N_FRAMES and len(ds) == N_FRAMES
        for i, s in enumerate(samples):
            assert s.index == i
            np.testing.assert_array_equal(s.rgb, _frame(i))
        assert ds.timestamps == [f"{1.0 + 0.1 * i:.6f}" for i in range(N_FRAMES)]
        assert [s.timestamp for s in samples] == ds.timestamps  # no off-by-one
    finally:
        ds.close()


def test_realsense_recording_subsample_and_calibrated(recording):
    ds = load_dataset(recording, subsample=2, use_calib=True)
    try:
        assert ds.use_calibration
        samples = list(ds)
        assert [s.rgb[0, 0, 0] for s in samples] == [0, 80, 160]  # frames 0, 2, 4
        assert ds.timestamps == ["1.000000", "1.200000", "1.400000"]
        assert ds.K[0, 2] == pytest.approx(319.5)  # centred principal point after the (identity) remap
    finally:
        ds.close()


def test_realsense_without_camera_is_one_line():
    try:
        import pyrealsense2 as rs

        if len(rs.context().query_devices()) > 0:
            pytest.skip("a RealSense camera is attached")
    except ImportError:
        pass  # the error then names the missing library: also one line
    for spec in ("realsense", "realsense:12345"):
        with pytest.raises(DatasetError) as e:
            load_dataset(spec)
        msg = str(e.value)
        assert "\n" not in msg and msg.startswith("realsense")


def test_webcam_without_camera_is_one_line():
    with pytest.raises(DatasetError) as e:
        load_dataset("webcam:9")
    assert str(e.value) == "webcam:9: no camera found (OpenCV could not open video device 9)"
    with pytest.raises(DatasetError, match="expected webcam or webcam:N"):
        load_dataset("webcam:abc")
