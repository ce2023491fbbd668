"""Run a whole SLAM session from command-line arguments (filled in by the runtime issue)."""
from __future__ import annotations

from .errors import Mast3rSlamError


def run_from_args(args, cfg) -> int:
    raise Mast3rSlamError("running SLAM is not available yet: the runtime (issue 6) has not landed")
