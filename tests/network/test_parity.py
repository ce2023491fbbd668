"""The network reproduces the original implementation's outputs on synthetic weights.

tests/fixtures/mast3r holds golden outputs of the original code (CPU, fp32) for weights made by a
fixed rule (README there). We build those weights from the json key lists, save them in the
official checkpoint format ({'model', 'args': Namespace(model=<constructor string>)}), load the
file through the same path as the real checkpoint, and compare encoder outputs, last decoder
tokens and both heads for a mono landscape pair, a mono portrait pair (odd 5x3 grid) and both
orders of a real pair.

Tolerances (fixture README): tokens 1e-4 abs; desc 1e-4 abs; conf and desc_conf 1e-3 relative;
pts3d 1e-3 relative *to each point's norm* (component-wise relative error is meaningless for
coordinates that are ~0; see docs/NETWORK.md).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mast3r_slam.network import load_mast3r
from mast3r_slam.network.checkpoint import official_keys
from mast3r_slam.network.synthetic import synthetic_state_dict

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "mast3r"
CASES = {"mono_A": ("A", "A"), "mono_P": ("P", "P"), "pair_AB": ("A", "B"), "pair_BA": ("B", "A")}


def _save_fast(obj, path):
    """torch.save without the zip CRC when this torch allows it (test speed only)."""
    try:
        import torch.utils.serialization as ser

        cfg = ser.config.save
        old = cfg.compute_crc32
        cfg.compute_crc32 = False
    except (ImportError, AttributeError):
        cfg = None
    try:
        torch.save(obj, path)
    finally:
        if cfg is not None:
            cfg.compute_crc32 = old


def _run_all(model, golden):
    enc = {}
    for x in "ABP":
        img = torch.from_numpy(golden[f"img_{x}"])
        feat, pos = model.encode(img)
        enc[x] = (feat, pos, tuple(img.shape[-2:]))
    dec = {}
    for tag, (a, b) in CASES.items():
        fa, pa, sa = enc[a]
        fb, pb, sb = enc[b]
        dec[tag] = model.decode(fa, pa, fb, pb, sa, sb, return_tokens=True)
    return enc, dec


@pytest.fixture(scope="module", params=["small", "vitl"])
def parity(request, tmp_path_factory, torch_threads):
    name = request.param
    meta = json.loads((FIX / f"state_dict_{name}.json").read_text())
    path = tmp_path_factory.mktemp(f"ckpt_{name}") / f"synthetic_{name}.pth"
    sd = synthetic_state_dict(meta["state_dict_shapes"])
    _save_fast({"model": sd, "args": argparse.Namespace(model=meta["checkpoint_args_model"]), "epoch": 0}, path)
    del sd
    model = load_mast3r(path, "cpu")
    path.unlink()  # the weights stay memory-mapped
    golden = dict(np.load(FIX / f"golden_{name}.npz"))
    enc, dec = _run_all(model, golden)
    yield {"name": name, "meta": meta, "model": model, "golden": golden, "enc": enc, "dec": dec}


def test_loader_accepts_exactly_the_official_keys(parity):
    meta = parity["meta"]
    keys = official_keys(parity["model"].arch)
    assert len(keys) == meta["num_keys"] == len(meta["state_dict_shapes"])
    assert set(keys) == set(meta["state_dict_shapes"])
    assert parity["model"].arch.enc_depth == (2 if parity["name"] == "small" else 24)


def test_encoder_matches(parity):
    g = parity["golden"]
    for x, (feat, pos, _) in parity["enc"].items():
        assert feat.dtype == torch.float32 and pos.dtype == torch.int64
        np.testing.assert_array_equal(pos.numpy(), g[f"enc_pos_{x}"])
        err = np.abs(feat.numpy() - g[f"enc_feat_{x}"]).max()
        assert err <= 1e-4, (x, err)
        assert np.abs(g[f"enc_feat_{x}"]).max() > 0.5  # the comparison is not trivially small


def test_decoder_tokens_match(parity):
    g = parity["golden"]
    for tag, (_, _, dec1, dec2) in parity["dec"].items():
        for k, dec in ((1, dec1), (2, dec2)):
            ref = g[f"{tag}_dec{k}_last"]
            err = np.abs(dec[-1].numpy() - ref).max()
            assert err <= 1e-4, (tag, k, err)


def _head_errors(out: dict, g: dict, prefix: str) -> dict:
    ref_p, p = g[f"{prefix}_pts3d"], out["pts3d"].numpy()
    errs = {"pts3d": float((np.linalg.norm(p - ref_p, axis=-1) / np.linalg.norm(ref_p, axis=-1)).max())}
    for key in ("conf", "desc_conf"):
        ref = g[f"{prefix}_{key}"]
        errs[key] = float((np.abs(out[key].numpy() - ref) / np.abs(ref)).max())
    errs["desc"] = float(np.abs(out["desc"].numpy() - g[f"{prefix}_desc"]).max())
    return errs


def test_heads_match(parity):
    g = parity["golden"]
    worst = {}
    for tag, (res1, res2, _, _) in parity["dec"].items():
        H, W = g[f"{tag}_res1_conf"].shape[1:]
        for k, res in (("res1", res1), ("res2", res2)):
            assert res["pts3d"].shape == (1, H, W, 3) and res["desc"].shape == (1, H, W, 24)
            assert res["conf"].shape == (1, H, W) and res["desc_conf"].shape == (1, H, W)
            assert all(v.dtype == torch.float32 for v in res.values())
            for q, e in _head_errors(res, g, f"{tag}_{k}").items():
                worst[q] = max(worst.get(q, 0.0), e)
    assert worst["pts3d"] <= 1e-3, worst
    assert worst["conf"] <= 1e-3, worst
    assert worst["desc_conf"] <= 1e-3, worst
    assert worst["desc"] <= 1e-4, worst


def test_explicit_attention_path_matches(parity):
    """The 'math' attention path (for parity debugging) gives the same outputs."""
    if parity["name"] != "small":
        pytest.skip("checked on the small network only (same code path)")
    model, g = parity["model"], parity["golden"]
    model.set_attention("math")
    try:
        fa, pa, sa = parity["enc"]["A"]
        fb, pb, sb = parity["enc"]["B"]
        feat, _ = model.encode(torch.from_numpy(g["img_A"]))
        assert np.abs(feat.numpy() - g["enc_feat_A"]).max() <= 1e-4
        res1, res2, dec1, _ = model.decode(fa, pa, fb, pb, sa, sb, return_tokens=True)
    finally:
        model.set_attention("sdpa")
    assert np.abs(dec1[-1].numpy() - g["pair_AB_dec1_last"]).max() <= 1e-4
    for k, res in (("res1", res1), ("res2", res2)):
        errs = _head_errors(res, g, f"pair_AB_{k}")
        assert errs["pts3d"] <= 1e-3 and errs["conf"] <= 1e-3 and errs["desc"] <= 1e-4, errs


def test_batched_decode_equals_single(parity):
    """Two pairs in one batch give the per-pair results (what the symmetric prior relies on)."""
    if parity["name"] != "small":
        pytest.skip("checked on the small network only")
    model = parity["model"]
    fa, pa, s = parity["enc"]["A"]
    fb, pb, _ = parity["enc"]["B"]
    r1, r2 = model.decode(torch.cat([fa, fb]), torch.cat([pa, pb]), torch.cat([fb, fa]), torch.cat([pb, pa]), s, s)
    ab = parity["dec"]["pair_AB"]
    ba = parity["dec"]["pair_BA"]
    for got, want in ((r1, ab[0]), (r2, None)):
        if want is None:  # second batch entry of view 2 = pair (B, A), view 2
            got, want = {k: v[1:] for k, v in r2.items()}, ba[1]
        else:
            got = {k: v[:1] for k, v in got.items()}
        g = {f"x_{k}": v.numpy() for k, v in want.items()}
        errs = _head_errors(got, g, "x")
        assert errs["pts3d"] <= 1e-3 and errs["conf"] <= 1e-3 and errs["desc_conf"] <= 1e-3, errs
        assert errs["desc"] <= 1e-4, errs
