"""What the viewer reads (:class:`ViewerSource`) and sends back (:class:`ViewerControl`).

The viewer runs in its own process and *polls* a source once per GUI frame. Every source method
must return promptly without waiting on SLAM (a snapshot copy under a short lock is fine): the
viewer never slows SLAM down, it drops intermediate states instead. All arrays are plain numpy
(CPU) so a source can sit on shared memory, a queue, or (for tests and demos) in memory.

Frames and axes
---------------
* Poses are Sim(3) camera-to-world ``T_WC`` as 8 floats ``[tx, ty, tz, qx, qy, qz, qw, s]``
  (``x_W = s R x_C + t``), the layout of :mod:`mast3r_slam.lie`.
* Cameras use OpenCV axes: x right, y down, z forward. Pointmaps are in the frame's *own* camera.
* Pointmaps are images: ``X[v, u]`` is the point of pixel (u, v) (row-major, ``n = u + W v``).

Change tracking
---------------
``keyframe_versions()[i]`` must change whenever keyframe ``i``'s pointmap, confidence, image or
identity changes (a replaced keyframe gets a new version too); poses are *not* versioned, they are
read every frame through ``keyframe_poses()`` (they move after each global optimisation). The
viewer re-reads and re-uploads keyframe ``i`` only when its version changed, and releases the
textures of indices ``>= len(keyframe_versions())``. ``current_version()`` plays the same role for
the current frame.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

MODES = ("INIT", "TRACKING", "RELOC", "TERMINATED")


@dataclass
class KeyframeData:
    """One keyframe as the viewer needs it."""

    frame_id: int  # index of the frame in the (subsampled) sequence
    T_WC: np.ndarray  # [8] float32 Sim(3) camera-to-world [t(3), q_xyzw(4), s]
    X: np.ndarray  # [H, W, 3] float32 canonical pointmap in the keyframe's own camera (OpenCV axes)
    C: np.ndarray  # [H, W] float32 average confidence (C / N); the network's is >= 1
    rgb: np.ndarray  # [H, W, 3] uint8 image the pointmap was predicted from
    K: np.ndarray | None = None  # [3, 3] intrinsics at pointmap resolution (calibrated mode) or None


@dataclass
class CurrentData:
    """The frame being tracked (the frontend's latest frame)."""

    frame_id: int
    T_WC: np.ndarray  # [8] float32 Sim(3) camera-to-world
    X: np.ndarray  # [H, W, 3] float32 pointmap in the frame's own camera (OpenCV axes)
    C: np.ndarray  # [H, W] float32 confidence
    rgb: np.ndarray  # [H, W, 3] uint8
    dynamic_mask: np.ndarray | None = None  # [H, W] bool, True = moving pixel; None = not computed
    K: np.ndarray | None = None  # [3, 3] intrinsics at pointmap resolution or None


@dataclass
class Status:
    """Run state shown in the GUI."""

    mode: str = "INIT"  # one of MODES (a Mode enum member or its value is accepted too)
    frame: int = 0  # index of the latest processed frame
    n_frames: int | None = None  # sequence length, None for live sources
    fps: float = 0.0  # SLAM frames per second
    n_keyframes: int = 0
    n_edges: int = 0
    stand_in: str | None = None  # label when the prior is the ground-truth stand-in, else None
    paused: bool = False  # SLAM's own view of the pause state


@runtime_checkable
class ViewerSource(Protocol):
    """Read side, polled by the viewer each GUI frame; methods must never block on SLAM."""

    def keyframe_versions(self) -> np.ndarray:  # [n_kf] int64
        ...

    def keyframe(self, i: int) -> KeyframeData | None:  # None when keyframe i no longer exists
        ...

    def keyframe_poses(self) -> np.ndarray:  # [n_kf, 8] float32 Sim(3) T_WC
        ...

    def current_version(self) -> int:  # changes whenever current() would return new data; -1 = none yet
        ...

    def current(self) -> CurrentData | None:
        ...

    def edges(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # ii [E] int64, jj [E] int64, is_loop [E] bool
        ...

    def status(self) -> Status:
        ...


@runtime_checkable
class ViewerControl(Protocol):
    """Write side: what the GUI asks of SLAM (non-blocking)."""

    def set_paused(self, paused: bool) -> None:
        ...

    def step(self) -> None:  # while paused: process exactly one more frame
        ...

    def set_conf_threshold(self, c: float) -> None:  # also used for the final PLY export
        ...

    def terminate(self) -> None:  # the window was closed
        ...


# ----------------------------------------------------------------------------------------------
# In-memory implementations (tests, demos, single-process use)
# ----------------------------------------------------------------------------------------------
def _pose(T) -> np.ndarray:
    T = np.asarray(T, dtype=np.float32).reshape(8)
    return T.copy()


class StaticSource:
    """A :class:`ViewerSource` holding everything in memory; thread-safe setters bump versions.

    ``reads`` counts :meth:`keyframe` calls per index (tests use it to check that the viewer only
    re-reads keyframes whose version changed).
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._kfs: list[KeyframeData] = []
        self._versions: list[int] = []
        self._next_version = 1
        self._current: CurrentData | None = None
        self._current_version = -1
        self._edges = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, bool))
        self._status = Status()
        self.reads: dict[int, int] = {}

    # ---- pickling (the lock is rebuilt) --------------------------------------------------------
    def __getstate__(self):
        d = dict(self.__dict__)
        del d["_lock"]
        return d

    def __setstate__(self, d):
        self.__dict__.update(d)
        self._lock = threading.Lock()

    # ---- writers ---------------------------------------------------------------------------------
    def _bump(self) -> int:
        v = self._next_version
        self._next_version += 1
        return v

    def add_keyframe(self, kf: KeyframeData) -> int:
        """Append a keyframe; returns its index."""
        with self._lock:
            self._kfs.append(kf)
            self._versions.append(self._bump())
            self._status.n_keyframes = len(self._kfs)
            return len(self._kfs) - 1

    def set_keyframe(self, i: int, kf: KeyframeData) -> None:
        """Replace keyframe ``i`` (new version)."""
        with self._lock:
            self._kfs[i] = kf
            self._versions[i] = self._bump()

    def touch_keyframe(self, i: int) -> None:
        """Mark keyframe ``i`` changed (e.g. after editing its arrays in place)."""
        with self._lock:
            self._versions[i] = self._bump()

    def pop_keyframe(self) -> None:
        with self._lock:
            self._kfs.pop()
            self._versions.pop()
            self._status.n_keyframes = len(self._kfs)

    def set_pose(self, i: int, T_WC) -> None:
        """Move keyframe ``i`` (poses are not versioned, like after a global optimisation)."""
        with self._lock:
            self._kfs[i].T_WC = _pose(T_WC)

    def set_current(self, cur: CurrentData | None) -> None:
        with self._lock:
            self._current = cur
            self._current_version = self._bump()

    def set_edges(self, ii, jj, is_loop=None) -> None:
        ii = np.asarray(ii, dtype=np.int64).reshape(-1)
        jj = np.asarray(jj, dtype=np.int64).reshape(-1)
        if ii.shape != jj.shape:
            raise ValueError(f"edges: ii has {ii.size} entries but jj has {jj.size}")
        loop = np.zeros(ii.shape, bool) if is_loop is None else np.asarray(is_loop, bool).reshape(-1)
        with self._lock:
            self._edges = (ii, jj, loop)
            self._status.n_edges = int(ii.size)

    def set_status(self, **changes) -> None:
        with self._lock:
            for k, v in changes.items():
                if not hasattr(self._status, k):
                    raise AttributeError(f"Status has no field {k!r}")
                setattr(self._status, k, v)

    # ---- ViewerSource ----------------------------------------------------------------------------
    def keyframe_versions(self) -> np.ndarray:
        with self._lock:
            return np.asarray(self._versions, dtype=np.int64)

    def keyframe(self, i: int) -> KeyframeData | None:
        with self._lock:
            self.reads[i] = self.reads.get(i, 0) + 1
            return self._kfs[i] if 0 <= i < len(self._kfs) else None

    def keyframe_poses(self) -> np.ndarray:
        with self._lock:
            if not self._kfs:
                return np.zeros((0, 8), np.float32)
            return np.stack([np.asarray(k.T_WC, np.float32).reshape(8) for k in self._kfs])

    def current_version(self) -> int:
        with self._lock:
            return self._current_version

    def current(self) -> CurrentData | None:
        with self._lock:
            return self._current

    def edges(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        with self._lock:
            return self._edges

    def status(self) -> Status:
        with self._lock:
            return Status(**self._status.__dict__)


@dataclass
class RecordingControl:
    """A :class:`ViewerControl` that records what the viewer asked for."""

    paused: bool = False
    conf_threshold: float | None = None
    steps: int = 0
    terminated: bool = False
    events: list = field(default_factory=list)  # [(name, value)] in call order

    def set_paused(self, paused: bool) -> None:
        self.paused = bool(paused)
        self.events.append(("set_paused", self.paused))

    def step(self) -> None:
        self.steps += 1
        self.events.append(("step", None))

    def set_conf_threshold(self, c: float) -> None:
        self.conf_threshold = float(c)
        self.events.append(("set_conf_threshold", float(c)))

    def terminate(self) -> None:
        self.terminated = True
        self.events.append(("terminate", None))


class NullControl:
    """A :class:`ViewerControl` that ignores everything (viewing a finished or recorded map)."""

    def set_paused(self, paused: bool) -> None:
        pass

    def step(self) -> None:
        pass

    def set_conf_threshold(self, c: float) -> None:
        pass

    def terminate(self) -> None:
        pass
