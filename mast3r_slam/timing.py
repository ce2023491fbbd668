"""Opt-in wall-clock profiling of pipeline sections (benchmarks and ``--profile``).

``with timed("tracking.solve"):`` costs nothing unless :func:`enable` was called; when enabled
it synchronises CUDA around the section so the times are those of the GPU work.
"""
from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager

import torch

_enabled = False
_totals: dict[str, float] = defaultdict(float)
_counts: dict[str, int] = defaultdict(int)


def enable(on: bool = True) -> None:
    global _enabled
    _enabled = on


def reset() -> None:
    _totals.clear()
    _counts.clear()


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


@contextmanager
def timed(name: str):
    if not _enabled:
        yield
        return
    _sync()
    t0 = time.perf_counter()
    try:
        yield
    finally:
        _sync()
        _totals[name] += time.perf_counter() - t0
        _counts[name] += 1


def summary() -> dict[str, dict[str, float]]:
    """{section: {"total_ms", "count", "mean_ms"}}."""
    return {k: {"total_ms": 1e3 * v, "count": _counts[k], "mean_ms": 1e3 * v / max(_counts[k], 1)} for k, v in sorted(_totals.items())}
