"""Loading rules: exact key set, aliases, safe unpickling, one-line errors for wrong files."""
from __future__ import annotations

import argparse
import datetime
import os
import pickle

import numpy as np
import pytest
import torch

from mast3r_slam.errors import CheckpointError
from mast3r_slam.network import SMALL, load_mast3r, safe_pickle_load
from mast3r_slam.network.arch import constructor_string
from mast3r_slam.network.checkpoint import build_mast3r, official_keys, remap_state_dict
from mast3r_slam.network.retrieval_model import load_codebook
from mast3r_slam.network.synthetic import arch_shapes


def _meta_sd(shapes: dict) -> dict:
    """A state_dict of meta tensors (shapes only, no memory)."""
    return {k: torch.empty(s, device="meta") for k, s in shapes.items()}


def _check_one_line(err: CheckpointError, path) -> str:
    msg = str(err)
    assert "\n" not in msg
    assert str(path) in msg
    return msg


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_official_key_set_and_aliases():
    shapes = arch_shapes(SMALL)
    assert len(shapes) == 753
    model = build_mast3r({"model": _meta_sd(shapes), "args": argparse.Namespace(model=constructor_string(SMALL))})
    assert model.encoder.blocks[0].attn.qkv.weight.shape == (3072, 1024)
    assert not hasattr(model.head1.dpt.scratch.refinenet4, "resConfUnit1")  # never used by the forward
    # the alias keys alone (without scratch.layer_rn.*) are enough
    alias_only = {k: v for k, v in _meta_sd(shapes).items() if ".scratch.layer_rn." not in k}
    remapped = remap_state_dict(alias_only)
    assert "head1.dpt.scratch.layer_rn.3.weight" in remapped
    assert len(official_keys(SMALL)) == 753


def test_missing_and_unexpected_keys_are_refused():
    shapes = arch_shapes(SMALL)
    args = argparse.Namespace(model=constructor_string(SMALL))
    sd = _meta_sd(shapes)
    del sd["dec_blocks.3.mlp.fc1.weight"]
    with pytest.raises(CheckpointError, match=r"missing keys.*dec_blocks\.3\.mlp\.fc1\.weight"):
        build_mast3r({"model": sd, "args": args}, "ckpt.pth")
    sd = _meta_sd(shapes)
    sd["foo.bar"] = torch.empty(1, device="meta")
    with pytest.raises(CheckpointError, match="unexpected"):
        build_mast3r({"model": sd, "args": args}, "ckpt.pth")
    sd = _meta_sd(shapes)
    sd["enc_norm.weight"] = torch.empty(512, device="meta")
    with pytest.raises(CheckpointError, match=r"enc_norm\.weight has shape \(512,\)"):
        build_mast3r({"model": sd, "args": args}, "ckpt.pth")


def test_dust3r_style_checkpoint_without_second_decoder_stream_is_filled():
    shapes = {k: s for k, s in arch_shapes(SMALL).items() if not k.startswith("dec_blocks2.")}
    sd = remap_state_dict(_meta_sd(shapes))
    assert "decoder.blocks2.11.norm_y.weight" in sd


def test_missing_file(tmp_path):
    p = tmp_path / "MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric.pth"
    with pytest.raises(CheckpointError) as e:
        load_mast3r(p)
    msg = _check_one_line(e.value, p)
    assert "not found" in msg and "bash scripts/download_checkpoints.sh" in msg


def test_zero_byte_file(tmp_path):
    p = tmp_path / "MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric.pth"
    p.write_bytes(b"")
    with pytest.raises(CheckpointError) as e:
        load_mast3r(p)
    msg = _check_one_line(e.value, p)
    assert "empty" in msg and "2.75 GB" in msg and "download_checkpoints.sh" in msg


def test_random_file(tmp_path):
    p = tmp_path / "random.pth"
    p.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(CheckpointError) as e:
        load_mast3r(p)
    assert "download_checkpoints.sh" in _check_one_line(e.value, p)


def test_truncated_file(tmp_path):
    p = tmp_path / "trunc.pth"
    torch.save({"model": {"w": torch.randn(300, 300)}, "args": argparse.Namespace(model="AsymmetricMASt3R()")}, p)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as e:
        load_mast3r(p)
    assert "truncated" in _check_one_line(e.value, p)


def test_dust3r_checkpoint_is_named(tmp_path):
    p = tmp_path / "DUSt3R_ViTLarge_BaseDecoder_512_dpt.pth"
    args = argparse.Namespace(model="AsymmetricCroCo3DStereo(pos_embed='RoPE100', head_type='dpt', output_mode='pts3d')")
    torch.save({"model": {"enc_norm.weight": torch.ones(4)}, "args": args}, p)
    with pytest.raises(CheckpointError) as e:
        load_mast3r(p)
    msg = _check_one_line(e.value, p)
    assert "DUSt3R" in msg and "download_checkpoints.sh" in msg


def test_retrieval_file_given_as_network(tmp_path):
    p = tmp_path / "retrieval.pth"
    torch.save({"model": {"prewhiten.m": torch.zeros(1, 4)}, "args": argparse.Namespace(nfeat=300, prewhiten=True)}, p)
    with pytest.raises(CheckpointError, match="constructor string"):
        load_mast3r(p)


def test_pth_with_foreign_pickled_objects_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    p = tmp_path / "evil.pth"
    torch.save({"model": {}, "args": argparse.Namespace(model="x"), "payload": _Evil(str(marker))}, p)
    with pytest.raises(CheckpointError) as e:
        load_mast3r(p)
    _check_one_line(e.value, p)
    assert not marker.exists()
    p2 = tmp_path / "odd.pth"
    torch.save({"model": {}, "args": argparse.Namespace(model="x", when=datetime.date(2024, 1, 1))}, p2)
    with pytest.raises(CheckpointError, match="datetime"):
        load_mast3r(p2)


def test_pth_with_numpy_scalars_in_args_loads(tmp_path):
    """Training scripts may leave numpy scalars in args/best_so_far: allowed (data, not code)."""
    p = tmp_path / "np.pth"
    torch.save({"model": {}, "args": argparse.Namespace(model="AsymmetricMASt3R()"), "best_so_far": np.float64(0.5)}, p)
    from mast3r_slam.network.checkpoint import load_torch_file

    ckpt = load_torch_file(p)
    assert float(ckpt["best_so_far"]) == 0.5 and ckpt["args"].model == "AsymmetricMASt3R()"


def test_codebook_restricted_unpickler(tmp_path):
    good = tmp_path / "cb.pkl"
    cents = np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32)
    with open(good, "wb") as f:
        pickle.dump({"type": "Codebook", "params": {"size": 16}, "state": {"centroids": cents}}, f)
    np.testing.assert_array_equal(load_codebook(good, 16, 8).numpy(), cents)
    with pytest.raises(CheckpointError, match="nclusters"):
        load_codebook(good, "64k", 8)

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pkl"
    with open(evil, "wb") as f:
        pickle.dump({"type": "Codebook", "params": {"size": 16}, "state": {"centroids": _Evil(str(marker))}}, f)
    with pytest.raises(CheckpointError) as e:
        safe_pickle_load(evil, "retrieval codebook")
    msg = _check_one_line(e.value, evil)
    assert "forbidden global" in msg and "system" in msg
    assert not marker.exists()

    trunc = tmp_path / "trunc.pkl"
    trunc.write_bytes(good.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated"):
        load_codebook(trunc)
