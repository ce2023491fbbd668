"""The SLAM system as a Python object: ``Slam.track(index, timestamp, rgb)`` per frame and
``Slam.finish()`` for the results. No file I/O, no datasets (see :mod:`mast3r_slam.pipeline`).

Processes (spec §1): the frontend runs in the caller's process; the backend runs in its own
process (or inline with ``single_thread``, which is deterministic); the optional viewer runs in a
third process. They share keyframes through :class:`~mast3r_slam.runtime.store.KeyframeStore`.

Per-frame poses: every tracked frame stores its pose relative to the keyframe it was tracked
against; the output trajectory composes it with that keyframe's *final* (globally optimised)
pose, so every frame gets a pose consistent with the optimised map (the original wrote keyframe
poses only).

Keyframe re-use (ours, ``tracking.reuse_keyframes``; docs/QUIRKS.md): when tracking asks for a new
keyframe, the frame is first tracked against up to ``tracking.reuse_candidates`` existing keyframes
near its pose (backend-optimised poses; camera-centre distance relative to the keyframe's median
depth times its scale, and viewing angle). If one of them needs no new keyframe, tracking switches
to it and the backend links it to the previous tracking keyframe; otherwise a keyframe is made as
in the original. A camera that revisits places then stops adding keyframes, so memory and backend
work stay bounded. The extra tracking runs only at keyframe decisions.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from . import dynamic
from .config import Config
from .errors import WorkerError
from .frame import Frame, Mode, create_frame
from .fusion import make_fusion
from .lie import Sim3, quat_rotate
from .priors.base import Prior
from .runtime.store import KeyframeStore
from .timing import timed
from .tracker import FrameTracker

log = logging.getLogger(__name__)


@dataclass
class FrameOutcome:
    index: int
    mode: Mode
    new_keyframe: bool = False
    keyframe: int = -1  # keyframe the frame is attached to (-1: lost)
    info: str = ""


@dataclass
class SlamResult:
    timestamps: list[str]  # one per processed frame
    frame_T_WC: np.ndarray  # [N, 8] Sim(3) per frame (NaN rows for frames without a pose)
    frame_valid: np.ndarray  # [N] bool
    keyframes: list[Frame]  # with final poses, canonical pointmaps, images
    keyframe_timestamps: list[str]
    edges: tuple[np.ndarray, np.ndarray, np.ndarray]
    stats: dict = field(default_factory=dict)


@dataclass
class ViewerOptions:
    enabled: bool = False
    headless_dir: str | None = None
    video: bool = False
    config: object = None


class Slam:
    def __init__(
        self,
        cfg: Config,
        prior: Prior,
        *,
        device: str | torch.device = "cpu",
        K: np.ndarray | None = None,  # intrinsics of the input images (calibrated mode)
        viewer: ViewerOptions | None = None,
        n_frames: int | None = None,
        backend_threads: int = 0,
    ):
        self.cfg = cfg
        self.prior = prior
        self.device = torch.device(device)
        self.K = K
        if cfg.use_calib and K is None:
            raise ValueError("calibrated mode needs the intrinsics K of the input images")
        self.viewer_opts = viewer or ViewerOptions()
        self.n_frames = n_frames
        self.backend_threads = backend_threads
        self.tracker = FrameTracker(prior, cfg.tracking, cfg.matching, use_calib=cfg.use_calib, dynamic_cfg=cfg.dynamic)
        self.mask_sink = None  # callable(timestamp, mask [H, W] bool numpy) for per-frame dynamic masks
        self.fuse = make_fusion(cfg.tracking.filtering_mode, cfg.tracking.filtering_score)
        self.store: KeyframeStore | None = None
        self.backend = None
        self.viewer_proc = None
        self.kf: Frame | None = None  # the tracking keyframe (authoritative copy while tracked)
        self.kf_idx = -1
        self.mode = Mode.INIT
        self.last_T_WC = Sim3.identity(1, device=self.device)
        # per-frame records: keyframe index and relative pose (None when lost)
        self.timestamps: list[str] = []
        self.frame_ids: list[int] = []
        self.rel: list[tuple[int, torch.Tensor] | None] = []
        self.n_reloc = 0
        self.n_lost_frames = 0
        self.n_reused = 0  # keyframe decisions served by an existing keyframe
        self._kf_depth: list[float] = []  # median point distance of each keyframe (its own camera units)
        self.t_start = None
        self._viewer_dead_reported = False

    # ------------------------------------------------------------------------------------------
    # start-up
    # ------------------------------------------------------------------------------------------
    def _start(self, frame: Frame) -> None:
        import torch.multiprocessing as tmp

        ctx = tmp.get_context("spawn")
        H, W = frame.img_shape
        self.store = KeyframeStore.create(H, W, frame.feat, frame.pos, ctx=ctx)
        if self.n_frames is not None:
            self.store.set("n_frames", self.n_frames)
        if self.cfg.single_thread:
            from .runtime.backend_client import InlineBackend

            self.backend = InlineBackend(self.cfg, self.prior, self.store, self.device)
        else:
            from .runtime.backend_client import ProcessBackend

            threads = self.backend_threads
            if threads == 0 and self.device.type == "cpu":
                # split the cores between the two processes: two OpenMP pools that each want every
                # core oversubscribe the CPU and slow both down many times over
                n = torch.get_num_threads()
                threads = max(1, n // 2)
                torch.set_num_threads(max(1, n - threads))
            self.backend = ProcessBackend(self.cfg, self.prior, self.store, self.device, ctx, threads)
        v = self.viewer_opts
        if v.enabled or v.headless_dir:
            from .runtime.viewer_bridge import viewer_main

            label = self.prior.description if self.prior.is_stand_in else None
            self.viewer_proc = ctx.Process(
                target=viewer_main, args=(self.store, label, v.headless_dir, v.video, v.config), name="mast3r-slam-viewer", daemon=True
            )
            self.viewer_proc.start()

    def _make_frame(self, index: int, rgb: np.ndarray, timestamp: str) -> Frame:
        frame = create_frame(
            index, rgb, self.last_T_WC, img_size=self.cfg.dataset.img_size, device=self.device,
            K_orig=self.K if self.cfg.use_calib else None, timestamp=timestamp,
        )
        if self.cfg.use_calib and self.kf is None and frame.K is None:
            raise ValueError("calibrated mode needs intrinsics")
        return frame

    # ------------------------------------------------------------------------------------------
    # control from the viewer
    # ------------------------------------------------------------------------------------------
    def should_stop(self) -> bool:
        return self.store is not None and self.store.get("terminate") == 1

    def wait_if_paused(self) -> None:
        """Block while the viewer has paused SLAM (a single-step request lets one frame through)."""
        s = self.store
        if s is None:
            return
        while s.get("paused") and not s.get("terminate"):
            if s.get("step_requests") > 0:
                s.add("step_requests", -1)
                return
            if self.viewer_proc is not None and not self.viewer_proc.is_alive():
                s.set("paused", 0)
                return
            time.sleep(0.01)

    def check_workers(self) -> None:
        """Raise WorkerError when the backend died; report (once) a dead viewer and carry on."""
        if self.backend is not None and not self.backend.alive():
            raise WorkerError("the backend process died (see the message above); results so far are being written")
        if self.viewer_proc is not None and not self.viewer_proc.is_alive() and not self._viewer_dead_reported:
            self._viewer_dead_reported = True
            if self.viewer_proc.exitcode not in (0, None):
                log.warning("the viewer process died (exit code %s); SLAM carries on without it", self.viewer_proc.exitcode)

    # ------------------------------------------------------------------------------------------
    # per frame
    # ------------------------------------------------------------------------------------------
    def _record(self, frame: Frame, kf_idx: int | None, T_rel: torch.Tensor | None) -> None:
        self.timestamps.append(frame.timestamp)
        self.frame_ids.append(frame.frame_id)
        self.rel.append(None if kf_idx is None else (kf_idx, T_rel.detach().reshape(8).cpu()))

    def _set_keyframe(self, frame: Frame, idx: int) -> None:
        self.kf = frame
        self.kf_idx = idx

    def _median_depths(self, n: int) -> torch.Tensor:
        """Median point distance of keyframes 0..n-1 (read once per keyframe from the store)."""
        for i in range(len(self._kf_depth), n):
            X = torch.from_numpy(self.store.read(i, ("X",))["X"]).reshape(-1, 3)
            r = X.norm(dim=-1)
            r = r[torch.isfinite(r) & (r > 0)]
            self._kf_depth.append(float(r.median()) if r.numel() else float("nan"))
        return torch.tensor(self._kf_depth[:n], dtype=torch.float64)

    def _reuse_candidates(self, frame: Frame) -> list[int]:
        """Existing keyframes near the frame's pose, nearest first (at most ``reuse_candidates``)."""
        tc = self.cfg.tracking
        n = len(self.store)
        if not tc.reuse_keyframes or tc.reuse_candidates <= 0 or n < 2:
            return []
        T = self.store.poses().double()  # [n, 8] backend-optimised
        Tf = frame.T_WC.detach().reshape(8).cpu().double()
        depth = self._median_depths(n)
        dist = (T[:, :3] - Tf[:3]).norm(dim=-1) / (depth * T[:, 7].abs()).clamp_min(1e-12)
        ez = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
        cos = (quat_rotate(T[:, 3:7], ez) * quat_rotate(Tf[3:7], ez)).sum(-1).clamp(-1.0, 1.0)
        angle = torch.rad2deg(torch.acos(cos))
        ok = (dist < tc.reuse_max_dist) & (angle < tc.reuse_max_angle) & torch.isfinite(dist)
        ok[self.kf_idx] = False
        score = dist / tc.reuse_max_dist + angle / tc.reuse_max_angle
        cand = torch.nonzero(ok)[:, 0]
        order = torch.argsort(score[cand], stable=True)
        return cand[order][: tc.reuse_candidates].tolist()

    def _try_reuse(self, frame: Frame):
        """Track ``frame`` against nearby keyframes; (index, keyframe, result) of the first that
        needs no new keyframe, or None (the frame is then left as it was)."""
        cands = self._reuse_candidates(frame)
        if not cands:
            return None
        saved = (frame.T_WC, frame.X_canon.clone(), frame.C.clone(), frame.N, frame.N_updates, frame.score, dict(frame.extras))
        for c in cands:
            kf = self.store.frame(c, device=self.device)
            self.tracker.reset()
            self.tracker.T_CkCf_prev = Sim3.mul(Sim3.inv(kf.T_WC), frame.T_WC)  # the frame's pose relative to c
            with timed("frontend.reuse_track"):
                res = self.tracker.track(frame, kf)
            if res.ok and not res.new_keyframe:
                return c, kf, res
            frame.T_WC, X, C, frame.N, frame.N_updates, frame.score, extras = saved
            frame.X_canon, frame.C, frame.extras = X.clone(), C.clone(), dict(extras)
        self.tracker.reset()
        return None

    def _check_reloc_done(self) -> None:
        """Switch back to tracking once the backend relocalised a frame."""
        if self.mode == Mode.RELOC and self.store.mode == Mode.TRACKING:
            n = self.store.get("reloc_result_kf")
            kf = self.store.frame(n, device=self.device)
            self._set_keyframe(kf, n)
            self.tracker.reset()  # fixed quirk: no stale match initialisation after relocalisation
            self.last_T_WC = kf.T_WC.clone()  # fixed quirk: continue from the recovered pose
            # the relocalised frame is itself the keyframe
            fid = kf.frame_id
            for k in range(len(self.frame_ids) - 1, -1, -1):
                if self.frame_ids[k] == fid:
                    self.rel[k] = (n, Sim3.identity(1).reshape(8))
                    break
            self.mode = Mode.TRACKING
            self.n_reloc += 1
            log.info("relocalised at frame %d (keyframe %d)", fid, n)

    def track(self, index: int, timestamp: str, rgb: np.ndarray) -> FrameOutcome:
        """Process one frame (RGB uint8 HxWx3, already undistorted in calibrated mode)."""
        if self.t_start is None:
            self.t_start = time.perf_counter()
        with timed("frontend.prepare"):
            frame = self._make_frame(index, rgb, timestamp)
        if self.store is not None:
            self._check_reloc_done()
            self.store.set("frame_index", index)

        if self.mode == Mode.INIT:
            with timed("frontend.init"):  # first frame: mono prediction, store, backend and viewer start-up
                X, C = self.prior.mono(frame)
                self.prior.encode(frame)
                self.fuse(frame, X, C)
                self._start(frame)
                idx = self.store.append(frame)
            self._set_keyframe(frame, idx)
            self._record(frame, idx, Sim3.identity(1))
            self.backend.submit_keyframe(idx)
            self.mode = Mode.TRACKING
            self.store.mode = Mode.TRACKING
            out = FrameOutcome(index, Mode.INIT, True, idx)
        elif self.mode == Mode.TRACKING:
            self.kf.T_WC = self.store.poses([self.kf_idx]).to(self.device)  # the backend may have moved it
            with timed("frontend.track"):
                res = self.tracker.track(frame, self.kf)
            if not res.ok:
                self.mode = Mode.RELOC
                self.store.mode = Mode.RELOC
                self._record(frame, None, None)
                self.n_lost_frames += 1
                out = FrameOutcome(index, Mode.RELOC, info=res.reason)
                log.info("tracking lost at frame %d: %s", index, res.reason)
            else:
                self.last_T_WC = frame.T_WC
                with timed("frontend.store_write"):
                    self.store[self.kf_idx] = self.kf  # fused keyframe pointmap -> shared store
                if self.mask_sink is not None and dynamic.MASK in frame.extras:
                    with timed("frontend.mask_write"):
                        self.mask_sink(timestamp, frame.extras[dynamic.MASK].reshape(frame.img_shape).cpu().numpy())
                reuse = self._try_reuse(frame) if res.new_keyframe else None
                if reuse is not None:
                    c, kf, res_c = reuse
                    prev = self.kf_idx
                    self.last_T_WC = frame.T_WC
                    with timed("frontend.store_write"):
                        self.store[c] = kf  # fused re-used keyframe -> shared store
                    self._set_keyframe(kf, c)
                    self._record(frame, c, res_c.T_CkCf)
                    self.backend.submit_link(prev, c)
                    self.n_reused += 1
                    out = FrameOutcome(index, Mode.TRACKING, False, c, info=f"re-used keyframe {c}")
                elif res.new_keyframe:
                    if self.cfg.dynamic.enabled:
                        dynamic.init_keyframe(self.cfg.dynamic, frame)
                    with timed("frontend.store_write"):
                        idx = self.store.append(frame)
                    self._set_keyframe(frame, idx)
                    self._record(frame, idx, Sim3.identity(1))
                    self.backend.submit_keyframe(idx)
                    out = FrameOutcome(index, Mode.TRACKING, True, idx)
                else:
                    self._record(frame, self.kf_idx, res.T_CkCf)
                    out = FrameOutcome(index, Mode.TRACKING, False, self.kf_idx)
        else:  # RELOC
            X, C = self.prior.mono(frame)
            self.prior.encode(frame)
            self.fuse(frame, X, C)
            self._record(frame, None, None)
            self.n_lost_frames += 1
            self.backend.submit_reloc(frame)
            self._check_reloc_done()
            out = FrameOutcome(index, self.mode)
        self.store.set_current(frame) if self.viewer_proc is not None else None
        if self.t_start is not None:
            dt = time.perf_counter() - self.t_start
            self.store.set("fps", len(self.rel) / dt if dt > 0 else 0.0)
        return out

    # ------------------------------------------------------------------------------------------
    # results
    # ------------------------------------------------------------------------------------------
    def finish(self, wait_backend: bool = True, timeout: float | None = None) -> SlamResult:
        """Let the backend finish its queue (unless told not to), collect results, stop workers."""
        if self.store is None:
            return SlamResult([], np.zeros((0, 8)), np.zeros(0, bool), [], [], (np.zeros(0), np.zeros(0), np.zeros(0, bool)))
        backend_ok, stats = True, {}
        if self.backend is not None:
            stats = self.backend.stats
            backend_ok = self.backend.finish(timeout if wait_backend else 2.0)
            stats = self.backend.stats if backend_ok else stats
        self.store.mode = Mode.TERMINATED
        return self.collect(extra={"backend_finished": backend_ok, **stats})

    def collect(self, extra: dict | None = None) -> SlamResult:
        s = self.store
        n_kf = len(s)
        kf_poses = s.poses()
        keyframes = [s.frame(i, with_feat=False) for i in range(n_kf)]
        ts_of = {fid: ts for fid, ts in zip(self.frame_ids, self.timestamps)}
        for f in keyframes:
            f.timestamp = ts_of.get(f.frame_id, str(f.frame_id))
        N = len(self.rel)
        T = np.full((N, 8), np.nan, dtype=np.float64)
        valid = np.zeros(N, dtype=bool)
        for k, r in enumerate(self.rel):
            if r is None or r[0] >= n_kf:
                continue
            kf_idx, T_rel = r
            T[k] = Sim3.mul(kf_poses[kf_idx].double(), T_rel.double()).numpy()
            valid[k] = True
        elapsed = time.perf_counter() - self.t_start if self.t_start else 0.0
        stats = {
            "frames": N,
            "keyframes": n_kf,
            "edges": int(s.get("n_edges")),
            "relocalisations": self.n_reloc,
            "lost_frames": self.n_lost_frames,
            "reused_keyframes": self.n_reused,
            "fps": N / elapsed if elapsed > 0 else 0.0,
            "seconds": elapsed,
        }
        stats.update(extra or {})
        return SlamResult(
            timestamps=list(self.timestamps), frame_T_WC=T, frame_valid=valid, keyframes=keyframes,
            keyframe_timestamps=[f.timestamp for f in keyframes], edges=s.edges(), stats=stats,
        )

    def conf_threshold(self) -> float:
        return 1.5 if self.store is None else self.store.get("conf_threshold")

    def close(self) -> None:
        """Stop workers and release the shared store (call after the results are written)."""
        if self.backend is not None:
            self.backend.kill()
        if self.viewer_proc is not None:
            if self.viewer_proc.is_alive():  # it exits by itself once it sees TERMINATED (flushes its video)
                self.viewer_proc.join(timeout=10)
            if self.viewer_proc.is_alive():
                self.viewer_proc.terminate()
                self.viewer_proc.join(2)
        if self.store is not None:
            self.store.close()
            self.store = None
