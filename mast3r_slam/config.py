"""Typed configuration.

Defaults live in code (the dataclasses below) and equal the original implementation's
``config/base.yaml``. YAML files only override them:

* ``inherit: <path>`` loads the parent file first and deep-merges the child over it
  (paths are tried relative to the child file, the working directory and the repository root);
* every key is checked against the schema: an unknown key or a value of the wrong type is a
  one-line :class:`~mast3r_slam.errors.ConfigError` naming the key and the file;
* ``--set section.key=value`` overrides (repeatable) are validated the same way.

There is no module-global config: the :class:`Config` object is passed explicitly, including to
worker processes (it pickles).
"""
from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from .errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "config"


# ----------------------------------------------------------------------------------------------
# Schema
# ----------------------------------------------------------------------------------------------
@dataclass
class DatasetConfig:
    subsample: int = 1  # keep every n-th frame (timestamps kept)
    img_downsample: int = 1  # stride-subsample network outputs (only 1 is supported, see docs/QUIRKS.md)
    center_principle_point: bool = True  # OpenCV optimal-new-camera-matrix centring flag
    img_size: int = 512  # long side of the network input


@dataclass
class MatchingConfig:
    max_iter: int = 10
    lambda_init: float = 1e-8
    convergence_thresh: float = 1e-6
    dist_thresh: float = 0.1
    radius: int = 3
    dilation_max: int = 5
    subpixel: bool = True  # ours: track with sub-pixel matches (the original truncated them; docs/QUIRKS.md)
    subpixel_iters: int = 3  # projective iterations that polish the refined match to sub-pixel precision


@dataclass
class TrackingConfig:
    min_match_frac: float = 0.05
    max_iters: int = 50
    C_conf: float = 0.0
    Q_conf: float = 1.5
    rel_error: float = 1e-3
    delta_norm: float = 1e-3
    huber: float = 1.345
    match_frac_thresh: float = 0.333
    sigma_ray: float = 0.003
    sigma_dist: float = 10.0
    sigma_pixel: float = 1.0
    sigma_depth: float = 10.0
    sigma_point: float = 0.05
    pixel_border: int = -10
    depth_eps: float = 1e-6
    filtering_mode: str = "weighted_pointmap"
    filtering_score: str = "median"
    # ours (not in the original; docs/QUIRKS.md): before making a new keyframe, try to track the
    # frame against up to ``reuse_candidates`` existing keyframes near its pose; if one needs no new
    # keyframe the frame switches to it (and the backend links it to the previous keyframe).
    # Off by default (fewer keyframes on revisits = less redundancy: 2-lap loop ATE 1.96 -> 3.83 cm);
    # recommended for long runs that revisit places (bounded memory and backend work)
    reuse_keyframes: bool = False
    reuse_candidates: int = 2  # nearest keyframes tried (0: off, like reuse_keyframes False)
    reuse_max_dist: float = 0.5  # camera-centre distance / (keyframe median depth x its scale)
    reuse_max_angle: float = 30.0  # degrees between the viewing directions


@dataclass
class LocalOptConfig:
    pin: int = 1
    window_size: float = 1e6  # ours: implemented (the original ignored it); keyframes optimised per solve, the rest fixed
    C_conf: float = 0.0
    Q_conf: float = 1.5
    min_match_frac: float = 0.1
    pixel_border: int = -10
    depth_eps: float = 1e-6
    max_iters: int = 10
    sigma_ray: float = 0.003
    sigma_dist: float = 10.0
    sigma_pixel: float = 1.0
    sigma_depth: float = 10.0
    sigma_point: float = 0.05
    delta_norm: float = 1e-8
    use_cuda: bool = True
    huber: float = 1.345  # hard-coded in the original's kernel; exposed here


@dataclass
class RetrievalConfig:
    k: int = 3
    min_thresh: float = 5e-3


@dataclass
class RelocConfig:
    min_match_frac: float = 0.3
    strict: bool = True


@dataclass
class NetworkConfig:
    """How the MASt3R network runs (ours; the original always ran fp32)."""

    precision: str = "fp16"  # trunk precision on CUDA: fp32, fp16 or bf16 (CPU always fp32)
    head_precision: str = "fp16"  # heads on CUDA: fp32 (the original), fp16 or bf16; post-processing always fp32
    cuda_graphs: bool = True  # capture encode / pair decode in CUDA graphs (fixed shapes)


@dataclass
class DynamicConfig:
    """Moving-object handling (ours; the original assumes a static world). docs/DYNAMIC.md."""

    enabled: bool = True  # on by default: static scenes do not get worse (docs/DYNAMIC.md); false: the original static world
    rel_thresh: float = 0.15  # a point nearer than (1 - this) x the depth the other view saw there has moved
    edge_frac: float = 0.012  # ... compared with the minimum depth over a window of this fraction of the width
    edge_depth_tol: float = 0.05  # pixels near a relative depth jump above this (blurred edges) are not judged
    border_px: int = 2  # points projecting within this many pixels of the border are not judged
    keyframe_votes: int = 2  # frames that must flag a keyframe pixel before it leaves the map
    dilate_px: int = 1  # grow the masks by this many pixels (object boundaries are blurred)
    max_moving_frac: float = 0.5  # two views in which more of the judged pixels than this moved are not registered: no evidence
    grow_frac: float = 0.05  # spread masks over depth-continuous surfaces by up to this fraction of the width
    grow_depth_tol: float = 0.03  # neighbours within this relative depth belong to the same surface
    backend_max_gap: int = 2  # backend: matches of keyframes at most this far apart that disagree in 3D are dropped
    cross_check_votes: int = 1  # end of run: neighbouring keyframes that must see a keyframe pixel gone (0: no clean-up)
    fill_frac: float = 0.3  # end of run: a surface inside depth edges more than this much flagged is flagged whole (0: off)
    outline_steps: int = 4  # end of run: masks take the depth-edge pixels they touch, up to this many edge windows away (0: off)
    resolve: bool = True  # re-solve the tracking pose without the pixels found to move


_FILTERING_MODES = ("recent", "first", "best_score", "indep_conf", "weighted_pointmap", "weighted_spherical")


@dataclass
class Config:
    use_calib: bool = False
    single_thread: bool = False
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    matching: MatchingConfig = field(default_factory=MatchingConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    local_opt: LocalOptConfig = field(default_factory=LocalOptConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    reloc: RelocConfig = field(default_factory=RelocConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    dynamic: DynamicConfig = field(default_factory=DynamicConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **overrides: Any) -> "Config":
        """Copy with dotted-key overrides, e.g. ``cfg.replace(**{"tracking.max_iters": 5})``."""
        data = self.to_dict()
        for key, value in overrides.items():
            _set_dotted(data, key.split("."), value)
        return _build(Config, data, origin="<replace>")


# ----------------------------------------------------------------------------------------------
# YAML with an extended float resolver (so that 1e-8 is a float, as in the original)
# ----------------------------------------------------------------------------------------------
class _Loader(yaml.SafeLoader):
    pass


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def parse_yaml_text(text: str, origin: str = "<string>") -> Any:
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{origin}:{where} is not valid YAML ({getattr(e, 'problem', e)})") from None


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _check_value(tp: Any, value: Any, key: str, origin: str) -> Any:
    if tp in (float, "float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{origin}: '{key}' must be a number, got {value!r}")
        return float(value)
    if tp in (int, "int"):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{origin}: '{key}' must be an integer, got {value!r}")
        return value
    if tp in (bool, "bool"):
        if not isinstance(value, bool):
            raise ConfigError(f"{origin}: '{key}' must be true or false, got {value!r}")
        return value
    if tp in (str, "str"):
        if not isinstance(value, str):
            raise ConfigError(f"{origin}: '{key}' must be a string, got {value!r}")
        return value
    raise ConfigError(f"{origin}: unsupported type {_type_name(tp)} for '{key}'")


def _fields(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _resolve_type(cls, f: dataclasses.Field) -> Any:
    tp = f.type
    if isinstance(tp, str):  # from __future__ annotations
        tp = {"int": int, "float": float, "bool": bool, "str": str}.get(tp, None) or _SECTIONS.get(tp, tp)
    return tp


def _validate(cls, data: Any, origin: str, prefix: str = "") -> None:
    """Check keys and types of a (possibly partial) dict against a dataclass schema."""
    if not isinstance(data, Mapping):
        what = f"section '{prefix.rstrip('.')}'" if prefix else "the top level"
        raise ConfigError(f"{origin}: {what} must be a mapping of keys to values, got {data!r}")
    fields = _fields(cls)
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else f" (valid: {', '.join(fields)})"
            raise ConfigError(f"{origin}: unknown key '{full}'{hint}")
        tp = _resolve_type(cls, fields[key])
        if dataclasses.is_dataclass(tp):
            _validate(tp, value, origin, prefix=f"{full}.")
        else:
            _check_value(tp, value, full, origin)
    if cls is TrackingConfig and "filtering_mode" in data and data["filtering_mode"] not in _FILTERING_MODES:
        raise ConfigError(
            f"{origin}: 'tracking.filtering_mode' must be one of {', '.join(_FILTERING_MODES)}, got {data['filtering_mode']!r}"
        )
    if cls is DatasetConfig and data.get("img_downsample", 1) != 1:
        raise ConfigError(f"{origin}: 'dataset.img_downsample' must be 1 (the original's downsampling was inconsistent and is not supported)")
    if cls is DatasetConfig and "img_size" in data and (data["img_size"] < 32 or data["img_size"] % 16):
        raise ConfigError(f"{origin}: 'dataset.img_size' must be a multiple of 16 and at least 32, got {data['img_size']!r}")
    for key in ("precision", "head_precision"):
        if cls is NetworkConfig and key in data and data[key] not in ("fp32", "fp16", "bf16"):
            raise ConfigError(f"{origin}: 'network.{key}' must be fp32, fp16 or bf16, got {data[key]!r}")
    if cls is TrackingConfig and "filtering_score" in data and data["filtering_score"] not in ("median", "mean"):
        raise ConfigError(f"{origin}: 'tracking.filtering_score' must be median or mean, got {data['filtering_score']!r}")


def _build(cls, data: Mapping, origin: str):
    _validate(cls, data, origin)
    kwargs = {}
    for name, f in _fields(cls).items():
        if name not in data:
            continue
        tp = _resolve_type(cls, f)
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, data[name], origin)
        else:
            kwargs[name] = _check_value(tp, data[name], name, origin)
    return cls(**kwargs)


_SECTIONS = {
    c.__name__: c
    for c in (NetworkConfig, DatasetConfig, MatchingConfig, TrackingConfig, LocalOptConfig, RetrievalConfig, RelocConfig, DynamicConfig, Config)
}


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------
def deep_merge(base: dict, child: Mapping) -> dict:
    out = dict(base)
    for k, v in child.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _set_dotted(data: dict, keys: list[str], value: Any) -> None:
    node = data
    for k in keys[:-1]:
        if not isinstance(node.get(k), dict):
            node[k] = {}
        node = node[k]
    node[keys[-1]] = value


def resolve_config_path(path: str | Path, relative_to: Path | None = None) -> Path:
    """Find a config file: as given, relative to ``relative_to``, the working dir, the repo root,
    or a bare name in ``config/`` (``calib`` -> ``config/calib.yaml``)."""
    p = Path(path)
    candidates = [p] if p.is_absolute() else []
    if not p.is_absolute():
        if relative_to is not None:
            candidates.append(relative_to / p)
        candidates += [Path.cwd() / p, REPO_ROOT / p, CONFIG_DIR / p, CONFIG_DIR / f"{p}.yaml"]
    for c in candidates:
        if c.is_file():
            return c
    raise ConfigError(f"{path}: config file not found (looked in the working directory and {CONFIG_DIR})")


def _load_file(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: 'inherit' loop ({' -> '.join(str(s) for s in seen + (path,))})")
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file ({e.strerror})") from None
    data = parse_yaml_text(text, str(path))
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: the top level must be a mapping of keys to values")
    data = dict(data)
    parent = data.pop("inherit", None)
    _validate(Config, data, str(path))
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise ConfigError(f"{path}: 'inherit' must be a path string, got {parent!r}")
    parent_data = _load_file(resolve_config_path(parent, relative_to=path.parent), seen + (path,))
    return deep_merge(parent_data, data)


def parse_override(text: str) -> tuple[str, Any]:
    """Parse one ``--set section.key=value`` into (dotted key, typed value)."""
    if "=" not in text:
        raise ConfigError(f"--set {text}: expected section.key=value, e.g. --set tracking.max_iters=30")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {text}: empty key")
    value = parse_yaml_text(raw, f"--set {text}") if raw.strip() else ""
    return key, value


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> Config:
    """Load a config file (or the defaults when ``path`` is None) and apply ``--set`` overrides."""
    data: dict = {}
    if path is not None:
        data = _load_file(resolve_config_path(path))
    for text in overrides:
        key, value = parse_override(text)
        patch: dict = {}
        _set_dotted(patch, key.split("."), value)
        _validate(Config, patch, f"--set {text}")
        data = deep_merge(data, patch)
    return _build(Config, data, str(path) if path else "<defaults>")


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(dump_config(cfg))
