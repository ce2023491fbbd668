"""Mast3rPrior: caching, output layout, one batched decode for symmetric pairs, factory errors.

Uses the toy architecture TINY with synthetic weights (fast on CPU); the network itself is
checked against the original in test_parity.py.
"""
from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from mast3r_slam.errors import CheckpointError
from mast3r_slam.frame import create_frame
from mast3r_slam.network import TINY
from mast3r_slam.network.retrieval_model import RetrievalModel
from mast3r_slam.network.synthetic import synthetic_model
from mast3r_slam.priors.network import Mast3rPrior, make_mast3r_prior

pytestmark = pytest.mark.usefixtures("torch_threads")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return synthetic_model(TINY)


def _frames(n, w=80, h=60, seed=0):
    """Frames of 64x48 network images (80x60 -> 64x48)."""
    rng = np.random.default_rng(seed)
    return [create_frame(i, rng.integers(0, 256, (h, w, 3), dtype=np.uint8), img_size=64) for i in range(n)]


class _Spy:
    """Counts calls of a bound method and records the batch sizes."""

    def __init__(self, obj, name):
        self.calls = []
        self._fn = getattr(obj, name)
        setattr(obj, name, self)
        self._obj, self._name = obj, name

    def __call__(self, *a, **k):
        self.calls.append(a[0].shape[0])
        return self._fn(*a, **k)

    def restore(self):
        delattr(self._obj, self._name)


def test_encoder_features_cached(model):
    prior = Mast3rPrior(model)
    f = _frames(1)[0]
    spy = _Spy(model, "encode")
    try:
        prior.encode(f)
        feat = f.feat
        prior.encode(f)
        prior.mono(f)
        prior.asymmetric(f, f)
    finally:
        spy.restore()
    assert spy.calls == [1]
    assert f.feat is feat and feat.shape == (1, (48 // 16) * (64 // 16), TINY.enc_embed_dim)
    assert f.pos.dtype == torch.int64


def test_mono_and_asymmetric_layout(model):
    prior = Mast3rPrior(model)
    fi, fj = _frames(2, seed=1)
    HW = fi.H * fi.W
    X, C = prior.mono(fi)
    assert X.shape == (HW, 3) and C.shape == (HW, 1) and bool((C >= 1).all())
    ii, ji = prior.asymmetric(fi, fj)
    for p in (ii, ji):
        assert p.X.shape == (HW, 3) and p.C.shape == (HW, 1) and p.D.shape == (HW, 24) and p.Q.shape == (HW, 1)
        torch.testing.assert_close(p.D.norm(dim=-1), torch.ones(HW))
    # flattening is row-major: pixel (u, v) -> n = u + W v
    res1, _ = model.decode(fi.feat, fi.pos, fj.feat, fj.pos, fi.img_shape, fj.img_shape)
    u, v = 17, 31
    torch.testing.assert_close(ii.X[u + fi.W * v], res1["pts3d"][0, v, u])
    # mono is the frame paired with itself
    mi, _ = prior.asymmetric(fi, fi)
    torch.testing.assert_close(mi.X, X)


def test_symmetric_is_one_batched_decode_in_order_ii_ji_jj_ij(model):
    prior = Mast3rPrior(model)
    frames = _frames(4, seed=2)
    for f in frames:
        prior.encode(f)
    fi, fj = frames[:2], frames[2:]
    spy = _Spy(model, "decode")
    try:
        pred = prior.symmetric(fi, fj)
    finally:
        spy.restore()
    assert spy.calls == [4]  # 2 pairs -> 4 directed pairs in ONE decoder call
    HW = frames[0].H * frames[0].W
    assert pred.X.shape == (4, 2, HW, 3) and pred.D.shape == (4, 2, HW, 24) and pred.Q.shape == (4, 2, HW, 1)
    for b in range(2):
        ii, ji = prior.asymmetric(fi[b], fj[b])
        jj, ij = prior.asymmetric(fj[b], fi[b])
        for k, ref in enumerate((ii, ji, jj, ij)):
            for name in ("X", "C", "D", "Q"):
                torch.testing.assert_close(getattr(pred, name)[k, b], getattr(ref, name), rtol=2e-4, atol=2e-4)


def test_retrieval_features_from_cached_tokens(model):
    rm = RetrievalModel(TINY.enc_embed_dim, prewhiten=True, nfeat=5)
    rm.codebook = torch.randn(32, TINY.enc_embed_dim)
    prior = Mast3rPrior(model, rm)
    f = _frames(1, seed=3)[0]
    feats = prior.retrieval_features(f)
    assert feats.shape == (5, TINY.enc_embed_dim)
    rm.nfeat = 300  # more than the 12 tokens of a 64x48 image: all are kept
    assert prior.retrieval_features(f).shape == (12, TINY.enc_embed_dim)
    assert prior.retrieval_codebook().shape == (32, TINY.enc_embed_dim)
    with pytest.raises(CheckpointError, match="retrieval"):
        Mast3rPrior(model).retrieval_codebook()


def test_prior_description_and_flags(model):
    prior = Mast3rPrior(model)
    assert prior.name == "mast3r" and not prior.is_stand_in and "float32" in prior.description


def test_factory_reports_missing_files(tmp_path):
    with pytest.raises(CheckpointError) as e:
        make_mast3r_prior(tmp_path, "cpu")
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path) in msg and "download_checkpoints.sh" in msg
    assert "MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric.pth" in msg and "codebook" in msg
    # a present but broken main file is named too
    (tmp_path / "MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        make_mast3r_prior(tmp_path, "cpu", retrieval=False)


def test_factory_loads_all_three_files(tmp_path, monkeypatch):
    """End to end through the factory with small stand-in files (the network loader is stubbed)."""
    import pickle

    import mast3r_slam.network as net

    d = 1024
    rng = np.random.default_rng(0)
    torch.save(
        {"model": {"prewhiten.m": torch.zeros(1, d, dtype=torch.float64), "prewhiten.p": torch.eye(d, dtype=torch.float64)},
         "args": argparse.Namespace(prewhiten="yes", postwhiten=None, hdims="", residual=False, featweights="l2norm",
                                    nfeat=300, nclusters=8, freeze_backbone=True, imsize=512, pretrained="x")},
        tmp_path / "MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric_retrieval_trainingfree.pth",
    )
    with open(tmp_path / "MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric_retrieval_codebook.pkl", "wb") as f:
        pickle.dump({"type": "Codebook", "params": {"size": 8},
                     "state": {"centroids": rng.standard_normal((8, d)).astype(np.float32)}}, f)
    (tmp_path / "MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric.pth").write_bytes(b"stub")
    monkeypatch.setattr(net, "load_mast3r", lambda *a, **k: synthetic_model(TINY))
    prior = make_mast3r_prior(tmp_path, "cpu")
    assert prior.retrieval.nfeat == 300 and prior.retrieval_codebook().shape == (8, d)
