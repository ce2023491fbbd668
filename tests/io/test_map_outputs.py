"""PLY, GLB and the results folder."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from scipy.spatial.transform import Rotation

from mast3r_slam.io.glb import frustum_vertices, glb_bytes, read_glb, write_glb
from mast3r_slam.io.ply import ply_bytes, read_ply, write_ply
from mast3r_slam.io.results import MapKeyframe, ResultsWriter, map_points, safe_name
from mast3r_slam.io.trajectory import read_tum


def test_ply_binary_layout_and_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    xyz = rng.normal(size=(1000, 3)).astype(np.float32)
    rgb = rng.integers(0, 256, size=(1000, 3), dtype=np.uint8)
    conf = rng.uniform(1, 10, size=1000).astype(np.float32)
    data = ply_bytes(xyz, rgb, conf)
    header, body = data.split(b"end_header\n")
    assert b"format binary_little_endian 1.0" in header and b"element vertex 1000" in header
    assert len(body) == 1000 * (12 + 3 + 4)
    x0, y0, z0, r0, g0, b0, c0 = struct.unpack_from("<fffBBBf", body, 0)
    assert (x0, y0, z0) == tuple(xyz[0].tolist()) and (r0, g0, b0) == tuple(rgb[0].tolist()) and c0 == conf[0]
    p = tmp_path / "m.ply"
    write_ply(p, xyz, rgb)  # without confidence
    v = read_ply(p)
    assert list(v) == ["x", "y", "z", "red", "green", "blue"]
    np.testing.assert_array_equal(np.stack([v["x"], v["y"], v["z"]], 1), xyz)
    np.testing.assert_array_equal(np.stack([v["red"], v["green"], v["blue"]], 1), rgb)


def _accessor_array(gltf, binary, i):
    acc = gltf["accessors"][i]
    view = gltf["bufferViews"][acc["bufferView"]]
    dtype = {5126: "<f4", 5121: "u1", 5125: "<u4"}[acc["componentType"]]
    ncomp = {"SCALAR": 1, "VEC3": 3, "VEC4": 4}[acc["type"]]
    assert view["byteOffset"] % 4 == 0
    a = np.frombuffer(binary, dtype=dtype, count=acc["count"] * ncomp, offset=view["byteOffset"])
    assert view["byteLength"] == a.nbytes
    return a.reshape(acc["count"], ncomp) if ncomp > 1 else a


def test_glb_structure_accessors_and_binary(tmp_path):
    rng = np.random.default_rng(1)
    pts = rng.normal(size=(501, 3)).astype(np.float32)
    cols = rng.integers(0, 256, size=(501, 3), dtype=np.uint8)
    T = np.array([[0, 0, 0, 0, 0, 0, 1.0], [1, 0, 0, *Rotation.from_euler("y", 90, degrees=True).as_quat()]])
    K = np.array([[100.0, 0, 64], [0, 100, 48], [0, 0, 1]])
    fr = frustum_vertices(T, K, (128, 96), size=0.5)
    # camera 0: centre at origin, corner (0,0) at ((0-64)/100, (0-48)/100, 1) * 0.5
    np.testing.assert_allclose(fr[0, 0], [0, 0, 0])
    np.testing.assert_allclose(fr[0, 1], [-0.32, -0.24, 0.5])
    # camera 1: rotated 90 deg about y (z axis -> +x), translated by +1 in x
    np.testing.assert_allclose(fr[1, 1], [1 + 0.5, -0.24, 0.32], atol=1e-12)
    path = tmp_path / "scene.glb"
    write_glb(path, pts, cols, fr)
    data = path.read_bytes()
    assert data[:4] == b"glTF" and struct.unpack_from("<I", data, 4)[0] == 2
    assert struct.unpack_from("<I", data, 8)[0] == len(data) and len(data) % 4 == 0
    gltf, binary = read_glb(data)
    assert gltf["asset"]["version"] == "2.0"
    assert gltf["buffers"][0]["byteLength"] == len(binary)
    meshes = {m["name"]: m["primitives"][0] for m in gltf["meshes"]}
    assert meshes["map"]["mode"] == 0 and meshes["cameras"]["mode"] == 1
    pos = _accessor_array(gltf, binary, meshes["map"]["attributes"]["POSITION"])
    np.testing.assert_array_equal(pos, pts)
    acc = gltf["accessors"][meshes["map"]["attributes"]["POSITION"]]
    assert acc["count"] == 501
    np.testing.assert_allclose(acc["min"], pts.min(0), rtol=1e-6)
    np.testing.assert_allclose(acc["max"], pts.max(0), rtol=1e-6)
    col_acc = gltf["accessors"][meshes["map"]["attributes"]["COLOR_0"]]
    assert col_acc["normalized"] and col_acc["type"] == "VEC4" and col_acc["componentType"] == 5121
    col = _accessor_array(gltf, binary, meshes["map"]["attributes"]["COLOR_0"])
    np.testing.assert_array_equal(col[:, :3], cols)
    assert (col[:, 3] == 255).all()
    fpos = _accessor_array(gltf, binary, meshes["cameras"]["attributes"]["POSITION"])
    idx = _accessor_array(gltf, binary, meshes["cameras"]["indices"])
    assert len(fpos) == 10 and len(idx) == 2 * 8 * 2 and idx.max() == 9
    np.testing.assert_allclose(fpos, fr.reshape(-1, 3), atol=1e-6)
    # scene graph: root rotates 180 deg about x and holds both meshes
    root = gltf["nodes"][gltf["scenes"][0]["nodes"][0]]
    assert root["rotation"] == [1.0, 0.0, 0.0, 0.0] and sorted(gltf["nodes"][c]["mesh"] for c in root["children"]) == [0, 1]
    # an empty scene is still a valid file
    g, b = read_glb(glb_bytes())
    assert g["asset"]["version"] == "2.0" and b == b""


def _keyframe(ts, T, H=6, W=8, depth=2.0, conf=3.0, K=None, seed=0):
    rng = np.random.default_rng(seed)
    v, u = np.mgrid[0:H, 0:W].astype(np.float32)
    X = np.stack([(u - W / 2) * 0.1 * depth, (v - H / 2) * 0.1 * depth, np.full_like(u, depth)], -1)
    X += rng.normal(scale=0.01, size=X.shape).astype(np.float32)
    C = np.full((H, W), conf, np.float32)
    C[0, :] = 1.0  # first row below the threshold
    rgb = rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)
    return MapKeyframe(ts, torch.tensor(T, dtype=torch.float32), torch.from_numpy(X.reshape(-1, 3)), torch.from_numpy(C.reshape(-1, 1)), rgb, K)


def test_map_points_sim3_and_filtering():
    q = Rotation.from_euler("z", 30, degrees=True).as_quat()
    kfs = [_keyframe("0.0", [0, 0, 0, 0, 0, 0, 1, 1]), _keyframe("1.5", [1, 2, 3, *q, 2.0], seed=1)]
    xyz, rgb, conf = map_points(kfs, c_thresh=1.5)
    assert len(xyz) == 2 * 5 * 8  # 5 of 6 rows kept per keyframe
    a0, a1 = kfs[0].arrays(), kfs[1].arrays()
    np.testing.assert_allclose(xyz[:40], a0["X"][1:].reshape(-1, 3), atol=1e-6)
    R = Rotation.from_quat(q).as_matrix()
    ref = 2.0 * a1["X"][1:].reshape(-1, 3) @ R.T + [1, 2, 3]
    np.testing.assert_allclose(xyz[40:], ref, atol=1e-5)
    np.testing.assert_array_equal(rgb[40:], a1["rgb"][1:].reshape(-1, 3))
    assert (conf == 3.0).all()


def test_map_points_calibrated_rays_and_mixed_sizes():
    K = np.array([[10.0, 0, 4], [0, 10, 3], [0, 0, 1]])
    kf = _keyframe("0", [0, 0, 0, 0, 0, 0, 1, 1], K=K)
    xyz, _, _ = map_points([kf], c_thresh=0)
    v, u = np.mgrid[0:6, 0:8]
    z = kf.arrays()["X"][..., 2]
    np.testing.assert_allclose(xyz[:, 0], ((u - 4) / 10 * z).reshape(-1), atol=1e-6)
    np.testing.assert_allclose(xyz[:, 1], ((v - 3) / 10 * z).reshape(-1), atol=1e-6)
    small = _keyframe("1", [0, 0, 0, 0, 0, 0, 1, 1], H=4, W=4)
    xyz, _, _ = map_points([kf, small, kf], c_thresh=1.5)
    assert len(xyz) == 40 + 12 + 40
    # batching (bounded memory) does not change the result
    kfs = [_keyframe(str(i), [i, 0, 0, 0, 0, 0, 1, 1 + i], seed=i) for i in range(5)] + [small]
    a, b = map_points(kfs, batch=2), map_points(kfs, batch=32)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert len(a[0]) == 5 * 40 + 12


def test_results_writer_all_parts(tmp_path):
    q = Rotation.from_euler("x", 10, degrees=True).as_quat()
    kfs = [_keyframe("1305031229.528748", [0, 0, 0, 0, 0, 0, 1, 1]), _keyframe("1305031230.1", [0.5, 0, 0, *q, 1.5], seed=2)]
    out = tmp_path / "run"
    (out / "keyframes").mkdir(parents=True)
    (out / "keyframes" / "stale.png").write_bytes(b"old")
    (out / "notes.txt").write_text("mine")  # not ours: kept
    w = ResultsWriter(out)
    assert not (out / "keyframes").exists() and (out / "notes.txt").exists()
    frame_ts = ["1305031229.528748", "1305031229.8", "1305031230.1"]
    frame_T = torch.tensor([[0, 0, 0, 0, 0, 0, 1, 1], [0.25, 0, 0, 0, 0, 0, 1, 1.2], [0.5, 0, 0, *q, 1.5]], dtype=torch.float64)
    w.write_all(
        frame_timestamps=frame_ts, frame_T_WC=frame_T, keyframes=kfs, metrics={"frames": 3, "fps": np.float32(12.5)}, config={"use_calib": False}
    )
    ts, poses = read_tum(out / "trajectory.txt")
    assert ts == frame_ts
    np.testing.assert_array_equal(poses, frame_T[:, :7].numpy())  # SE(3) part, scale dropped
    ts, poses = read_tum(out / "trajectory_keyframes.txt")
    assert ts == ["1305031229.528748", "1305031230.1"]
    np.testing.assert_allclose(poses[1], [0.5, 0, 0, *q], atol=1e-7)
    v = read_ply(out / "map.ply")
    assert len(v["x"]) == 80 and (v["confidence"] > 1.5).all()
    gltf, _ = read_glb(out / "scene.glb")
    assert [gltf["accessors"][m["primitives"][0]["attributes"]["POSITION"]]["count"] for m in gltf["meshes"]] == [80, 10]
    png = np.asarray(Image.open(out / "keyframes" / "1305031230.1.png"))
    np.testing.assert_array_equal(png, kfs[1].arrays()["rgb"])
    npz = np.load(out / "keyframes" / "1305031230.1.npz")
    a = kfs[1].arrays()
    np.testing.assert_array_equal(npz["depth"], a["X"][..., 2])
    np.testing.assert_array_equal(npz["pointmap"], a["X"])
    np.testing.assert_array_equal(npz["confidence"], a["C"])
    np.testing.assert_allclose(npz["T_WC"], [0.5, 0, 0, *q, 1.5], atol=1e-7)
    assert str(npz["timestamp"]) == "1305031230.1" and np.isnan(npz["K"]).all()
    m = json.loads((out / "metrics.json").read_text())
    assert m == {"frames": 3, "fps": 12.5}
    w.write_metrics({"ate": {"rmse": 0.01}})  # merged
    assert json.loads((out / "metrics.json").read_text())["frames"] == 3
    assert yaml.safe_load((out / "config.yaml").read_text()) == {"use_calib": False}
    assert not list(out.glob(".*.tmp")) and not list((out / "keyframes").glob(".*.tmp"))


def test_failed_write_keeps_previous_file_and_other_parts(tmp_path):
    w = ResultsWriter(tmp_path)
    w.write_trajectory(["0"], np.array([[0, 0, 0, 0, 0, 0, 1, 1.0]]))
    before = (tmp_path / "trajectory.txt").read_text()
    with pytest.raises(ValueError):
        w.write_all(frame_timestamps=["0", "1"], frame_T_WC=np.zeros((2, 5)), metrics={"frames": 2})
    assert (tmp_path / "trajectory.txt").read_text() == before  # untouched by the failed write
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"frames": 2}  # later part still written
    assert not list(tmp_path.glob(".*.tmp"))


def test_safe_names():
    assert safe_name("1305031229.528748") == "1305031229.528748"
    assert safe_name("a/b:c") == "a_b_c"
