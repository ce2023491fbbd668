"""How the frontend talks to the backend: inline (single-thread, deterministic) or a process.

Both clients expose the same methods. Requests are served in FIFO order, so a relocalisation
request is always handled after every keyframe queued before it (database ids == keyframe ids).
"""
from __future__ import annotations

import logging
import os
import queue as queue_mod
import signal
import sys
import time
import traceback

import torch

from ..config import Config
from ..frame import Frame, Mode
from ..priors.base import Prior
from .store import KeyframeStore

log = logging.getLogger(__name__)


def _apply_reloc(store: KeyframeStore, result) -> None:
    if result.success and store.mode == Mode.RELOC:
        store.set("reloc_result_kf", result.keyframe)
        store.mode = Mode.TRACKING
    store.set("reloc_pending", 0)


class InlineBackend:
    """Runs backend work synchronously in the calling thread (``single_thread: True``)."""

    def __init__(self, cfg: Config, prior: Prior, store: KeyframeStore, device):
        from ..backend.backend import Backend

        self.store = store
        self.backend = Backend(cfg, prior, store, device)

    def submit_keyframe(self, idx: int) -> None:
        self.backend.add_keyframe(idx)

    def submit_link(self, i: int, j: int) -> None:
        """Ask for an edge between keyframes i and j (keyframe re-use), after everything queued."""
        self.backend.add_link(i, j)

    def submit_reloc(self, frame: Frame) -> None:
        self.store.set("reloc_pending", 1)
        _apply_reloc(self.store, self.backend.relocalise(frame))

    @property
    def stats(self) -> dict:
        return _stats(self.backend)

    def alive(self) -> bool:
        return True

    def finish(self, timeout: float | None = None) -> bool:
        return True

    def kill(self) -> None:
        pass


def _stats(backend) -> dict:
    return {"loop_closure_edges": backend.loop_closures, "reuse_links": backend.links_added}


def _frame_to_cpu(frame: Frame) -> Frame:
    def cpu(t):
        return t.detach().cpu() if isinstance(t, torch.Tensor) else t

    return Frame(
        frame_id=frame.frame_id, img=cpu(frame.img), uimg=cpu(frame.uimg), img_shape=frame.img_shape, T_WC=cpu(frame.T_WC),
        timestamp=frame.timestamp, K=cpu(frame.K), X_canon=cpu(frame.X_canon), C=cpu(frame.C), N=frame.N,
        N_updates=frame.N_updates, feat=cpu(frame.feat), pos=cpu(frame.pos), score=frame.score,
    )


def _frame_to(frame: Frame, device) -> Frame:
    for name in ("img", "T_WC", "K", "X_canon", "C", "feat", "pos"):
        t = getattr(frame, name)
        if isinstance(t, torch.Tensor):
            setattr(frame, name, t.to(device))
    return frame


def backend_main(cfg: Config, prior: Prior, store: KeyframeStore, device: str, tasks, results, num_threads: int) -> None:
    """Entry point of the backend process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process decides when to stop
    torch.set_grad_enabled(False)
    if num_threads > 0:
        torch.set_num_threads(num_threads)
    from ..backend.backend import Backend

    try:
        backend = Backend(cfg, prior, store, device)
        while True:
            task = tasks.get()
            if task is None:
                break
            kind, payload = task
            store.set("backend_busy", 1)
            if kind == "kf":
                backend.add_keyframe(payload)
            elif kind == "link":
                backend.add_link(*payload)
            elif kind == "reloc":
                if store.mode == Mode.RELOC:
                    _apply_reloc(store, backend.relocalise(_frame_to(payload, device)))
                else:
                    store.set("reloc_pending", 0)
            store.set("backend_busy", 0)
            results.put(("stats", _stats(backend)))
    except Exception:
        sys.stderr.write("backend process failed:\n" + traceback.format_exc())
        sys.stderr.flush()
        os._exit(1)


class ProcessBackend:
    """Runs the backend in its own process; requests go through a queue."""

    def __init__(self, cfg: Config, prior: Prior, store: KeyframeStore, device, ctx, num_threads: int = 0):
        self.store = store
        self.tasks = ctx.Queue()
        self.results = ctx.Queue()
        self._stats: dict = {"loop_closure_edges": 0, "reuse_links": 0}
        self.proc = ctx.Process(
            target=backend_main, args=(cfg, prior, store, str(device), self.tasks, self.results, num_threads),
            name="mast3r-slam-backend", daemon=True,
        )
        self.proc.start()

    def submit_keyframe(self, idx: int) -> None:
        self.tasks.put(("kf", idx))

    def submit_link(self, i: int, j: int) -> None:
        self.tasks.put(("link", (int(i), int(j))))

    def submit_reloc(self, frame: Frame) -> None:
        if self.store.get("reloc_pending"):
            return  # one attempt at a time; the next RELOC frame is sent once this one is served
        self.store.set("reloc_pending", 1)
        self.tasks.put(("reloc", _frame_to_cpu(frame)))

    @property
    def stats(self) -> dict:
        while True:
            try:
                kind, val = self.results.get_nowait()
            except queue_mod.Empty:
                break
            if kind == "stats":
                self._stats = val
        return self._stats

    def alive(self) -> bool:
        return self.proc.is_alive()

    def finish(self, timeout: float | None = None) -> bool:
        """Let the backend drain its queue, then stop it. Returns False if it had to be killed."""
        if not self.proc.is_alive():
            return False
        self.tasks.put(None)
        t0 = time.time()
        while self.proc.is_alive() and (timeout is None or time.time() - t0 < timeout):
            self.proc.join(0.1)
            self.stats  # drain results so the queue feeder never blocks the child's exit
        if self.proc.is_alive():
            self.kill()
            return False
        self.stats
        return self.proc.exitcode == 0

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)
