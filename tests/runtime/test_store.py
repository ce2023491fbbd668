"""Shared keyframe store: round trips, growth past a chunk, versions, sharing with a spawned process."""
import multiprocessing as mp

import numpy as np
import pytest
import torch

from mast3r_slam.frame import Frame, Mode
from mast3r_slam.lie import Sim3
from mast3r_slam.runtime.store import KeyframeStore

H, W = 8, 12


def make_frame(fid, seed=0):
    g = torch.Generator().manual_seed(seed + fid)
    uimg = torch.randint(0, 256, (H, W, 3), generator=g).float() / 255
    f = Frame(
        frame_id=fid,
        img=((uimg.permute(2, 0, 1) - 0.5) / 0.5)[None],
        uimg=uimg,
        img_shape=(H, W),
        T_WC=Sim3.exp(torch.randn(1, 7, generator=g) * 0.3),
        X_canon=torch.randn(H * W, 3, generator=g),
        C=torch.rand(H * W, 1, generator=g) + 1,
        N=2,
        N_updates=3,
        feat=torch.randn(1, 6, 16, generator=g),
        pos=torch.randint(0, 5, (1, 6, 2), generator=g),
        K=torch.eye(3) * 3,
    )
    return f


@pytest.fixture
def store(tmp_path):
    f0 = make_frame(0)
    s = KeyframeStore.create(H, W, f0.feat, f0.pos, chunk=4, root=tmp_path)
    yield s
    s.close()


def test_roundtrip_and_growth(store):
    frames = [make_frame(i * 3) for i in range(11)]  # 11 > 2 chunks of 4
    for i, f in enumerate(frames):
        assert store.append(f) == i
    assert len(store) == 11 and store.capacity >= 11
    for i, f in enumerate(frames):
        g = store.frame(i)
        assert g.frame_id == f.frame_id and g.N == 2 and g.N_updates == 3
        assert torch.equal(g.X_canon, f.X_canon) and torch.equal(g.C, f.C)
        assert torch.allclose(g.T_WC, f.T_WC)
        assert torch.equal(g.feat, f.feat) and torch.equal(g.pos, f.pos)
        assert torch.allclose(g.uimg, f.uimg, atol=1 / 255) and torch.allclose(g.img, f.img, atol=2 / 255)
        assert torch.equal(g.K, f.K)
    assert np.array_equal(store.frame_ids(), [f.frame_id for f in frames])


def test_versions_and_poses(store):
    for i in range(6):
        store.append(make_frame(i))
    v0 = store.versions()
    f = store.frame(2)
    f.X_canon = f.X_canon + 1
    f.T_WC = Sim3.identity(1)
    store[2] = f  # pointmap write-back bumps the version but never touches the pose
    v1 = store.versions()
    assert (v1 - v0).tolist() == [0, 0, 1, 0, 0, 0]
    assert not torch.allclose(store.poses([2]), Sim3.identity(1))
    new = Sim3.exp(torch.randn(3, 7) * 0.1)
    store.set_poses([1, 4, 5], new)
    assert torch.allclose(store.poses([1, 4, 5]), new)
    assert np.array_equal(store.versions(), v1)  # poses do not bump data versions
    store.pop_last()
    assert len(store) == 5


def _child(store, q):
    try:
        f = store.frame(5)  # in the second chunk, mapped on demand in this process
        g = make_frame(100)
        idx = store.append(g)  # append from another process grows the store
        store.set("mode", int(Mode.RELOC))
        q.put((f.frame_id, float(f.X_canon.sum()), idx))
    except Exception as e:  # pragma: no cover
        q.put(repr(e))


def test_shared_with_spawned_process(store):
    for i in range(6):
        store.append(make_frame(i))
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(store, q))
    p.start()
    res = q.get(timeout=60)
    p.join(30)
    assert res[0] == 5 and abs(res[1] - float(make_frame(5).X_canon.sum())) < 1e-3 and res[2] == 6
    assert len(store) == 7 and store.frame(6).frame_id == 100 and store.mode == Mode.RELOC


def test_current_and_edges(store):
    assert store.current() is None
    f = make_frame(7)
    store.set_current(f)
    cur = store.current()
    assert cur["frame_id"] == 7 and np.allclose(cur["X"], f.X_canon.numpy())
    store.set_edges([0, 1, 0], [1, 2, 2], [False, False, True])
    ii, jj, loop = store.edges()
    assert ii.tolist() == [0, 1, 0] and jj.tolist() == [1, 2, 2] and loop.tolist() == [False, False, True]


def test_close_removes_folder(tmp_path):
    f0 = make_frame(0)
    s = KeyframeStore.create(H, W, f0.feat, f0.pos, chunk=2, root=tmp_path)
    s.append(f0)
    root = s.root
    assert root.exists()
    s.close()
    assert not root.exists()
