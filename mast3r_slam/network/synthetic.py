"""Synthetic, deterministic MASt3R weights (the rule of tests/fixtures/mast3r/README.md).

The golden outputs in ``tests/fixtures/mast3r`` were produced by the original code on these
weights, so a network built from them must reproduce those outputs. The benchmark uses them too
(timings do not depend on the values). For every official key with shape s (n elements):

1. canonical name: ``scratch.layerK_rn.`` -> ``scratch.layer_rn.{K-1}.`` (aliases share values);
2. m = min(n, 4099); x_i = i + crc32(name) * 2^32 (uint64, wrapping); z_i = splitmix64(x_i);
   u_i = (z_i >> 11) * 2^-53; v_i = 2 u_i - 1;
3. by the last dotted part: bias -> 0.05 v; 1-D weight -> 1 + 0.1 v; n-D weight ->
   v * sqrt(3 / (n / s[0])); otherwise 0.02 v;
4. float32, repeated cyclically to n elements, reshaped to s.
"""
from __future__ import annotations

import argparse
import re
import zlib
from pathlib import Path

import numpy as np
import torch

from .arch import Mast3rArch, constructor_string
from .checkpoint import official_keys

_ALIAS = re.compile(r"scratch\.layer([1-4])_rn\.")
_PERIOD = 4099


def canonical_name(key: str) -> str:
    return _ALIAS.sub(lambda m: f"scratch.layer_rn.{int(m.group(1)) - 1}.", key)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 output function on a uint64 array (all arithmetic mod 2^64)."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def synthetic_values(key: str, shape) -> np.ndarray:
    """The m <= 4099 distinct float32 values of ``key`` (before cyclic repetition)."""
    shape = tuple(int(s) for s in shape)
    n = int(np.prod(shape)) if shape else 1
    name = canonical_name(key)
    m = min(n, _PERIOD)
    seed = np.uint64(zlib.crc32(name.encode("utf-8"))) << np.uint64(32)
    with np.errstate(over="ignore"):
        x = np.arange(m, dtype=np.uint64) + seed
    u = (splitmix64(x) >> np.uint64(11)).astype(np.float64) * 2.0**-53
    v = 2.0 * u - 1.0
    last = key.rsplit(".", 1)[-1]
    if last == "bias":
        vals = 0.05 * v
    elif last == "weight" and len(shape) == 1:
        vals = 1.0 + 0.1 * v
    elif last == "weight":
        vals = v * np.sqrt(3.0 / (n / shape[0]))
    else:
        vals = 0.02 * v
    return vals.astype(np.float32)


def synthetic_tensor(key: str, shape) -> torch.Tensor:
    shape = tuple(int(s) for s in shape)
    n = int(np.prod(shape)) if shape else 1
    vals = torch.from_numpy(synthetic_values(key, shape))
    out = torch.empty(n, dtype=torch.float32)
    m = vals.numel()
    out[:m] = vals
    done = m
    while done < n:  # cyclic repetition by doubling copies (np.resize is ~10x slower)
        c = min(done, n - done)
        out[done : done + c] = out[:c]
        done += c
    return out.reshape(shape)


def synthetic_state_dict(shapes: dict) -> dict[str, torch.Tensor]:
    """{official key: tensor} for ``{key: shape}``; alias keys share the canonical key's tensor."""
    out: dict[str, torch.Tensor] = {}
    by_canon: dict[str, torch.Tensor] = {}
    for key, shape in shapes.items():
        canon = canonical_name(key)
        t = by_canon.get(canon)
        if t is None or tuple(t.shape) != tuple(shape):
            t = by_canon[canon] = synthetic_tensor(key, shape)
        out[key] = t
    return out


def arch_shapes(arch: Mast3rArch) -> dict[str, tuple[int, ...]]:
    """{official key: shape} of a network of architecture ``arch``."""
    from .mast3r import Mast3rModel
    from .checkpoint import official_name

    with torch.device("meta"):
        model = Mast3rModel(arch)
    own = {official_name(k): tuple(v.shape) for k, v in model.state_dict().items()}
    shapes = {}
    for key in official_keys(arch):
        if key == "mask_token":
            shapes[key] = (1, 1, arch.dec_embed_dim)
        elif key in own:
            shapes[key] = own[key]
        else:
            canon = canonical_name(key)
            if canon in own:
                shapes[key] = own[canon]
            else:  # refinenet4.resConfUnit1 (unused): same shapes as resConfUnit2
                shapes[key] = own[key.replace("resConfUnit1", "resConfUnit2")]
    return shapes


def save_synthetic_checkpoint(path, arch: Mast3rArch, shapes: dict | None = None, model_string: str | None = None) -> Path:
    """Write ``{'model': synthetic state_dict, 'args': Namespace(model=...)}`` in the official format."""
    shapes = shapes if shapes is not None else arch_shapes(arch)
    sd = synthetic_state_dict(shapes)
    path = Path(path)
    torch.save({"model": sd, "args": argparse.Namespace(model=model_string or constructor_string(arch)), "epoch": 0}, path)
    return path


def synthetic_model(arch: Mast3rArch):
    """A Mast3rModel of ``arch`` with the synthetic weights, built in memory (no file)."""
    from .checkpoint import build_mast3r

    sd = synthetic_state_dict(arch_shapes(arch))
    return build_mast3r({"model": sd, "args": argparse.Namespace(model=constructor_string(arch))}, "synthetic", arch)
