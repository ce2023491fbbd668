"""TUM trajectory read/write, ground-truth layouts, timestamps and pose interpolation."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation, Slerp

from mast3r_slam.errors import TrajectoryFileError
from mast3r_slam.io.trajectory import (
    interpolate_poses,
    read_trajectory,
    read_tum,
    timestamps_to_seconds,
    write_tum,
)

DATA = Path(__file__).resolve().parents[1] / "data"


def _random_poses(n, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return np.concatenate([rng.normal(size=(n, 3)) * 3, q], axis=1)


def test_round_trip_full_precision_and_exact_timestamps(tmp_path):
    poses = _random_poses(50)
    poses[0, 0] = 1e-17  # tiny and huge values survive
    poses[1, 1] = 123456789.123456789
    stamps = ["1305031229.528748", "1403715274262142976", "0.10", "00042"] + [f"{i}.5" for i in range(46)]
    buf = io.StringIO()
    write_tum(buf, stamps, poses)
    buf.seek(0)
    ts, back = read_tum(buf)
    assert ts == stamps  # exactly as given, e.g. "0.10" and "00042" keep their digits
    np.testing.assert_array_equal(back, poses)  # bit-exact
    p = tmp_path / "t.txt"
    write_tum(p, stamps, torch.from_numpy(poses))  # tensors and paths too
    ts2, back2 = read_tum(p)
    assert ts2 == stamps and np.array_equal(back2, poses)
    assert p.read_text().splitlines()[0].split()[0] == "1305031229.528748"


def test_numeric_timestamps_are_full_precision():
    buf = io.StringIO()
    write_tum(buf, [1305031229.528748, 7], np.tile([0, 0, 0, 0, 0, 0, 1.0], (2, 1)))
    assert buf.getvalue().splitlines() == ["1305031229.528748 0.0 0.0 0.0 0.0 0.0 0.0 1.0", "7 0.0 0.0 0.0 0.0 0.0 0.0 1.0"]


def test_reader_errors_state_the_layout(tmp_path):
    with pytest.raises(TrajectoryFileError) as e:
        read_tum(io.StringIO("# c\n1 2 3 4 5 6 7 8\n1 2 3\n"))
    msg = str(e.value)
    assert "<stream>:3: expected 8 columns 'timestamp tx ty tz qx qy qz qw' separated by spaces, found 3" == msg
    with pytest.raises(TrajectoryFileError, match=r":1: non-numeric value .*expected 'timestamp tx ty tz qx qy qz qw'"):
        read_tum(io.StringIO("1 2 3 4 5 6 7 x\n"))
    with pytest.raises(TrajectoryFileError, match="nope.txt: trajectory file not found"):
        read_tum(tmp_path / "nope.txt")
    with pytest.raises(ValueError, match=r"poses must be \[N, 7\]"):
        write_tum(io.StringIO(), ["0"], np.zeros((1, 8)))


def test_read_euroc_layouts():
    ts, poses = read_trajectory(DATA / "euroc_v1_01" / "groundtruth_V1_01_easy.txt")
    assert ts[0] == "1403715274312143104.0000000000"
    # header says q_RS_w first: returned scalar-last
    np.testing.assert_allclose(poses[0], [0.8687393558, 2.2070275302, 0.9257726725, 0.6262011737, -0.5441421096, 0.361026079545, 0.4259596512])
    csv = io.StringIO(
        "#timestamp, p_RS_R_x [m], p_RS_R_y [m], p_RS_R_z [m], q_RS_w [], q_RS_x [], q_RS_y [], q_RS_z [], v..\n"
        "1403715274312143104,1,2,3,0.5,0.1,0.2,0.3,0,0,0,0,0,0,0,0,0\n"
    )
    ts, poses = read_trajectory(csv)
    assert ts == ["1403715274312143104"]
    np.testing.assert_allclose(poses[0], [1, 2, 3, 0.1, 0.2, 0.3, 0.5])
    ts, poses = read_trajectory(DATA / "tum_fr1_rpy" / "groundtruth.txt")  # TUM order kept
    assert ts[0] == "1305031229.4832"
    np.testing.assert_array_equal(poses[0], [1.3018, 0.6884, 1.5777, -0.6742, -0.5430, -0.0067, 0.5005])


def test_nanoseconds_to_seconds_exact():
    t = timestamps_to_seconds(["1403715274262142976", "1403715274312143104.0000000000"])
    assert t[0] == 1403715274 + 0.262142976
    assert t[1] - t[0] == pytest.approx(0.050000128, abs=1e-7)
    np.testing.assert_array_equal(timestamps_to_seconds(["1.5", "2"]), [1.5, 2.0])


def test_interpolation_against_scipy():
    rng = np.random.default_rng(3)
    times = np.cumsum(rng.uniform(0.005, 0.02, size=40))
    poses = _random_poses(40, seed=4)
    q = np.linspace(times[0], times[-1], 97)
    out, valid = interpolate_poses(times, poses, q, max_gap=None)
    assert valid.all()
    ref_rot = Slerp(times, Rotation.from_quat(poses[:, 3:]))(q)
    for k in range(3):
        np.testing.assert_allclose(out[:, k], np.interp(q, times, poses[:, k]), atol=1e-12)
    dots = np.abs(np.sum(out[:, 3:] * ref_rot.as_quat(), axis=1))
    np.testing.assert_allclose(dots, 1.0, atol=1e-10)
    # outside the span, or across a gap, -> invalid (NaN)
    out, valid = interpolate_poses(times, poses, [times[0] - 0.1, times[-1] + 0.1, times[5]], max_gap=1e-4)
    assert not valid.any() and np.isnan(out).all()
    out, valid = interpolate_poses(times, poses, [times[5]], max_gap=0.1)
    assert valid.all() and np.allclose(out[0, :3], poses[5, :3])
