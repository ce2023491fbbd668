"""Configuration: defaults equal the original, inherit + deep merge, strict validation, overrides."""
import subprocess
import sys
from pathlib import Path

import pytest

from mast3r_slam.config import CONFIG_DIR, Config, dump_config, load_config, parse_yaml_text
from mast3r_slam.errors import ConfigError

ORIGINAL_BASE = {  # the original's config/base.yaml (spec §10.1)
    "use_calib": False, "single_thread": False,
    "dataset": {"subsample": 1, "img_downsample": 1, "center_principle_point": True},
    "matching": {"max_iter": 10, "lambda_init": 1e-8, "convergence_thresh": 1e-6, "dist_thresh": 0.1, "radius": 3, "dilation_max": 5},
    "tracking": {"min_match_frac": 0.05, "max_iters": 50, "C_conf": 0.0, "Q_conf": 1.5, "rel_error": 1e-3, "delta_norm": 1e-3,
                 "huber": 1.345, "match_frac_thresh": 0.333, "sigma_ray": 0.003, "sigma_dist": 10.0, "sigma_pixel": 1.0,
                 "sigma_depth": 10.0, "sigma_point": 0.05, "pixel_border": -10, "depth_eps": 1e-6,
                 "filtering_mode": "weighted_pointmap", "filtering_score": "median"},
    "local_opt": {"pin": 1, "window_size": 1e6, "C_conf": 0.0, "Q_conf": 1.5, "min_match_frac": 0.1, "pixel_border": -10,
                  "depth_eps": 1e-6, "max_iters": 10, "sigma_ray": 0.003, "sigma_dist": 10.0, "sigma_pixel": 1.0,
                  "sigma_depth": 10.0, "sigma_point": 0.05, "delta_norm": 1e-8, "use_cuda": True},
    "retrieval": {"k": 3, "min_thresh": 5e-3},
    "reloc": {"min_match_frac": 0.3, "strict": True},
}


def _subset_equal(expected, actual, path=""):
    for k, v in expected.items():
        if isinstance(v, dict):
            _subset_equal(v, actual[k], f"{path}{k}.")
        else:
            assert actual[k] == v and type(actual[k]) is type(v), f"{path}{k}: {actual[k]!r} != {v!r}"


def test_defaults_equal_original_base_yaml():
    _subset_equal(ORIGINAL_BASE, Config().to_dict())
    assert load_config(CONFIG_DIR / "base.yaml") == Config()


@pytest.mark.parametrize(
    "name,expected",
    [
        ("calib", {"use_calib": True, "single_thread": False, "dataset.subsample": 2}),
        ("eval_calib", {"use_calib": True, "single_thread": True, "dataset.subsample": 2}),
        ("eval_no_calib", {"use_calib": False, "single_thread": True, "dataset.subsample": 2}),
        ("eth3d", {"use_calib": True, "single_thread": True, "dataset.subsample": 1,
                   "dataset.center_principle_point": False, "reloc.strict": False}),
    ],
)
def test_derived_configs(name, expected):
    cfg = load_config(CONFIG_DIR / f"{name}.yaml").to_dict()
    for key, value in expected.items():
        node = cfg
        for k in key.split("."):
            node = node[k]
        assert node == value, key
    # everything else keeps the defaults
    assert cfg["tracking"] == Config().to_dict()["tracking"]


def test_float_resolver_parses_exponents():
    assert parse_yaml_text("a: 1e-8")["a"] == 1e-8
    assert parse_yaml_text("a: 5e-3")["a"] == 5e-3
    assert isinstance(parse_yaml_text("a: 1e+6")["a"], float)


def test_inherit_deep_merge(tmp_path):
    (tmp_path / "parent.yaml").write_text("tracking:\n  max_iters: 7\n  huber: 2.0\nretrieval:\n  k: 5\n")
    (tmp_path / "child.yaml").write_text("inherit: parent.yaml\ntracking:\n  max_iters: 9\n")
    cfg = load_config(tmp_path / "child.yaml")
    assert cfg.tracking.max_iters == 9 and cfg.tracking.huber == 2.0 and cfg.retrieval.k == 5
    assert cfg.tracking.Q_conf == 1.5  # untouched default


def test_unknown_key_names_key_and_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("tracking:\n  max_iter: 7\n")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    msg = str(e.value)
    assert "tracking.max_iter" in msg and str(f) in msg and "max_iters" in msg and "\n" not in msg


def test_unknown_key_in_parent_names_parent(tmp_path):
    (tmp_path / "parent.yaml").write_text("matchin:\n  radius: 2\n")
    (tmp_path / "child.yaml").write_text("inherit: parent.yaml\n")
    with pytest.raises(ConfigError, match="parent.yaml.*'matchin'"):
        load_config(tmp_path / "child.yaml")


@pytest.mark.parametrize(
    "text,frag",
    [
        ("tracking:\n  max_iters: ten\n", "'tracking.max_iters' must be an integer"),
        ("use_calib: 1\n", "'use_calib' must be true or false"),
        ("tracking:\n  huber: [1]\n", "'tracking.huber' must be a number"),
        ("tracking: 3\n", "section 'tracking' must be a mapping"),
        ("tracking:\n  filtering_mode: fancy\n", "filtering_mode' must be one of"),
        ("a: [\n", "not valid YAML"),
    ],
)
def test_wrong_types(tmp_path, text, frag):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=frag):
        load_config(f)


def test_overrides():
    cfg = load_config(None, ["tracking.max_iters=30", "use_calib=true", "retrieval.min_thresh=1e-2", "tracking.filtering_mode=recent"])
    assert cfg.tracking.max_iters == 30 and cfg.use_calib is True and cfg.retrieval.min_thresh == 1e-2
    assert cfg.tracking.filtering_mode == "recent"
    with pytest.raises(ConfigError, match="--set tracking.max_iters=x"):
        load_config(None, ["tracking.max_iters=x"])
    with pytest.raises(ConfigError, match="expected section.key=value"):
        load_config(None, ["tracking.max_iters"])


def test_dump_roundtrip(tmp_path):
    cfg = load_config(CONFIG_DIR / "eth3d.yaml", ["tracking.max_iters=12"])
    f = tmp_path / "used.yaml"
    f.write_text(dump_config(cfg))
    assert load_config(f) == cfg


def test_config_pickles():
    import pickle

    cfg = load_config(CONFIG_DIR / "calib.yaml")
    assert pickle.loads(pickle.dumps(cfg)) == cfg
