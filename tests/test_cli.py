"""Command line: help lists the options; wrong arguments give one line and a non-zero exit."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(*args, timeout=120):
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout)


def test_help_lists_options():
    r = run("--help")
    assert r.returncode == 0
    for opt in ["--dataset", "--config", "--calib", "--prior", "--checkpoint-dir", "--output", "--no-viz", "--device", "--set"]:
        assert opt in r.stdout, opt
    assert "mast3r" in r.stdout and "oracle" in r.stdout


@pytest.mark.parametrize(
    "args,code,frag",
    [
        (["--bogus"], 2, "unrecognized arguments"),
        (["--prior", "magic"], 2, "invalid choice"),
        (["--max-frames", "0"], 2, "--max-frames"),
        (["--set", "tracking.nope=1", "--no-viz"], 1, "unknown key 'tracking.nope'"),
        (["--config", "does_not_exist.yaml", "--no-viz"], 1, "does_not_exist.yaml"),
    ],
)
def test_bad_arguments_one_line(args, code, frag):
    r = run(*args)
    assert r.returncode == code
    err = r.stderr.strip()
    assert frag in err
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in r.stderr


def test_readme_starts_with_the_two_commands_and_ci_runs_the_second():
    lines = [l for l in (ROOT / "README.md").read_text().splitlines() if l.strip()]
    assert lines[1] == "```bash"
    run_cmd, test_cmd = lines[2], lines[3]
    assert "main.py" in run_cmd and "scripts/setup.sh" in run_cmd
    assert "pytest" in test_cmd and "scripts/setup.sh --test" in test_cmd
    assert test_cmd in (ROOT / ".ci" / "run").read_text()
