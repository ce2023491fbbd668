"""Retrieval head (from a synthetic trainingfree checkpoint) and the ASMK database.

The database scores are checked against a plain-loop evaluation of the ASMK formula
(spec: network §7.3): per-word residual sums, sign bits, sim = 1 - 2 hamming / D, sim >= 0,
sim^3, normalised by sqrt(|W_q| |W_d|).
"""
from __future__ import annotations

import argparse
import math
import pickle

import numpy as np
import pytest
import torch

from mast3r_slam.errors import CheckpointError
from mast3r_slam.network.checkpoint import codebook_path_for
from mast3r_slam.network.retrieval_model import load_retrieval_model
from mast3r_slam.retrieval import RetrievalDatabase, pack_bits, popcount_bytes

pytestmark = pytest.mark.usefixtures("torch_threads")

D_IN = 48


def _write_retrieval_files(tmp_path, *, hdims="", residual=False, postwhiten=False, nfeat=30, K=24, size=None, seed=0):
    rng = np.random.default_rng(seed)
    d_out = int(hdims.split("_")[-1]) if hdims else D_IN
    sd = {
        "prewhiten.m": torch.from_numpy(rng.standard_normal((1, D_IN))),
        "prewhiten.p": torch.from_numpy(rng.standard_normal((D_IN, D_IN)) / math.sqrt(D_IN)),
    }
    if hdims:
        dims = [int(x) for x in hdims.split("_")]
        d, i = D_IN, 0
        for h in dims[:-1]:
            sd[f"projector.{i}.weight"] = torch.randn(h, d) / math.sqrt(d)
            sd[f"projector.{i}.bias"] = torch.randn(h) * 0.1
            sd[f"projector.{i + 1}.weight"] = 1 + 0.1 * torch.randn(h)
            sd[f"projector.{i + 1}.bias"] = 0.1 * torch.randn(h)
            d, i = h, i + 3
        sd[f"projector.{i}.weight"] = torch.randn(dims[-1], d) / math.sqrt(d)
        sd[f"projector.{i}.bias"] = torch.randn(dims[-1]) * 0.1
    if postwhiten:
        sd["postwhiten.m"] = torch.from_numpy(rng.standard_normal((1, d_out)))
        sd["postwhiten.p"] = torch.from_numpy(rng.standard_normal((d_out, d_out)) / math.sqrt(d_out))
    args = argparse.Namespace(
        freeze_backbone=True, prewhiten="", hdims=hdims, residual=residual, postwhiten="" if postwhiten else None,
        featweights="l2norm", nfeat=nfeat, imsize=512, nclusters=K, pretrained="unused.pth",
    )
    pth = tmp_path / "RET_trainingfree.pth"
    torch.save({"model": sd, "args": args}, pth)
    cb = rng.standard_normal((K, d_out)).astype(np.float32)
    with open(tmp_path / "RET_codebook.pkl", "wb") as f:
        pickle.dump({"type": "Codebook", "params": {"size": size if size is not None else K}, "state": {"centroids": cb}}, f)
    return pth, sd, cb


def test_retrieval_model_follows_the_formula(tmp_path):
    pth, sd, cb = _write_retrieval_files(tmp_path)
    assert codebook_path_for(pth).name == "RET_codebook.pkl"
    model = load_retrieval_model(pth)
    assert model.nfeat == 30 and model.out_dim == D_IN
    np.testing.assert_array_equal(model.codebook.numpy(), cb)
    tokens = torch.randn(1, 40, D_IN)
    out, idx = model(tokens, return_indices=True)
    # plain float64 reference: whiten, attention = row norms, top-30 by descending attention
    x = tokens[0].double().numpy()
    z = (x - sd["prewhiten.m"].numpy()) @ sd["prewhiten.p"].numpy()
    z32 = z.astype(np.float32)
    order = np.argsort(-np.linalg.norm(z32, axis=1), kind="stable")[:30]
    assert idx[0].tolist() == order.tolist()
    np.testing.assert_allclose(out[0].numpy(), z32[order], rtol=1e-6, atol=1e-6)


def test_retrieval_model_projector_residual_postwhiten(tmp_path):
    pth, sd, _ = _write_retrieval_files(tmp_path, hdims="64_48", residual=True, postwhiten=True, nfeat=-0.25)
    model = load_retrieval_model(pth)
    tokens = torch.randn(1, 40, D_IN)
    out, idx = model(tokens, return_indices=True)
    assert out.shape == (1, 10, D_IN)  # nfeat -0.25 -> a quarter of the 40 tokens
    z = ((tokens[0].double() - sd["prewhiten.m"]) @ sd["prewhiten.p"]).float()
    h = torch.nn.functional.gelu(torch.nn.functional.layer_norm(
        z @ sd["projector.0.weight"].T + sd["projector.0.bias"], (64,), sd["projector.1.weight"], sd["projector.1.bias"]))
    z = z + h @ sd["projector.3.weight"].T + sd["projector.3.bias"]
    a = z.norm(dim=-1)
    w = ((z.double() - sd["postwhiten.m"]) @ sd["postwhiten.p"]).float()
    ref_idx = a.topk(10).indices
    assert idx[0].tolist() == ref_idx.tolist()
    torch.testing.assert_close(out[0], w[ref_idx], rtol=1e-5, atol=1e-5)


def test_retrieval_checkpoint_errors(tmp_path):
    pth, _, _ = _write_retrieval_files(tmp_path, size="64k")
    with pytest.raises(CheckpointError, match="nclusters"):
        load_retrieval_model(pth)
    ckpt = torch.load(pth, weights_only=False)
    del ckpt["model"]["prewhiten.p"]
    torch.save(ckpt, pth)
    with pytest.raises(CheckpointError, match="missing"):
        load_retrieval_model(pth, with_codebook=False)
    (tmp_path / "RET_codebook.pkl").unlink()
    pth, _, _ = _write_retrieval_files(tmp_path)
    (tmp_path / "RET_codebook.pkl").unlink()
    with pytest.raises(CheckpointError, match="RET_codebook.pkl.*not found"):
        load_retrieval_model(pth)


# ---------------------------------------------------------------------------- ASMK


def _nearest(x, C, m):
    d = ((x[:, None, :] - C[None]) ** 2).sum(-1)
    return np.argsort(d, axis=1, kind="stable")[:, :m]


def _bits_per_word(x, C, m):
    """{word: sign bits} of one image (plain loops)."""
    assign = _nearest(x, C, m)
    out = {}
    for w in sorted(set(assign.ravel().tolist())):
        s = np.zeros(C.shape[1])
        for i in range(x.shape[0]):
            if w in assign[i]:
                s += x[i] - C[w]
        out[w] = s > 0
    return out


def _brute_scores(db_images, query, C):
    q = _bits_per_word(query, C, 5)
    scores = []
    for img in db_images:
        d = _bits_per_word(img, C, 1)
        total = 0.0
        for w, bq in q.items():
            if w in d:
                sim = 1.0 - 2.0 * np.count_nonzero(bq != d[w]) / C.shape[1]
                if sim >= 0:
                    total += sim**3
        scores.append(total / math.sqrt(len(q) * len(d)))
    return np.array(scores)


def _images(n=6, k=30, D=45, K=24, seed=0):
    """Images built around their own visual words, plus a noisy re-observation of each."""
    rng = np.random.default_rng(seed)
    C = rng.standard_normal((K, D)).astype(np.float32)
    imgs, again = [], []
    for i in range(n):
        words = rng.choice(K, 5, replace=False)
        base = C[rng.choice(words, k)] + 0.6 * rng.standard_normal((k, D))
        imgs.append(base.astype(np.float32))
        again.append((base + 0.2 * rng.standard_normal((k, D))).astype(np.float32))
    return C, imgs, again


def test_scores_equal_brute_force_and_self_is_best():
    C, imgs, again = _images()
    db = RetrievalDatabase(torch.from_numpy(C), "cpu")
    for x in imgs:
        db.add(torch.from_numpy(x))
    assert len(db) == 6
    for i, q in enumerate(again):
        s = db.scores(torch.from_numpy(q))
        assert s.dtype == torch.float64
        np.testing.assert_allclose(s.numpy(), _brute_scores(imgs, q, C), rtol=0, atol=1e-12)
        assert int(s.argmax()) == i  # a re-observation finds its own image
        assert db.query(torch.from_numpy(q), k=1) == [i]
    # an identical copy scores highest of all
    s_self = db.scores(torch.from_numpy(imgs[2]))
    top2 = s_self.topk(2).values
    assert int(s_self.argmax()) == 2 and top2[0] > 5 * top2[1]


def test_update_topk_threshold_and_insert_semantics():
    C, imgs, again = _images(n=8, seed=1)
    db = RetrievalDatabase(torch.from_numpy(C))
    ref = RetrievalDatabase(torch.from_numpy(C))
    for n, x in enumerate(imgs):
        scores_before = db.scores(torch.from_numpy(x)).numpy()
        hits = db.update(torch.from_numpy(x), add_after_query=True, k=3, min_thresh=5e-3)
        ref.add(torch.from_numpy(x))
        assert len(db) == n + 1
        if n == 0:
            assert hits == []
            continue
        order = np.argsort(-scores_before, kind="stable")[: min(3, n)]
        assert hits == [int(i) for i in order if scores_before[i] > 5e-3]
    # inserting after a query reuses the query's nearest word: same inverted file as plain adds
    assert db._size == ref._size
    for a in ("_words", "_imgs", "_bits"):
        assert torch.equal(getattr(db, a)[: db._size], getattr(ref, a)[: ref._size])
    assert torch.equal(db._norm, ref._norm)
    # query without insert; k and threshold
    q = torch.from_numpy(again[5])
    assert db.update(q, add_after_query=False, k=3, min_thresh=0.0)[0] == 5 and len(db) == 8
    assert len(db.query(q, k=2)) == 2
    assert db.query(q, k=8, min_thresh=10.0) == []
    s = db.scores(q)
    thr = float(np.sort(s.numpy())[-3])  # keep exactly the two scores above the third best
    assert db.query(q, k=8, min_thresh=thr) == [int(i) for i in np.argsort(-s.numpy())[:2]]


def test_database_grows_past_its_initial_capacity():
    rng = np.random.default_rng(3)
    C = rng.standard_normal((300, 16)).astype(np.float32)
    db = RetrievalDatabase(torch.from_numpy(C))
    for _ in range(12):
        db.add(torch.from_numpy(rng.standard_normal((200, 16)).astype(np.float32)))
    assert db._size > 1024 and len(db) == 12 and int(db._imgs[db._size - 1]) == 11


def test_bit_packing_and_popcount():
    bits = torch.zeros(2, 45, dtype=torch.bool)
    bits[0, 0] = True  # element 0 -> most significant bit of byte 0
    bits[1, 44] = True
    bits[1, 8:16] = True
    packed = pack_bits(bits)
    assert packed.shape == (2, 6) and packed.dtype == torch.uint8
    assert packed[0].tolist() == [128, 0, 0, 0, 0, 0]
    assert packed[1].tolist() == [0, 255, 0, 0, 0, 8]
    assert popcount_bytes(packed).tolist() == [1, 9]
    assert int(popcount_bytes(packed[0] ^ packed[1])) == 10


def test_retrieval_head_and_database_end_to_end(tmp_path):
    """Synthetic checkpoint + codebook: every image, observed again with noise, retrieves itself."""
    pth, _, _ = _write_retrieval_files(tmp_path, nfeat=25, K=24)
    model = load_retrieval_model(pth)
    db = RetrievalDatabase(model.codebook)
    g = torch.Generator().manual_seed(5)
    images = [torch.randn(1, 40, D_IN, generator=g) for _ in range(6)]
    for i, tok in enumerate(images):
        hits = db.update(model(tok)[0], add_after_query=True, k=3, min_thresh=0.0)
        assert len(db) == i + 1 and len(hits) == min(i, 3)
    for i, tok in enumerate(images):
        noisy = tok + 0.1 * torch.randn(tok.shape, generator=g)
        assert db.query(model(noisy)[0], k=3)[0] == i
