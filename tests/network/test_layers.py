"""Unit checks of the building blocks: RoPE layout, attention paths, constructor-string parsing."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mast3r_slam.errors import CheckpointError
from mast3r_slam.network.arch import SMALL, VITL, arch_from_constructor, constructor_string, parse_constructor
from mast3r_slam.network.layers import RoPE2D, apply_rope, attention, patch_positions


def _rope_reference(t: np.ndarray, pos: np.ndarray, base: float = 100.0) -> np.ndarray:
    """Spec §4.3 written plainly in float64: y half rotated by row, x half by column."""
    B, Hh, N, D = t.shape
    q = D // 4
    out = np.empty_like(t)
    for b in range(B):
        for n in range(N):
            for half, p in ((0, pos[b, n, 0]), (1, pos[b, n, 1])):
                for j in range(q):
                    w = base ** (-j / q)
                    c, s = math.cos(p * w), math.sin(p * w)
                    a, bb = 2 * q * half + j, 2 * q * half + j + q
                    out[b, :, n, a] = t[b, :, n, a] * c - t[b, :, n, bb] * s
                    out[b, :, n, bb] = t[b, :, n, bb] * c + t[b, :, n, a] * s
    return out


def test_rope_matches_spec_formula():
    torch.manual_seed(0)
    t = torch.randn(2, 3, 15, 64)
    pos = patch_positions(5, 3, 2, "cpu").clone()
    pos[1] = pos[1].flip(0)  # any positions, not only the grid
    rope = RoPE2D(64, 100.0)
    cos, sin = rope.tables(pos, 5, torch.float32)
    got = apply_rope(t, cos, sin).double().numpy()
    ref = _rope_reference(t.double().numpy(), pos.numpy())
    assert np.abs(got - ref).max() < 2e-5
    # position (0, 0) is the identity; a wrong half/quarter layout would fail the check above
    np.testing.assert_allclose(got[0, :, 0], t[0, :, 0].numpy(), atol=1e-7)


def test_rope_tables_grow_and_cache():
    rope = RoPE2D(64)
    pos = patch_positions(2, 100, 1, "cpu")
    cos, _ = rope.tables(pos, 100, torch.float32)
    assert cos.shape == (1, 1, 200, 64)
    assert rope._cache[(torch.device("cpu"), torch.float32)][0].shape[0] == 128  # grown to a power of 2


def test_patch_positions_row_major():
    pos = patch_positions(2, 3, 1, "cpu")[0]
    assert pos.tolist() == [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]]


def test_sdpa_and_math_attention_agree():
    torch.manual_seed(1)
    q, k, v = torch.randn(3, 2, 4, 7, 64).unbind(0)
    a = attention(q, k, v, "sdpa")
    b = attention(q, k, v, "math")
    ref = torch.softmax(q.double() @ k.double().transpose(-1, -2) / 8.0, -1) @ v.double()
    assert (a.double() - ref).abs().max() < 1e-5 and (b.double() - ref).abs().max() < 1e-5


def test_constructor_string_parsed_not_evaluated(tmp_path):
    official = (
        "AsymmetricMASt3R(pos_embed='RoPE100', patch_embed_cls='ManyAR_PatchEmbed', img_size=(512, 512), "
        "head_type='catmlp+dpt', output_mode='pts3d+desc24', depth_mode=('exp', -inf, inf), "
        "conf_mode=('exp', 1, inf), enc_embed_dim=1024, enc_depth=24, enc_num_heads=16, dec_embed_dim=768, "
        "dec_depth=12, dec_num_heads=12, two_confs=True, desc_conf_mode=('exp', 0, inf))"
    )
    assert arch_from_constructor(official) == VITL
    assert arch_from_constructor(constructor_string(SMALL)) == SMALL
    name, kw = parse_constructor(official)
    assert name == "AsymmetricMASt3R" and kw["depth_mode"] == ("exp", -math.inf, math.inf)
    marker = tmp_path / "pwned"
    evil = f"AsymmetricMASt3R(enc_depth=__import__('os').system('touch {marker}'))"
    with pytest.raises(CheckpointError, match="literal"):
        arch_from_constructor(evil, "evil.pth")
    assert not marker.exists()


@pytest.mark.parametrize(
    "text, match",
    [
        ("AsymmetricCroCo3DStereo(pos_embed='RoPE100', head_type='dpt')", "DUSt3R"),
        ("AsymmetricMASt3R(head_type='dpt')", "head_type"),
        ("AsymmetricMASt3R(conf_mode=('exp', 0, inf))", "conf_mode"),
        ("AsymmetricMASt3R(pos_embed='cosine')", "pos_embed"),
        ("AsymmetricMASt3R(enc_depth=24, something_new=1)", "unknown"),
        ("SomethingElse(enc_depth=2)", "expected"),
        ("not python(", "literal"),
    ],
)
def test_constructor_string_rejections(text, match):
    with pytest.raises(CheckpointError, match=match) as e:
        arch_from_constructor(text, "x.pth")
    assert "\n" not in str(e.value) and str(e.value).startswith("x.pth")
