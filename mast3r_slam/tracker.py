"""Frame-to-keyframe tracking (spec §4): matching, Sim(3) IRLS Gauss-Newton, keyframe fusion and
the keyframe decision.

The solve runs through :mod:`mast3r_slam.ops` (``track_rays`` / ``track_calib``) without a host
synchronisation per iteration; the tracker reads the result flags once per frame.

Differences from the original (docs/QUIRKS.md): the relative pose is initialised from the previous
frame's relative pose to the same keyframe (identical to the original's constant-position model,
but independent of when the backend moves keyframes), and after relocalisation or a new keyframe
the match initialisation is reset.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import dynamic, ops
from .config import DynamicConfig, MatchingConfig, TrackingConfig
from .frame import Frame
from .fusion import make_fusion
from .geometry import constrain_points_to_ray, pixel_grid
from .lie import Sim3
from .matching import lin_to_pixel, make_matcher, sample_pointmap, subpixel_positions
from .priors.base import Prior
from .timing import timed


@dataclass
class TrackResult:
    ok: bool  # False: tracking failure -> relocalisation
    new_keyframe: bool
    T_CkCf: torch.Tensor | None  # [1, 8] relative pose keyframe <- frame
    match_frac: float  # fraction of keyframe pixels used by the solve
    keyframe_frac: float  # min(valid keyframe fraction, unique fraction) of the keyframe decision
    iterations: int = 0
    reason: str = ""


class FrameTracker:
    def __init__(
        self, prior: Prior, tracking: TrackingConfig, matching: MatchingConfig, use_calib: bool = False,
        dynamic_cfg: DynamicConfig | None = None,
    ):
        self.prior = prior
        self.dyn = dynamic_cfg if dynamic_cfg is not None and dynamic_cfg.enabled else None
        self.subpixel = matching.subpixel
        self.subpixel_iters = matching.subpixel_iters
        self.cfg = tracking
        self.matcher = make_matcher(matching)
        self.fuse = make_fusion(tracking.filtering_mode, tracking.filtering_score)
        self.use_calib = use_calib
        self.idx_f2k: torch.Tensor | None = None
        self.T_CkCf_prev: torch.Tensor | None = None  # relative pose of the previous frame to the keyframe
        self._dyn_graph = None  # CUDA graphs of the moving-object check (captured on first use)

    def reset(self) -> None:
        """Forget the match initialisation and motion prior (new keyframe or relocalisation)."""
        self.idx_f2k = None
        self.T_CkCf_prev = None

    # ------------------------------------------------------------------------------------------
    def track(self, frame: Frame, keyframe: Frame) -> TrackResult:
        """Track ``frame`` against ``keyframe`` (whose canonical map is fused in place on success)."""
        cfg = self.cfg
        H, W = frame.img_shape
        with timed("frontend.prior_pair"):
            res_f, res_k = self.prior.asymmetric(frame, keyframe)  # X^f_f, X^f_k (both in camera f)
        shp = (1, H, W, -1)
        idx_init = None if self.idx_f2k is None else self.idx_f2k[None]
        with timed("frontend.matching"):
            idx, valid_match = self.matcher(res_f.X.reshape(shp), res_k.X.reshape(shp), res_f.D.reshape(shp), res_k.D.reshape(shp), idx_init)
        idx_f2k, valid_match_k = idx[0], valid_match[0]  # [HW], [HW, 1]
        self.idx_f2k = idx_f2k
        Qk = torch.sqrt(res_f.Q[idx_f2k] * res_k.Q)  # [HW, 1]

        self.fuse(frame, res_f.X, res_f.C)  # first call initialises the frame's own pointmap

        Xf_all, Xk = frame.X_canon, keyframe.X_canon
        if self.use_calib:
            Xf_all = constrain_points_to_ray(Xf_all, keyframe.K, H, W)
            Xk = constrain_points_to_ray(Xk, keyframe.K, H, W)
        if self.subpixel:
            # fixed quirk: the original used the truncated integer match, a bias of up to a pixel
            # that is the same for neighbouring pixels (smooth flow) and so does not average out
            with timed("frontend.subpixel"):
                p = subpixel_positions(res_f.X, res_k.X, idx_f2k, H, W, self.subpixel_iters)
                Xf = sample_pointmap(Xf_all, p, H, W)
        else:
            p = None
            Xf = Xf_all[idx_f2k]
        Cf = frame.C_avg()[idx_f2k]
        Ck = keyframe.C_avg()
        valid_Q = Qk > cfg.Q_conf
        confident = (Cf > cfg.C_conf) & (Ck > cfg.C_conf) & valid_Q
        valid_opt = valid_match_k & confident
        kf_dyn = dynamic.keyframe_mask(keyframe) if self.dyn is not None else None
        if kf_dyn is not None:  # keyframe pixels known to move take no part
            valid_opt = valid_opt & ~kf_dyn.reshape(-1, 1)
        valid_kf = valid_match_k & valid_Q
        match_frac = float(valid_opt.float().mean())
        if match_frac < cfg.min_match_frac:
            return TrackResult(False, False, None, match_frac, 0.0, reason=f"match fraction {match_frac:.3f} < {cfg.min_match_frac}")

        T_init = self.T_CkCf_prev if self.T_CkCf_prev is not None else Sim3.identity(1, device=frame.device)
        sqrt_w = valid_opt.float() * torch.sqrt(Qk)
        with timed("frontend.tracking_solve"):
            sol = self._solve(T_init, Xf, Xk, sqrt_w, keyframe.K, H, W)
        if bool(sol.failed):
            return TrackResult(False, False, None, match_frac, 0.0, reason="Cholesky failure in the tracking solve")
        T_CkCf = sol.T_CkCf.reshape(1, 8)
        keep = None
        if self.dyn is not None:
            with timed("frontend.dynamic"):
                T_CkCf, keep, sol = self._dynamic(frame, keyframe, T_CkCf, sol, Xf, Xk, p, idx_f2k, sqrt_w, kf_dyn, H, W)
        self.T_CkCf_prev = T_CkCf
        frame.T_WC = Sim3.mul(keyframe.T_WC, T_CkCf)

        # keyframe fusion with the keyframe's points predicted in f, moved into the keyframe
        with timed("frontend.fusion"):
            self.fuse(keyframe, Sim3.act(T_CkCf, res_k.X), res_k.C, keep)

        # keyframe decision (unique fraction uses the unfiltered matches, as the original)
        match_frac_k = valid_kf.float().mean()
        unique_frac_f = torch.unique(idx_f2k[valid_match_k[:, 0]]).numel() / idx_f2k.numel()
        kf_frac = min(float(match_frac_k), unique_frac_f)
        new_kf = kf_frac < cfg.match_frac_thresh
        if new_kf:
            self.reset()
        return TrackResult(True, new_kf, T_CkCf, match_frac, kf_frac, iterations=int(sol.num_iters))

    def _dynamic(self, frame, keyframe, T_CkCf, sol, Xf, Xk, p, idx_f2k, sqrt_w, kf_dyn, H, W):
        """Find moving pixels with the solved pose; solve again without them if they had weight.

        Returns (pose, keyframe pixels fusion must leave alone, solution)."""
        cfg, tc = self.dyn, self.cfg
        usable_f = frame.C_avg()[:, 0] > tc.C_conf
        usable_k = keyframe.C_avg()[:, 0] > tc.C_conf
        if p is None:
            p = lin_to_pixel(idx_f2k, W)
        dev = Xk.device
        votes = dynamic.keyframe_votes(cfg, keyframe, H, W, dev)
        kf_dyn = torch.zeros(H * W, dtype=torch.bool, device=dev) if kf_dyn is None else kf_dyn.reshape(-1)
        K = () if keyframe.K is None else (keyframe.K.reshape(3, 3).to(Xk.dtype),)
        args = (T_CkCf.reshape(1, 8), frame.X_canon, keyframe.X_canon, Xf, Xk, p.to(Xk.dtype), sqrt_w, usable_f, usable_k, votes, kf_dyn, *K)
        if dev.type == "cuda":  # one graph replay instead of ~500 kernel launches
            if self._dyn_graph is None:
                from .network.cuda_graphs import CudaGraphRunner

                self._dyn_graph = CudaGraphRunner(dynamic.track_step, warmup=1)
            out = self._dyn_graph.run((H, W, len(K)), args, {"cfg": cfg, "H": H, "W": W})
        else:
            out = dynamic.track_step(*args, cfg=cfg, H=H, W=W)
        frame_mask, sqrt_w2, keep, keyframe.extras[dynamic.VOTES], keyframe.extras[dynamic.MASK] = out
        if cfg.resolve:  # always (no host read to decide): a second solve from the first's pose
            sol2 = self._solve(T_CkCf, Xf, Xk, sqrt_w2, keyframe.K, H, W)
            if not bool(sol2.failed):  # the one host read of this step
                sol = sol2
                T_CkCf = sol2.T_CkCf.reshape(1, 8)
        frame.extras[dynamic.MASK] = frame_mask
        return T_CkCf, keep, sol

    def _solve(self, T_init, Xf, Xk, sqrt_w, K, H, W):
        cfg = self.cfg
        if self.use_calib:
            meas_k, valid_meas_k = ops.calib_measurements(Xk, H, W, cfg.depth_eps)
            return ops.track_calib(
                T_init.reshape(8), Xf, meas_k, valid_meas_k, sqrt_w, K, H, W,
                sigma_pixel=cfg.sigma_pixel, sigma_depth=cfg.sigma_depth, pixel_border=cfg.pixel_border,
                depth_eps=cfg.depth_eps, huber=cfg.huber,
                max_iters=cfg.max_iters, rel_error=cfg.rel_error, delta_norm=cfg.delta_norm,
            )
        else:
            return ops.track_rays(
                T_init.reshape(8), Xf, Xk, sqrt_w,
                sigma_ray=cfg.sigma_ray, sigma_dist=cfg.sigma_dist, huber=cfg.huber,
                max_iters=cfg.max_iters, rel_error=cfg.rel_error, delta_norm=cfg.delta_norm,
            )
