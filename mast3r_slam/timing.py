"""Opt-in wall-clock profiling of pipeline sections (benchmarks and ``--profile``).

``with timed("tracking.solve"):`` costs nothing unless :func:`enable` was called; when enabled
it synchronises CUDA around the section so the times are those of the GPU work.

Sections nest: a section entered inside another is its child, and every section also records
its *self* time (its time minus that of its children). The self times of all sections add up to
the time of the outermost sections, so a profile whose outermost section is the whole frame
(``frame`` in :mod:`mast3r_slam.pipeline`) accounts for every millisecond; a parent's self time
is what none of its sub-sections covers.
"""
from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager

import torch

_enabled = False
_totals: dict[str, float] = defaultdict(float)
_self: dict[str, float] = defaultdict(float)
_counts: dict[str, int] = defaultdict(int)
_parents: dict[str, str] = {}
_stack: list[list] = []  # [name, seconds spent in children] of the open sections


def enable(on: bool = True) -> None:
    global _enabled
    _enabled = on


def enabled() -> bool:
    return _enabled


def reset() -> None:
    _totals.clear()
    _self.clear()
    _counts.clear()
    _parents.clear()
    _stack.clear()


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


@contextmanager
def timed(name: str):
    if not _enabled:
        yield
        return
    _sync()
    parent = _stack[-1][0] if _stack else ""
    _stack.append([name, 0.0])
    t0 = time.perf_counter()
    try:
        with torch.profiler.record_function(name):  # names the section in torch.profiler traces
            yield
    finally:
        _sync()
        dt = time.perf_counter() - t0
        entry = _stack.pop() if _stack else [name, 0.0]
        _totals[name] += dt
        _self[name] += dt - entry[1]
        _counts[name] += 1
        _parents.setdefault(name, parent)
        if _stack:
            _stack[-1][1] += dt


def summary() -> dict[str, dict]:
    """{section: {"total_ms", "count", "mean_ms", "self_ms", "parent"}} (parent "" at the top)."""
    return {
        k: {
            "total_ms": 1e3 * v,
            "count": _counts[k],
            "mean_ms": 1e3 * v / max(_counts[k], 1),
            "self_ms": 1e3 * _self[k],
            "parent": _parents.get(k, ""),
        }
        for k, v in sorted(_totals.items())
    }
