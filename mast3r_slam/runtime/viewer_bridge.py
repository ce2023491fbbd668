"""The viewer's data interface (:mod:`mast3r_slam.viewer.source`) on the shared keyframe store,
and the viewer process entry point."""
from __future__ import annotations

import signal
import sys

import numpy as np

from ..frame import Mode
from .store import KeyframeStore


class SharedViewerSource:
    """Implements ``ViewerSource`` by reading the shared store (short copies under its lock)."""

    def __init__(self, store: KeyframeStore, stand_in: str | None = None):
        self.store = store
        self.stand_in = stand_in

    def keyframe_versions(self) -> np.ndarray:
        return self.store.versions()

    def keyframe(self, i: int):
        from ..viewer.source import KeyframeData

        if i >= len(self.store):
            return None
        s = self.store
        r = s.read(i, ("frame_id", "T_WC", "X", "C", "N", "uimg", "K", "has_K", "dyn_mask"))
        C = r["C"][:, 0] / max(int(r["N"]), 1)
        C = np.where(r["dyn_mask"] > 0, 0.0, C)  # moving pixels are not part of the map (any threshold hides them)
        return KeyframeData(
            frame_id=int(r["frame_id"]),
            T_WC=r["T_WC"].astype(np.float32),
            X=r["X"].reshape(s.H, s.W, 3),
            C=C.reshape(s.H, s.W).astype(np.float32),
            rgb=r["uimg"],
            K=r["K"] if int(r["has_K"]) else None,
        )

    def keyframe_poses(self) -> np.ndarray:
        return self.store.poses().numpy()

    def current_version(self) -> int:
        v = self.store.get("current_version")
        return v if v > 0 else -1

    def current(self):
        from ..viewer.source import CurrentData

        c = self.store.current()
        if c is None:
            return None
        s = self.store
        mask = c["dyn_mask"].reshape(s.H, s.W).astype(bool)
        return CurrentData(
            frame_id=int(c["frame_id"]),
            T_WC=c["T_WC"].astype(np.float32),
            X=c["X"].reshape(s.H, s.W, 3),
            C=(c["C"][:, 0] / max(int(c["N"]), 1)).reshape(s.H, s.W),
            rgb=c["uimg"],
            dynamic_mask=mask if mask.any() else None,
        )

    def edges(self):
        return self.store.edges()

    def status(self):
        from ..viewer.source import Status

        s = self.store
        n_frames = s.get("n_frames")
        return Status(
            mode=Mode(s.get("mode")).name,
            frame=s.get("frame_index"),
            n_frames=None if n_frames < 0 else n_frames,
            fps=s.get("fps"),
            n_keyframes=len(s),
            n_edges=s.get("n_edges"),
            stand_in=self.stand_in,
            paused=bool(s.get("paused")),
        )


class SharedControl:
    """Implements ``ViewerControl``: writes requests into the shared header for the frontend."""

    def __init__(self, store: KeyframeStore):
        self.store = store

    def set_paused(self, paused: bool) -> None:
        self.store.set("paused", int(bool(paused)))

    def step(self) -> None:
        self.store.add("step_requests", 1)

    def set_conf_threshold(self, c: float) -> None:
        self.store.set("conf_threshold", float(c))

    def terminate(self) -> None:
        self.store.set("terminate", 1)


def viewer_main(store: KeyframeStore, stand_in: str | None, headless_dir: str | None, video: bool, config) -> None:
    """Entry point of the viewer process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from ..viewer import run_viewer

    reason = run_viewer(SharedViewerSource(store, stand_in), SharedControl(store), headless_dir=headless_dir, video=video, config=config)
    if reason == "source_error":
        sys.exit(1)
