"""The ground-truth prior (stand-in for the network): exact geometry, error ranges, confidences,
descriptors, retrieval features, determinism, batching, pickling and real TUM data."""
import dataclasses
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from mast3r_slam.errors import ConfigError, DatasetError
from mast3r_slam.frame import create_frame
from mast3r_slam.lie import umeyama
from mast3r_slam.priors.base import Prior
from mast3r_slam.priors.oracle import OracleErrorModel, OraclePrior, make_oracle_prior, pose7_to_matrix

LOOP = "synthetic:loop:96x72:60"  # same specs as tests/synthetic: generated once per session
LOST = "synthetic:lost:64x48:40"
DYN = "synthetic:dynamic:96x72:60"
IMG = 96  # 96x72 -> network image 96x64 (centre crop of 4 rows top and bottom)
TUM = Path(__file__).resolve().parents[1] / "data" / "tum_fr1_rpy"


@pytest.fixture(scope="module")
def loop(make_seq):
    return make_seq(LOOP)


@pytest.fixture(scope="module")
def frames(loop):
    return [create_frame(i, loop[i].rgb, img_size=IMG) for i in range(len(loop))]


@pytest.fixture(scope="module")
def exact(loop):
    return make_oracle_prior(loop, {"exact": True, "img_size": IMG})


@pytest.fixture(scope="module")
def noisy(loop):
    return make_oracle_prior(loop, {"img_size": IMG})


def _gt_points(ds, i, top=4):
    """Ground-truth points of the network image of frame i (raw pixels, rows cropped) [HW, 3]."""
    z = ds[i].depth[top : top + 64]
    K = ds.K
    v, u = np.mgrid[top : top + 64, 0:96]
    return np.stack([(u - K[0, 2]) / K[0, 0] * z, (v - K[1, 2]) / K[1, 1] * z, z], -1).reshape(-1, 3)


def _rel(ds, i, j):
    return np.linalg.inv(pose7_to_matrix(ds[i].T_WC_gt)) @ pose7_to_matrix(ds[j].T_WC_gt)


def test_labelled_as_stand_in(noisy):
    assert isinstance(noisy, Prior) and noisy.is_stand_in and noisy.name == "oracle"
    assert "ground-truth prior (not the network)" in noisy.description


def test_exact_model_reproduces_ground_truth(loop, frames, exact):
    res_ii, res_ji = exact.asymmetric(frames[10], frames[12])
    assert res_ii.X.shape == (96 * 64, 3) and res_ji.D.shape == (96 * 64, 24)
    np.testing.assert_allclose(res_ii.X.numpy(), _gt_points(loop, 10), atol=2e-5)
    T = _rel(loop, 10, 12)
    ref = _gt_points(loop, 12) @ T[:3, :3].T + T[:3, 3]  # X_ji = T_ij X_j
    np.testing.assert_allclose(res_ji.X.numpy(), ref, atol=2e-5)
    X, C = exact.mono(frames[5])
    np.testing.assert_allclose(X.numpy(), _gt_points(loop, 5), atol=2e-5)
    assert C.shape == (96 * 64, 1) and C.min() >= 1


def test_resized_network_image_uses_the_true_pixel_geometry(loop):
    prior = make_oracle_prior(loop, {"exact": True, "img_size": 48})  # 96x72 -> 48x36 -> crop 48x32
    f = create_frame(7, loop[7].rgb, img_size=48)
    assert f.img_shape == (32, 48)
    X, _ = prior.mono(f)
    K = loop.K
    P = X.numpy().astype(np.float64)
    u = K[0, 0] * P[:, 0] / P[:, 2] + K[0, 2]
    v = K[1, 1] * P[:, 1] / P[:, 2] + K[1, 2]
    vv, uu = np.mgrid[0:32, 0:48]
    # network pixel (u', v') sees the raw point at x = 2 (u' + 0.5) - 0.5, y = 2 (v' + 2 + 0.5) - 0.5
    np.testing.assert_allclose(u, (2 * uu + 0.5).ravel(), atol=1e-3)
    np.testing.assert_allclose(v, (2 * (vv + 2) + 0.5).ravel(), atol=1e-3)


def _alignment_errors(exact, prior, frames, pairs):
    """Per decode: log of the metric scale of X_ii, rotation (deg) and translation (fraction of
    depth) of the similarity aligning ground-truth X_ji to the predicted X_ji (co-visible pixels)."""
    log_s, rot, trans = [], [], []
    for i, j in pairs:
        g1, g2 = exact.asymmetric(frames[i], frames[j])
        n1, n2 = prior.asymmetric(frames[i], frames[j])
        log_s.append(math.log(float((n1.X[:, 2] / g1.X[:, 2]).median())))
        co = n2.C[:, 0] > n2.C[:, 0].median()  # co-visible pixels (occluded ones have low C)
        R, t, _ = umeyama(g2.X[co].double(), n2.X[co].double())
        rot.append(math.degrees(math.acos(min(1.0, (float(torch.trace(R)) - 1) / 2))))
        trans.append(float(t.norm()) / float(g1.X[:, 2].median()))
    return np.array(log_s), np.array(rot), np.array(trans)


def test_default_errors_are_in_the_intended_ranges(loop, frames, exact, noisy):
    pairs = [(i, i + 2) for i in range(0, 56, 5)]
    # pose and scale errors alone: the alignment recovers exactly the injected perturbation
    pose_only = OraclePrior(loop, dataclasses.replace(exact.error_model, scale_sigma=0.03, rot_sigma_deg=0.5, trans_sigma=0.01), img_size=IMG)
    log_s, rot, trans = _alignment_errors(exact, pose_only, frames, pairs)
    assert 0.015 < log_s.std() < 0.06, log_s.std()  # per-decode metric scale ~3 %
    assert 0.25 < np.sqrt(np.mean(rot**2)) < 0.85, rot  # relative pose error 0.5 deg RMS
    assert 0.003 < np.sqrt(np.mean(trans**2)) < 0.03, trans  # ~1 % of the depth
    # the full default model (depth noise, focal error, edge smoothing) stays close to that
    log_s, rot, trans = _alignment_errors(exact, noisy, frames, pairs)
    assert 0.015 < log_s.std() < 0.06 and np.sqrt(np.mean(rot**2)) < 2.0 and np.median(trans) < 0.05, (log_s, rot, trans)
    # smooth + per-pixel depth noise of a frame's own pointmap: ~1.5 % around the decode's scale
    g1, _ = exact.asymmetric(frames[20], frames[22])
    n1, _ = noisy.asymmetric(frames[20], frames[22])
    rel = (n1.X[:, 2] / g1.X[:, 2]).log()
    assert 0.005 < float((rel - rel.median()).abs().median()) < 0.03


def test_confidences_low_at_depth_edges_and_in_realistic_ranges(loop, frames, noisy):
    res_ii, res_ji = noisy.asymmetric(frames[30], frames[31])
    z = torch.from_numpy(loop[30].depth[4:68]).float()
    lz = z.log()
    jump = torch.zeros_like(z)
    jump[:, 1:] = (lz[:, 1:] - lz[:, :-1]).abs()
    jump[1:] = torch.maximum(jump[1:], (lz[1:] - lz[:-1]).abs())
    edge = (jump > 0.15).reshape(-1)
    flat = (jump < 0.02).reshape(-1)
    C = res_ii.C[:, 0]
    assert edge.sum() > 20
    assert float(C[edge].median()) < 0.35 * float(C[flat].median())
    assert float(C.min()) >= 1.0
    assert 6 < float(C[flat].median()) < 16 and float(C.quantile(0.99)) < 30
    Q = res_ii.Q[:, 0]
    assert float(Q.min()) > 0 and float((Q > 1.5).float().mean()) > 0.6  # most pixels pass Q_conf
    assert float(res_ji.C[:, 0].median()) < float(C.median())  # the cross view is less certain


def test_occluded_and_unseen_pixels_get_low_confidence(loop, frames, noisy):
    # frames 0 and 2 of this short (fast) loop overlap by about half
    _, res_ji = noisy.asymmetric(frames[0], frames[2])
    T = _rel(loop, 0, 2)
    P = _gt_points(loop, 2) @ T[:3, :3].T + T[:3, 3]
    K = loop.K
    u = K[0, 0] * P[:, 0] / P[:, 2] + K[0, 2]
    v = K[1, 1] * P[:, 1] / P[:, 2] + K[1, 2] - 4
    outside = torch.from_numpy((P[:, 2] <= 0) | (u < -1) | (u > 96) | (v < -1) | (v > 64))
    assert 0.2 < float(outside.float().mean()) < 0.7
    assert float(res_ji.C[outside].median()) < 0.4 * float(res_ji.C[~outside].median())
    assert float(res_ji.Q[outside].median()) < 1.5 < float(res_ji.Q[~outside].median())


def test_deterministic_and_consistent_within_a_frame(loop, frames, noisy):
    a1, a2 = noisy.asymmetric(frames[3], frames[5])
    b1, b2 = noisy.asymmetric(frames[3], frames[5])
    assert torch.equal(a1.X, b1.X) and torch.equal(a2.X, b2.X) and torch.equal(a2.Q, b2.Q)
    c1, _ = noisy.asymmetric(frames[3], frames[8])  # another decode of frame 3: same up to scale
    ratio = c1.X / a1.X
    assert float(ratio.std()) < 1e-5 and abs(float(ratio.mean()) - 1) > 1e-4
    other = make_oracle_prior(loop, {"img_size": IMG, "seed": 1})
    d1, _ = other.asymmetric(frames[3], frames[5])
    assert not torch.allclose(d1.X, a1.X)
    restored = pickle.loads(pickle.dumps(noisy))  # the backend process gets a copy
    e1, e2 = restored.asymmetric(frames[3], frames[5])
    assert torch.equal(e1.X, a1.X) and torch.equal(e2.C, a2.C)


def test_symmetric_batch_matches_pairwise_decodes(frames, noisy):
    fi, fj = [frames[k] for k in (2, 10, 20)], [frames[k] for k in (4, 11, 23)]
    S = noisy.symmetric(fi, fj)
    assert S.X.shape == (4, 3, 96 * 64, 3) and S.D.shape == (4, 3, 96 * 64, 24)
    for b in range(3):
        ii, ji = noisy.asymmetric(fi[b], fj[b])
        jj, ij = noisy.asymmetric(fj[b], fi[b])
        for k, ref in enumerate((ii, ji, jj, ij)):
            assert torch.allclose(S.X[k, b], ref.X, atol=1e-6) and torch.allclose(S.Q[k, b], ref.Q)


def test_descriptors_match_across_a_small_baseline(loop, frames, noisy):
    cos_match, cos_rand = [], []
    K = loop.K
    rng = np.random.default_rng(0)
    for i in range(0, 50, 10):
        j = i + 1
        res_ii, res_ji = noisy.asymmetric(frames[i], frames[j])
        T = _rel(loop, i, j)
        P = _gt_points(loop, j) @ T[:3, :3].T + T[:3, 3]
        u = np.rint(K[0, 0] * P[:, 0] / P[:, 2] + K[0, 2]).astype(int)
        v = np.rint(K[1, 1] * P[:, 1] / P[:, 2] + K[1, 2]).astype(int) - 4
        zi = loop[i].depth[4:68]
        ok = (u >= 0) & (u < 96) & (v >= 0) & (v < 64)
        ok[ok] &= np.abs(zi[v[ok], u[ok]] - P[ok, 2]) < 0.03 * P[ok, 2]
        Dj = res_ji.D.numpy()[ok]
        Di = res_ii.D.numpy()[v[ok] * 96 + u[ok]]
        cos_match.append(np.mean(np.sum(Di * Dj, 1)))
        cos_rand.append(np.mean(np.sum(Di[rng.permutation(len(Di))] * Dj, 1)))
    assert np.mean(cos_match) > 0.8 and np.mean(cos_rand) < 0.3, (cos_match, cos_rand)
    D = noisy.asymmetric(frames[0], frames[1])[0].D
    torch.testing.assert_close(D.norm(dim=1), torch.ones(D.shape[0]), atol=1e-4, rtol=0)


def _asmk(feats, codebook, ma):
    """Minimal ASMK-style aggregation: per visual word, sign of the summed residuals."""
    d = (codebook**2).sum(1)[None] - 2 * feats @ codebook.T
    a = np.argsort(d, 1)[:, :ma]
    return {int(w): ((feats[(a == w).any(1)] - codebook[w]).sum(0) > 0) for w in np.unique(a)}


def _score(q, d):
    s = sum(max(0.0, 1 - 2 * np.mean(b != d[w])) ** 3 for w, b in q.items() if w in d)
    return s / math.sqrt(len(q) * len(d))


def test_retrieval_features_find_the_same_place(loop, frames, noisy):
    cb = noisy.retrieval_codebook().numpy()
    assert cb.shape == (256, 64) and np.array_equal(cb, noisy.retrieval_codebook().numpy())
    feats = [noisy.retrieval_features(f).numpy() for f in frames]
    assert feats[0].shape == (200, 64)
    db_ids = list(range(0, 60, 4))
    db = [_asmk(feats[k], cb, 1) for k in db_ids]
    n = len(frames)
    near_scores, far_scores = [], []
    for q in range(2, 60, 4):
        qa = _asmk(feats[q], cb, 5)
        s = np.array([_score(qa, d) for d in db])
        best = db_ids[int(np.argmax(s))]
        assert min(abs(best - q), n - 1 - abs(best - q)) <= 4, (q, best)  # a neighbour (the loop wraps)
        for k, sv in zip(db_ids, s):
            sep = min(abs(k - q), n - 1 - abs(k - q))
            (near_scores if sep <= 2 else far_scores if sep >= 15 else []).append(sv)
    assert np.median(near_scores) > 4 * np.median(far_scores)


def test_black_frames_give_no_usable_prediction(make_seq):
    ds = make_seq(LOST)
    prior = make_oracle_prior(ds, {"img_size": 64})
    f_black = create_frame(25, ds[25].rgb, img_size=64)
    f_prev = create_frame(23, ds[23].rgb, img_size=64)
    X, C = prior.mono(f_black)
    assert torch.isfinite(X).all() and float(C.median()) < 1.5
    res_ii, res_ji = prior.asymmetric(f_black, f_prev)
    q = (res_ii.Q.median() * res_ji.Q).sqrt()
    assert float((q > 1.5).float().mean()) < 0.05  # tracking against it finds (almost) no matches


def test_moving_objects_are_predicted_at_their_own_time(make_seq):
    """moving_objects="physical" (the default "registered" is tested in tests/dynamic)."""
    ds = make_seq(DYN)
    cov = np.array(ds.moving_objects()["mask_coverage"])
    i = int(np.argmax(np.minimum(cov[:-1], cov[1:])))  # the object is in both frames
    prior = make_oracle_prior(ds, {"exact": True, "img_size": IMG, "moving_objects": "physical"})
    fi, fj = create_frame(i, ds[i].rgb, img_size=IMG), create_frame(i + 1, ds[i + 1].rgb, img_size=IMG)
    _, res_ji = prior.asymmetric(fi, fj)
    mask = torch.from_numpy(ds.dynamic_mask(i + 1)[4:68].reshape(-1))
    assert mask.float().mean() > 0.1
    # X_ji is the object's geometry at j's time seen from camera i (ground truth, not frozen) ...
    T = _rel(ds, i, i + 1)
    np.testing.assert_allclose(res_ji.X.numpy(), _gt_points(ds, i + 1) @ T[:3, :3].T + T[:3, 3], atol=2e-5)
    # ... so it disagrees with frame i's depth, and the prior gives it low confidence
    a = prior.frame_data(fi)
    vis = prior._visible(res_ji.X[None], a.K[None], a.z_true[None], 64, 96)[0]
    assert float(vis[mask].float().mean()) < 0.25  # (the body overlaps itself a little)
    C = res_ji.C[:, 0]
    assert float(C[mask].median()) < 0.35 * float(C[~mask & vis].median())


def test_factory_errors(loop, tmp_path):
    with pytest.raises(ConfigError, match="unknown option 'scale'"):
        make_oracle_prior(loop, {"scale": 0.1})
    with pytest.raises(ConfigError, match="must be a number"):
        make_oracle_prior(loop, {"scale_sigma": "big"})
    from mast3r_slam.config import Config

    assert make_oracle_prior(loop, Config()).img_size == 512
    from mast3r_slam.datasets import load_dataset

    folder = tmp_path / "imgs"
    folder.mkdir()
    import cv2

    for k in range(2):
        cv2.imwrite(str(folder / f"{k:03d}.png"), loop[k].rgb)
    with pytest.raises(DatasetError, match="--prior oracle"):
        make_oracle_prior(load_dataset(folder))


def test_speed_of_cached_decodes(frames, noisy):
    import time

    fi, fj = frames[40:48], frames[41:49]
    noisy.symmetric(fi, fj)  # warm the per-frame cache
    t = time.perf_counter()
    for _ in range(3):
        noisy.symmetric(fi, fj)
    per_pair = (time.perf_counter() - t) / (3 * 2 * len(fi))
    assert per_pair < 0.05, per_pair  # ~3 ms per 96x64 decode on an idle 2-core CPU; slack for busy CI


@pytest.mark.skipif(not (TUM / "rgb.txt").is_file(), reason="tests/data/tum_fr1_rpy not present")
def test_real_tum_rgbd():
    from mast3r_slam.datasets.tum import TUMDataset

    ds = TUMDataset(TUM, camera=1)
    prior = make_oracle_prior(ds, {"img_size": 224})  # 640x480 -> 224x168 -> 224x160
    f0 = create_frame(0, ds[0].rgb, img_size=224)
    f1 = create_frame(1, ds[1].rgb, img_size=224)
    res_ii, res_ji = prior.asymmetric(f0, f1)
    assert res_ii.X.shape == (224 * 160, 3) and torch.isfinite(res_ji.X).all()
    # holes of the Kinect depth are inpainted with low confidence
    fd = prior.frame_data(f0)
    raw = ds[0].depth
    holes = torch.from_numpy(np.asarray(prior._sample_depth(raw, *_net_to_raw(640, 480, 224, 160))[1]).reshape(-1))
    assert 0 < float((~holes).float().mean()) < 0.5
    assert float(fd.c_base[~holes].median()) < 0.2 * float(fd.c_base[holes].median())
    # exact geometry: the depth of a valid pixel equals the sampled Kinect depth
    ex = make_oracle_prior(ds, {"img_size": 224, "exact": True})
    X, _ = ex.mono(f0)
    z, ok = prior._sample_depth(raw, *_net_to_raw(640, 480, 224, 160))
    np.testing.assert_allclose(X[:, 2].numpy()[ok.reshape(-1)], z.reshape(-1)[ok.reshape(-1)], rtol=1e-5)
    # consecutive frames overlap: most pixels of frame 1 are co-visible and have usable Q
    assert float((res_ji.Q > 1.5).float().mean()) > 0.4


def _net_to_raw(w, h, W, H):
    """Raw pixel coordinates of the network pixels for a 640x480 -> 224-long-side image."""
    from mast3r_slam.image import resize_crop_shape

    (nw, nh), (left, top, _, _) = resize_crop_shape(w, h, max(W, H))
    v, u = np.mgrid[0:H, 0:W].astype(np.float32)
    return (u + left + 0.5) * (w / nw) - 0.5, (v + top + 0.5) * (h / nh) - 0.5


def test_loop_closure_retrieval_with_the_asmk_database(loop, frames, noisy):
    """Keyframes every 3rd frame go through mast3r_slam.retrieval as SLAM's backend does; the last
    keyframe (back at the start of the lap) retrieves the first ones: a loop closure."""
    from mast3r_slam.retrieval import RetrievalDatabase

    db = RetrievalDatabase(noisy.retrieval_codebook())
    kfs = list(range(0, 60, 3))
    near = []
    hits = []
    for i in kfs:
        hits = [kfs[h] for h in db.update(noisy.retrieval_features(frames[i]), True, 3, 5e-3)]
        if hits:
            near.append(min(abs(hits[0] - i), 59 - abs(hits[0] - i)) <= 6)
    assert np.mean(near) >= 0.8, near  # the best hit is (almost always) a neighbouring keyframe
    assert {0, 3} & set(hits), hits  # keyframe 57 finds the start of the loop


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(loop, frames, noisy):
    gpu = make_oracle_prior(loop, {"img_size": IMG}, device="cuda")
    fi, fj = frames[0:4], frames[1:5]
    S_cpu = noisy.symmetric(fi, fj)
    S_gpu = gpu.symmetric([f for f in fi], [f for f in fj])
    assert S_gpu.X.is_cuda and S_gpu.D.is_cuda
    torch.testing.assert_close(S_gpu.X.cpu(), S_cpu.X, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(S_gpu.C.cpu(), S_cpu.C, atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(S_gpu.D.cpu(), S_cpu.D, atol=1e-4, rtol=1e-4)
    assert gpu.retrieval_features(frames[3]).is_cuda
