"""Loading the official MASt3R files safely (spec: network §1-3).

* ``.pth`` files (the network and the retrieval head) are ``torch.save`` dicts ``{'model':
  state_dict, 'args': argparse.Namespace, ...}``. They are read with ``torch.load(weights_only=True)``
  with ``argparse.Namespace`` allow-listed (plus numpy scalars/dtypes if the file holds any), memory
  mapped when possible. Arbitrary pickled objects are refused unless ``trust_pickle=True``.
* The constructor string ``args.model`` is parsed, never evaluated (:mod:`.arch`).
* The state_dict is renamed to this package's module tree (:func:`remap_state_dict`) and loaded
  with ``strict=True``: exactly the official keys are accepted; the ``scratch.layerK_rn`` aliases,
  ``mask_token`` and the never-used ``refinenet4.resConfUnit1`` weights are dropped.
* The retrieval codebook ``.pkl`` is a plain pickle; :func:`safe_pickle_load` admits only numpy
  arrays/dtypes and plain containers.

Every failure is a one-line :class:`~mast3r_slam.errors.CheckpointError` naming the file.
"""
from __future__ import annotations

import argparse
import importlib
import pickle
import re
from pathlib import Path

import torch

from ..errors import CheckpointError
from .arch import Mast3rArch, arch_from_constructor

HINT = "get the official files with `bash scripts/download_checkpoints.sh`"

MAIN_NAME = "MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric.pth"
RETRIEVAL_NAME = "MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric_retrieval_trainingfree.pth"
CODEBOOK_NAME = "MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric_retrieval_codebook.pkl"
_EXPECTED_SIZE = {MAIN_NAME: "about 2.75 GB", RETRIEVAL_NAME: "about 8 MB", CODEBOOK_NAME: "about 268 MB"}

# numpy globals a checkpoint's args / a codebook may legitimately contain
_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
}
_PLAIN_GLOBALS = {("collections", "OrderedDict"), ("_codecs", "encode")}


def _one_line(e: BaseException, limit: int = 200) -> str:
    s = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return (s[:limit] + "...") if len(s) > limit else s


def _size_hint(path: Path) -> str:
    exp = _EXPECTED_SIZE.get(path.name)
    return f", expected {exp}" if exp else ""


def check_file(path, what: str) -> Path:
    """Raise CheckpointError if ``path`` is missing, not a file or empty."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: {what} not found; {HINT}")
    if not path.is_file():
        raise CheckpointError(f"{path}: {what} is not a file; {HINT}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: {what} is empty (0 bytes{_size_hint(path)}); {HINT}")
    return path


def _numpy_global(module: str, name: str):
    """Resolve an allow-listed numpy global, preferring numpy 2's ``numpy._core`` over the old alias."""
    if module.startswith("numpy.core"):
        try:
            return getattr(importlib.import_module("numpy._core" + module[len("numpy.core"):]), name)
        except (ImportError, AttributeError):
            pass
    return getattr(importlib.import_module(module), name)


def _numpy_dtype_class(module: str, name: str) -> bool:
    return module == "numpy.dtypes" and re.fullmatch(r"[A-Za-z0-9]+DType", name) is not None


def load_torch_file(path, what: str = "checkpoint", *, trust_pickle: bool = False) -> dict:
    """``torch.load`` a ``{'model', 'args', ...}`` checkpoint safely (CPU, memory-mapped when possible)."""
    path = check_file(path, what)

    def _load(extra_globals=(), mmap=True):
        allowed = [argparse.Namespace, *extra_globals]
        kwargs = dict(map_location="cpu", weights_only=not trust_pickle)
        if mmap:
            kwargs["mmap"] = True
        if trust_pickle:
            return torch.load(path, **kwargs)
        if hasattr(torch.serialization, "safe_globals"):
            with torch.serialization.safe_globals(allowed):
                return torch.load(path, **kwargs)
        torch.serialization.add_safe_globals(allowed)  # torch 2.4
        return torch.load(path, **kwargs)

    try:
        try:
            ckpt = _load()
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            ckpt = _load(mmap=False)  # legacy (non-zip) serialisation cannot be memory-mapped
    except pickle.UnpicklingError as e:
        ckpt = None
        extra = []
        getter = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
        if getter is not None:
            try:
                names = getter(str(path))
            except Exception:  # noqa: BLE001 - only a diagnosis
                names = None
            if names is not None:
                bad = []
                for full in names:
                    mod, _, name = full.rpartition(".")
                    if full == "argparse.Namespace":
                        continue
                    if (mod, name) in _NUMPY_GLOBALS or _numpy_dtype_class(mod, name):
                        extra.append(_numpy_global(mod, name))
                    else:
                        bad.append(full)
                if bad:
                    raise CheckpointError(
                        f"{path}: {what} contains pickled objects other than tensors and argparse.Namespace "
                        f"({', '.join(bad[:3])}); refusing to unpickle them (pass trust_pickle=True only for a "
                        "file you trust)"
                    ) from None
        if not extra:
            raise CheckpointError(
                f"{path}: cannot read the {what} ({_one_line(e)}); it may be truncated or the wrong file{_size_hint(path)}; {HINT}"
            ) from None
        try:  # numpy scalars also need their dtype classes (numpy >= 1.25: numpy.dtypes.*DType)
            import numpy.dtypes as npd

            extra += [getattr(npd, n) for n in dir(npd) if n.endswith("DType") and isinstance(getattr(npd, n), type)]
        except ImportError:
            pass
        try:
            ckpt = _load(extra)
        except Exception as e2:  # noqa: BLE001
            raise CheckpointError(f"{path}: cannot read the {what} ({_one_line(e2)}); {HINT}") from None
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - torch raises RuntimeError/EOFError/ValueError/... on bad files
        raise CheckpointError(
            f"{path}: cannot read the {what} ({_one_line(e)}); it may be truncated or not a PyTorch checkpoint "
            f"({path.stat().st_size} bytes{_size_hint(path)}); {HINT}"
        ) from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "args" not in ckpt:
        found = sorted(ckpt)[:5] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path}: expected a dict with 'model' and 'args' (an official {what}), found {found}")
    return ckpt


# ---------------------------------------------------------------------------- state_dict names

_PREFIXES = (
    ("patch_embed.", "encoder.patch_embed."),
    ("enc_blocks.", "encoder.blocks."),
    ("enc_norm.", "encoder.norm."),
    ("decoder_embed.", "decoder.embed."),
    ("dec_blocks.", "decoder.blocks1."),
    ("dec_blocks2.", "decoder.blocks2."),
    ("dec_norm.", "decoder.norm."),
    ("downstream_head1.", "head1."),
    ("downstream_head2.", "head2."),
)
_ALIAS = re.compile(r"^(downstream_head[12]\.dpt\.scratch\.)layer([1-4])_rn\.(.*)$")
_UNUSED = re.compile(r"^(mask_token|downstream_head[12]\.dpt\.scratch\.refinenet4\.resConfUnit1\..*)$")


def official_name(ours: str) -> str:
    """This package's parameter name -> the official checkpoint key."""
    for off, mine in _PREFIXES:
        if ours.startswith(mine):
            return off + ours[len(mine):]
    raise KeyError(ours)


def official_keys(arch: Mast3rArch) -> list[str]:
    """All keys an official checkpoint of ``arch`` holds (including aliases and unused ones)."""
    with torch.device("meta"):
        from .mast3r import Mast3rModel

        model = Mast3rModel(arch)
    keys = ["mask_token"] + [official_name(k) for k in model.state_dict()]
    for h in (1, 2):
        p = f"downstream_head{h}.dpt.scratch."
        keys += [f"{p}layer{k}_rn.weight" for k in range(1, 5)]
        keys += [f"{p}refinenet4.resConfUnit1.conv{c}.{t}" for c in (1, 2) for t in ("weight", "bias")]
    return keys


def remap_state_dict(sd: dict, source: str = "checkpoint") -> dict:
    """Official state_dict -> this package's names (aliases merged, unused keys dropped).

    Raises CheckpointError for keys no MASt3R checkpoint has. If no ``dec_blocks2`` key exists (a
    DUSt3R-style file), the ``dec_blocks`` weights are used for both streams, as dust3r does.
    """
    out, unknown = {}, []
    has_dec2 = any(k.startswith("dec_blocks2.") for k in sd)
    for key, value in sd.items():
        if _UNUSED.match(key):
            continue
        m = _ALIAS.match(key)
        if m:
            canon = f"{m.group(1)}layer_rn.{int(m.group(2)) - 1}.{m.group(3)}"
            if canon in sd:
                continue  # same tensor as the canonical key
            key = canon
        for off, mine in _PREFIXES:
            if key.startswith(off):
                out[mine + key[len(off):]] = value
                if not has_dec2 and off == "dec_blocks.":
                    out["decoder.blocks2." + key[len(off):]] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"{source}: {len(unknown)} unexpected state_dict keys for MASt3R, e.g. {unknown[:3]}")
    return out


def load_state_dict_strict(model: torch.nn.Module, sd: dict, source: str = "checkpoint") -> None:
    """Check names and shapes, then ``load_state_dict(strict=True, assign=True)`` (no copy of the weights)."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    extra = [k for k in sd if k not in own]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys, e.g. {[official_name(k) for k in missing[:3]]}")
        if extra:
            parts.append(f"{len(extra)} unexpected keys, e.g. {extra[:3]}")
        raise CheckpointError(f"{source}: state_dict does not match the network ({'; '.join(parts)})")
    for k, v in own.items():
        if tuple(sd[k].shape) != tuple(v.shape):
            raise CheckpointError(
                f"{source}: {official_name(k)} has shape {tuple(sd[k].shape)}, the network expects {tuple(v.shape)}"
            )
    model.load_state_dict(sd, strict=True, assign=True)


def build_mast3r(ckpt: dict, source: str = "checkpoint", arch: Mast3rArch | None = None):
    """Network from a loaded checkpoint dict (weights stay where they are, e.g. memory-mapped).

    The architecture comes from ``ckpt['args'].model`` (parsed, checked) unless ``arch`` is given
    (in-code test architectures whose DPT sizes differ from the official ones).
    """
    from .mast3r import Mast3rModel

    if arch is None:
        args = ckpt["args"]
        text = getattr(args, "model", None) if not isinstance(args, dict) else args.get("model")
        if not isinstance(text, str):
            raise CheckpointError(
                f"{source}: args has no constructor string 'model' (is this the retrieval file? expected {MAIN_NAME})"
            )
        arch = arch_from_constructor(text, source)
    sd = remap_state_dict(ckpt["model"], source)
    with torch.device("meta"):
        model = Mast3rModel(arch)
    load_state_dict_strict(model, sd, source)
    model.requires_grad_(False)
    return model


def load_mast3r(
    path,
    device="cpu",
    *,
    dtype=None,
    head_weight_dtype=None,
    head_dtype=None,
    attention: str = "sdpa",
    cuda_graphs: bool = False,
    tf32: bool = True,
    channels_last: bool = False,
    trust_pickle: bool = False,
):
    """Load the MASt3R network from an official ``.pth`` file.

    ``dtype`` (fp32 / fp16 / bf16; default fp32) sets the trunk precision, ``head_dtype`` the heads'
    compute precision (default fp32 like the original; fp16 / bf16 run the DPT convolutions and the
    local-feature MLP in half precision, post-processing in fp32), ``head_weight_dtype`` the storage
    of the head weights (default: ``head_dtype`` if half, else ``dtype``), ``attention`` 'sdpa' or
    'math', ``cuda_graphs`` captures encode/decode per shape (CUDA only), ``tf32`` allows TF32 on the
    GPU like the original, ``channels_last`` runs the DPT heads on NHWC maps.
    """
    path = Path(path)
    ckpt = load_torch_file(path, "MASt3R checkpoint", trust_pickle=trust_pickle)
    model = build_mast3r(ckpt, str(path))
    del ckpt
    model.configure(device, dtype or torch.float32, head_weight_dtype, head_dtype=head_dtype or torch.float32)
    if channels_last:
        model.set_channels_last(True)
    model.set_attention(attention)
    model.tf32 = tf32
    if cuda_graphs:
        model.enable_cuda_graphs(True)
    return model


# ---------------------------------------------------------------------------- plain pickles


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _NUMPY_GLOBALS or _numpy_dtype_class(module, name):
            return _numpy_global(module, name)
        if (module, name) in _PLAIN_GLOBALS:
            return getattr(importlib.import_module(module), name)
        raise pickle.UnpicklingError(f"forbidden global {module}.{name}")


def safe_pickle_load(path, what: str = "pickle file"):
    """Unpickle ``path`` admitting only numpy arrays/dtypes/scalars and plain containers."""
    path = check_file(path, what)
    try:
        with open(path, "rb") as f:
            return _RestrictedUnpickler(f).load()
    except pickle.UnpicklingError as e:
        msg = _one_line(e)
        if msg.startswith("forbidden global"):
            raise CheckpointError(
                f"{path}: {what} contains a {msg} (only numpy arrays and plain containers are allowed); "
                f"refusing to load it; {HINT}"
            ) from None
        raise CheckpointError(f"{path}: cannot read the {what} ({msg}); it may be truncated{_size_hint(path)}; {HINT}") from None
    except Exception as e:  # noqa: BLE001 - EOFError, ValueError, ... on damaged files
        raise CheckpointError(
            f"{path}: cannot read the {what} ({type(e).__name__}: {_one_line(e)}); it may be truncated{_size_hint(path)}; {HINT}"
        ) from None


def codebook_path_for(retrieval_path) -> Path:
    """The original's rule: drop the last '_' token of the retrieval file's stem, add '_codebook.pkl'."""
    p = Path(retrieval_path)
    return p.with_name(p.stem.rsplit("_", 1)[0] + "_codebook.pkl")


def default_paths(checkpoint_dir) -> tuple[Path, Path, Path]:
    d = Path(checkpoint_dir)
    return d / MAIN_NAME, d / RETRIEVAL_NAME, d / CODEBOOK_NAME

