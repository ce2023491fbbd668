"""CUDA-graph capture of fixed-shape network calls.

At batch 1 the network is bound by Python and kernel-launch overhead (spec: reference benchmarks),
so the per-frame calls (encode one image, decode one pair) are captured once per input shape and
replayed. :class:`CudaGraphRunner` keys graphs by a caller-given key (e.g. ``(B, H, W)``), copies
the inputs into static buffers, replays, and returns *clones* of the outputs (the static outputs
are overwritten by the next replay).

Rules for the wrapped function: no host synchronisation, no data-dependent shapes, and any lazily
built cache (e.g. RoPE tables) must be filled by the warm-up runs, which happen before capture.
Weights must not move after capture (the model drops its graphs when it is moved or re-cast).

The graphs of one runner share one memory pool (``share_pool``): they never run concurrently and
their static outputs stay referenced, so only intermediate buffers are shared; this keeps the
memory of, e.g., decode graphs for several batch sizes close to that of the largest one.
"""
from __future__ import annotations

from typing import Any, Callable

import torch


def _tree_map(fn: Callable[[torch.Tensor], Any], obj):
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: _tree_map(fn, v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_tree_map(fn, v) for v in obj)
    return obj


class _Entry:
    __slots__ = ("graph", "inputs", "outputs")

    def __init__(self, graph, inputs, outputs):
        self.graph, self.inputs, self.outputs = graph, inputs, outputs


class CudaGraphRunner:
    """Capture ``fn(*tensors, **static_kwargs)`` once per key and replay it afterwards."""

    def __init__(self, fn: Callable, warmup: int = 2, share_pool: bool = True):
        self.fn = fn
        self.warmup = warmup
        self.share_pool = share_pool
        self._pool = None
        self._graphs: dict[Any, _Entry] = {}

    def __len__(self) -> int:
        return len(self._graphs)

    def clear(self) -> None:
        self._graphs.clear()
        self._pool = None

    def _capture(self, tensors: tuple[torch.Tensor, ...], kwargs: dict) -> _Entry:
        inputs = tuple(t.clone() for t in tensors)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.fn(*inputs, **kwargs)
        torch.cuda.current_stream().wait_stream(side)
        if self.share_pool and self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool if self.share_pool else None):
            outputs = self.fn(*inputs, **kwargs)
        return _Entry(graph, inputs, outputs)

    def __call__(self, key, *tensors: torch.Tensor, **static_kwargs):
        return self.run(key, tensors, static_kwargs)

    def run(self, key, tensors, static_kwargs=None, *, batch: int | None = None, clone: bool = True):
        """Replay the graph of ``key`` (captured on first use) on ``tensors``.

        ``batch``: the captured batch size when the tensors may hold fewer rows (dim 0): they are
        copied into the leading rows of the static inputs, the other rows keep earlier valid inputs
        (rows must be independent; their outputs are to be ignored). At capture, short inputs are
        padded by repeating their last row. ``clone=False`` returns the static outputs themselves:
        valid only until the next replay of any graph of this runner (they share a memory pool).
        """
        static_kwargs = static_kwargs or {}
        entry = self._graphs.get(key)
        if entry is None:
            if batch is not None:
                tensors = tuple(_pad_rows(t, batch) for t in tensors)
            entry = self._graphs[key] = self._capture(tuple(tensors), static_kwargs)
        for dst, src in zip(entry.inputs, tensors):
            if src.shape[0] == dst.shape[0]:
                dst.copy_(src)
            else:
                dst[: src.shape[0]].copy_(src)
        entry.graph.replay()
        if not clone:
            return entry.outputs
        return _tree_map(lambda t: t.clone(), entry.outputs)


def _pad_rows(t: torch.Tensor, n: int) -> torch.Tensor:
    """t [m, ...] -> [n, ...] by repeating its last row (m <= n)."""
    m = t.shape[0]
    if m == n:
        return t
    if m > n or m == 0:
        raise ValueError(f"CudaGraphRunner: cannot pad {m} rows to a batch of {n}")
    return torch.cat([t, t[-1:].expand(n - m, *t.shape[1:])])
