"""User mistakes give one line naming the file or option and the problem."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mast3r_slam.datasets import load_calibration, load_dataset
from mast3r_slam.errors import CalibrationError, DatasetError, Mast3rSlamError

TESTS = Path(__file__).resolve().parents[1]
TUM = TESTS / "data" / "tum_fr1_rpy"
REPO = TESTS.parent


def _one_line(excinfo, *parts):
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    for p in parts:
        assert str(p) in msg, (p, msg)
    return msg


def test_missing_path(tmp_path):
    with pytest.raises(DatasetError) as e:
        load_dataset(tmp_path / "nope")
    _one_line(e, tmp_path / "nope", "no such file or folder")


def test_empty_folder(tmp_path):
    with pytest.raises(DatasetError) as e:
        load_dataset(tmp_path)
    _one_line(e, tmp_path, "no images found")


def test_unreadable_image(tmp_path):
    (tmp_path / "a.png").write_bytes(b"not a png")
    ds = load_dataset(tmp_path)
    with pytest.raises(DatasetError) as e:
        ds[0]
    _one_line(e, tmp_path / "a.png", "cannot read image")


def test_rgb_txt_names_missing_file(tmp_path):
    seq = tmp_path / "seq"
    shutil.copytree(TUM, seq)
    (seq / "rgb" / "1305031229.664657.jpg").unlink()
    with pytest.raises(DatasetError) as e:
        load_dataset(seq)
    _one_line(e, seq / "rgb.txt", "1305031229.664657.jpg", "does not exist")


def test_rgb_txt_empty_or_malformed(tmp_path):
    seq = tmp_path / "seq"
    shutil.copytree(TUM, seq)
    (seq / "rgb.txt").write_text("# only comments\n")
    with pytest.raises(DatasetError) as e:
        load_dataset(seq)
    _one_line(e, seq / "rgb.txt", "no entries")
    (seq / "rgb.txt").write_text("1305031229.528748\n")
    with pytest.raises(DatasetError) as e:
        load_dataset(seq)
    _one_line(e, "rgb.txt:1", "expected 2 fields")


def test_groundtruth_with_wrong_columns(tmp_path):
    seq = tmp_path / "seq"
    shutil.copytree(TUM, seq)
    (seq / "groundtruth.txt").write_text("# header\n1305031229.5 1 2 3 0 0 0\n")
    with pytest.raises(Mast3rSlamError) as e:
        load_dataset(seq)
    _one_line(e, "groundtruth.txt:2", "expected 8 columns 'timestamp tx ty tz qx qy qz qw'", "found 7")


def test_unknown_dataset_type():
    with pytest.raises(DatasetError) as e:
        load_dataset(TUM, kind="kitti")
    msg = _one_line(e, "kitti", "tum", "euroc", "eth3d", "7scenes", "video", "folder", "webcam", "realsense", "synthetic")
    assert "--dataset-type" in msg


def test_wrong_kind_for_contents():
    with pytest.raises(DatasetError) as e:
        load_dataset(TESTS / "data" / "davis_lady_running" / "frames", kind="tum")
    _one_line(e, "rgb.txt", "file not found")


def test_not_a_video(tmp_path):
    f = tmp_path / "clip.mp4"
    f.write_bytes(b"\x00" * 100)
    with pytest.raises(DatasetError) as e:
        load_dataset(f)
    _one_line(e, f, "cannot open video")


@pytest.mark.parametrize(
    "text, parts",
    [
        ("height: 480\ncalibration: [1, 1, 1, 1]\n", ["missing width"]),
        ("width: 640\nheight: 480\n", ["missing calibration"]),
        ("width: 640.5\nheight: 480\ncalibration: [1, 1, 1, 1]\n", ["'width' must be a positive integer", "640.5"]),
        ("width: 640\nheight: -1\ncalibration: [1, 1, 1, 1]\n", ["'height' must be a positive integer"]),
        ("width: 640\nheight: 480\ncalibration: [500, 500, 320]\n", ["'calibration' must have 4, 8 or 9 numbers", "found 3"]),
        ("width: 640\nheight: 480\ncalibration: [500, 500, 320, x]\n", ["finite numbers", "'x'"]),
        ("width: 640\nheight: 480\ncalibration: 500\n", ["'calibration' must be a list"]),
        ("width: 640\nheight: 480\ncalibration: [0, 500, 320, 240]\n", ["positive focal lengths"]),
        ("- just\n- a list\n", ["expected a YAML mapping"]),
        ("width: [640\n", ["not valid YAML"]),
    ],
)
def test_bad_calibration_files(tmp_path, text, parts):
    f = tmp_path / "intrinsics.yaml"
    f.write_text(text)
    with pytest.raises(CalibrationError) as e:
        load_calibration(f)
    _one_line(e, f, *parts)


def test_calibration_file_ok_and_missing(tmp_path):
    intr = load_calibration(REPO / "config" / "intrinsics.yaml")
    assert (intr.width, intr.height, intr.fx, intr.fy, intr.cx, intr.cy) == (640, 480, 517.3, 516.5, 318.6, 255.3)
    assert list(intr.distortion) == [0.2624, -0.9531, -0.0054, 0.0026, 1.1633]
    f = tmp_path / "opencv.yaml"
    f.write_text("%YAML:1.0\nwidth: 640\nheight: 480\ncalibration: [500, 501, 320, 240]\n")
    assert load_calibration(f).fy == 501.0 and load_calibration(f).distortion.size == 0
    with pytest.raises(CalibrationError) as e:
        load_calibration(tmp_path / "none.yaml")
    _one_line(e, "none.yaml", "not found")


def test_bad_subsample():
    with pytest.raises(DatasetError) as e:
        load_dataset(TUM, subsample=0)
    _one_line(e, "subsample", ">= 1")
