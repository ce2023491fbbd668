"""Factor graph over keyframes and global Sim(3) optimisation (spec §5).

Edges (i, j) hold dense pixel correspondences in both directions, found by decoding the pair
symmetrically (one batched prior call for all new pairs) and matching both directions in one
batched call. Global Gauss-Newton runs through :mod:`mast3r_slam.ops` (CUDA or PyTorch) on all
keyframes touched by edges, with exactly one pose (the lowest keyframe id) fixed for the gauge, as
the original.

``local_opt.window_size`` (ours; the original read and ignored it): when the graph has more
keyframes than that, a solve optimises only the ``window_size`` most recently touched keyframes
(new keyframes, both ends of re-use links) over every edge that has one of them at an end; the
other ends of those edges are held fixed (they anchor the gauge). Its cost then no longer grows
with the map. Match indices are stored as int32 (half the memory per edge) and widened per solve.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

from .. import dynamic, ops
from ..config import Config
from ..geometry import constrain_points_to_ray
from ..lie import Sim3
from ..priors.base import Prior
from ..matching import subpixel_positions
from .keyframe_cache import KeyframeCache
from ..timing import timed


@dataclass
class EdgeStats:
    added: int
    rejected: int
    fractions: list[tuple[int, int, float]]  # (i, j, min(frac_i, frac_j)) of every candidate


class FactorGraph:
    def __init__(self, prior: Prior, matcher, keyframes: KeyframeCache, cfg: Config, device: str | torch.device = "cpu"):
        self.prior = prior
        self.matcher = matcher
        self.kf = keyframes
        self.cfg = cfg
        self.device = torch.device(device)
        HW = keyframes.store.HW
        d = self.device
        self.ii = torch.zeros(0, dtype=torch.long, device=d)
        self.jj = torch.zeros(0, dtype=torch.long, device=d)
        self.idx_ii2jj = torch.zeros(0, HW, dtype=torch.int32, device=d)  # int32 storage, widened per solve
        self.idx_jj2ii = torch.zeros(0, HW, dtype=torch.int32, device=d)
        self.valid_match_j = torch.zeros(0, HW, 1, dtype=torch.bool, device=d)
        self.valid_match_i = torch.zeros(0, HW, 1, dtype=torch.bool, device=d)
        self.Q_ii2jj = torch.zeros(0, HW, 1, device=d)
        self.Q_jj2ii = torch.zeros(0, HW, 1, device=d)
        # sub-pixel matches (cfg.matching.subpixel): position (u, v) in i matched to each pixel of j, and vice versa
        self.subpixel = bool(cfg.matching.subpixel)
        self.p_ii2jj = torch.zeros(0, HW, 2, device=d)
        self.p_jj2ii = torch.zeros(0, HW, 2, device=d)
        self._pairs: set[tuple[int, int]] = set()  # unordered keyframe pairs that have an edge
        self._recent: OrderedDict[int, None] = OrderedDict()  # keyframes by last touch (window)
        self.last_solve_size = (0, 0, 0)  # (keyframes optimised, keyframes fixed, edges) of the last solve

    def has_edge(self, i: int, j: int) -> bool:
        return (min(i, j), max(i, j)) in self._pairs

    def touch(self, ids) -> None:
        """Mark keyframes as most recently changed (they are optimised first by windowed solves)."""
        w = max(int(self.cfg.local_opt.window_size), 1) if self.cfg.local_opt.window_size < 1e9 else None
        for i in ids:
            self._recent.pop(int(i), None)
            self._recent[int(i)] = None
        while w is not None and len(self._recent) > w:
            self._recent.popitem(last=False)

    def __len__(self) -> int:
        return int(self.ii.numel())

    @property
    def is_loop(self) -> torch.Tensor:
        """Edges that are not between consecutive keyframes (retrieval / loop-closure edges)."""
        return self.jj - self.ii != 1

    # ------------------------------------------------------------------------------------------
    def add_factors(self, ii: list[int], jj: list[int], min_match_frac: float, is_reloc: bool = False) -> tuple[bool, EdgeStats]:
        """Decode and match candidate pairs; keep those with enough two-way matches.

        Consecutive pairs (i == j - 1) are always kept. With ``is_reloc`` (strict mode) the call is
        all-or-nothing. Returns (anything added, stats).
        """
        if len(ii) == 0:
            return False, EdgeStats(0, 0, [])
        d = self.device
        ii_t = torch.as_tensor(ii, dtype=torch.long, device=d)
        jj_t = torch.as_tensor(jj, dtype=torch.long, device=d)
        with timed("backend.store_read"):
            frames_i = [self.kf.frame(int(i)) for i in ii]
            frames_j = [self.kf.frame(int(j)) for j in jj]
        with timed("backend.prior_pairs"):
            pred = self.prior.symmetric(frames_i, frames_j)  # [4, B, HW, c]: ii, ji, jj, ij
        X, D, Q = pred.X, pred.D, pred.Q
        B = len(ii)
        H, W = frames_i[0].img_shape
        X11 = torch.cat([X[0], X[2]])  # X_ii, X_jj
        X21 = torch.cat([X[1], X[3]])  # X_ji, X_ij
        D11 = torch.cat([D[0], D[2]])
        D21 = torch.cat([D[1], D[3]])
        shp = (2 * B, H, W, -1)
        with timed("backend.matching"):
            idx, valid = self.matcher(X11.reshape(shp), X21.reshape(shp), D11.reshape(shp), D21.reshape(shp))
        idx_i2j, idx_j2i = idx[:B], idx[B:]
        valid_j, valid_i = valid[:B], valid[B:]
        if self.subpixel:  # both directions of all pairs in one batched call
            with timed("backend.subpixel"):
                p = subpixel_positions(X11, X21, idx, H, W, self.cfg.matching.subpixel_iters)
            p_i2j, p_j2i = p[:B], p[B:]
        Q_j = torch.sqrt(torch.gather(Q[0], 1, idx_i2j[..., None]) * Q[1])
        Q_i = torch.sqrt(torch.gather(Q[2], 1, idx_j2i[..., None]) * Q[3])
        Qc = self.cfg.local_opt.Q_conf
        frac_j = (valid_j & (Q_j > Qc)).float().mean(dim=(1, 2))
        frac_i = (valid_i & (Q_i > Qc)).float().mean(dim=(1, 2))
        frac = torch.minimum(frac_i, frac_j)
        consecutive = ii_t == jj_t - 1
        invalid = (frac < min_match_frac) & ~consecutive
        frac_l = frac.tolist()
        stats_fr = [(int(a), int(b), f) for a, b, f in zip(ii, jj, frac_l)]
        n_invalid = int(invalid.sum())
        if is_reloc and n_invalid > 0:
            return False, EdgeStats(0, n_invalid, stats_fr)
        keep = ~invalid
        if self.cfg.dynamic.enabled:
            valid_j, valid_i = self._drop_moving_matches(frames_i, frames_j, ii_t, jj_t, idx_i2j, idx_j2i, valid_j, valid_i)
        self.ii = torch.cat([self.ii, ii_t[keep]])
        self.jj = torch.cat([self.jj, jj_t[keep]])
        self.idx_ii2jj = torch.cat([self.idx_ii2jj, idx_i2j[keep].to(torch.int32)])
        self.idx_jj2ii = torch.cat([self.idx_jj2ii, idx_j2i[keep].to(torch.int32)])
        self.valid_match_j = torch.cat([self.valid_match_j, valid_j[keep]])
        self.valid_match_i = torch.cat([self.valid_match_i, valid_i[keep]])
        self.Q_ii2jj = torch.cat([self.Q_ii2jj, Q_j[keep]])
        self.Q_jj2ii = torch.cat([self.Q_jj2ii, Q_i[keep]])
        if self.subpixel:
            self.p_ii2jj = torch.cat([self.p_ii2jj, p_i2j[keep]])
            self.p_jj2ii = torch.cat([self.p_jj2ii, p_j2i[keep]])
        for a, b, k in zip(ii, jj, keep.tolist()):
            if k:
                self._pairs.add((min(int(a), int(b)), max(int(a), int(b))))
        added = B - n_invalid
        return added > 0, EdgeStats(added, n_invalid, stats_fr)

    def _drop_moving_matches(self, frames_i, frames_j, ii_t, jj_t, idx_i2j, idx_j2i, valid_j, valid_i):
        """Leave out matches of nearby keyframes whose two points disagree in 3D (world, current
        poses) by more than ``dynamic.rel_thresh`` of the range: a moving object that the network
        registered onto itself would otherwise pull the two poses by its own motion.

        Only pairs at most ``dynamic.backend_max_gap`` keyframes apart are judged (their poses are
        locally consistent; a loop closure's are not, before the solve), and only where the
        frontend has seen motion in one of the two keyframes (a static scene's matches are left as
        the original keeps them: 3D disagreement alone is also what depth noise and parallax give).
        The match fractions that decided which edges to keep are not changed."""
        gap = self.cfg.dynamic.backend_max_gap
        none = torch.zeros(1, dtype=torch.bool, device=ii_t.device)
        moved = [(m if (m := dynamic.keyframe_mask(f)) is not None else none).reshape(-1).any() for f in (*frames_i, *frames_j)]
        moved = torch.stack(moved)  # (no host read)
        near = ((ii_t - jj_t).abs() <= gap) & (moved[: len(frames_i)] | moved[len(frames_i) :])
        if gap <= 0 or not bool(near.any()):
            return valid_j, valid_i
        # the keyframes this call already read (no second pass through the store)
        Xi, Ti = torch.stack([f.X_canon for f in frames_i]), torch.cat([f.T_WC for f in frames_i])
        Xj, Tj = torch.stack([f.X_canon for f in frames_j]), torch.cat([f.T_WC for f in frames_j])
        tau = self.cfg.dynamic.rel_thresh

        max_frac = self.cfg.dynamic.max_moving_frac

        def bad(X_row, T_row, X_other, T_other, idx, valid):  # rows: pixels of one keyframe; idx into the other
            P_row = Sim3.act(T_row[:, None], X_row)
            P_other = Sim3.act(T_other[:, None], torch.gather(X_other, 1, idx[..., None].expand(-1, -1, 3)))
            rng = X_row.norm(dim=-1) * T_row[:, None, 7].abs()
            b = ((P_row - P_other).norm(dim=-1) > tau * rng) & valid[..., 0]
            # an edge whose matches mostly disagree has wrong current poses (its solve has not run
            # yet), not a moving world: dropping them would leave the keyframe unconstrained
            plausible = b.sum(1) <= max_frac * valid[..., 0].sum(1)
            return b & (near & plausible)[:, None]

        valid_j = valid_j & ~bad(Xj, Tj, Xi, Ti, idx_i2j, valid_j)[..., None]
        valid_i = valid_i & ~bad(Xi, Ti, Xj, Tj, idx_j2i, valid_i)[..., None]
        return valid_j, valid_i

    # ------------------------------------------------------------------------------------------
    def _problem(self):
        """Edges and keyframes of the next solve: (edge selection or None for all, keyframe ids in
        row order, number of fixed leading rows). Without a window (or a window covering the graph):
        all edges, sorted ids, the lowest fixed, as the original."""
        lo = self.cfg.local_opt
        unique = torch.unique(torch.cat([self.ii, self.jj]))  # sorted
        w = lo.window_size
        if w >= unique.numel() or not self._recent:
            return None, unique.tolist(), 1
        free = torch.as_tensor(list(self._recent)[-max(int(w), 1):], dtype=torch.long, device=self.device)
        sel = torch.isin(self.ii, free) | torch.isin(self.jj, free)
        ids = torch.unique(torch.cat([self.ii[sel], self.jj[sel]]))
        is_free = torch.isin(ids, free)
        fixed, moving = ids[~is_free].tolist(), ids[is_free].tolist()
        if not fixed:  # a component of its own: gauge on its lowest id, as the original
            return sel, moving, 1
        return sel, fixed + moving, len(fixed)

    def solve(self) -> torch.Tensor | None:
        """Gauss-Newton over the keyframes in the graph (or its window); writes poses back to the store."""
        lo = self.cfg.local_opt
        if len(self) == 0 or lo.max_iters <= 0:  # max_iters 0: no global optimisation (frontend only)
            return None
        sel, ids, n_fixed = self._problem()
        if sel is None and len(ids) <= lo.pin:
            return None
        if len(ids) <= n_fixed:
            return None

        def pick(t):
            return t if sel is None else t[sel]

        # row labels: position of every keyframe id in ``ids`` (the solver fixes the first n_fixed rows)
        lut = torch.full((max(ids) + 1,), -1, dtype=torch.long, device=self.device)
        lut[torch.as_tensor(ids, dtype=torch.long, device=self.device)] = torch.arange(len(ids), device=self.device)
        gi, gj = lut[pick(self.ii)], lut[pick(self.jj)]
        ii = torch.cat([gi, gj])
        jj = torch.cat([gj, gi])
        idx = torch.cat([pick(self.idx_ii2jj), pick(self.idx_jj2ii)]).long()
        valid = torch.cat([pick(self.valid_match_j), pick(self.valid_match_i)])
        Q = torch.cat([pick(self.Q_ii2jj), pick(self.Q_jj2ii)])
        p = torch.cat([pick(self.p_ii2jj), pick(self.p_jj2ii)]) if self.subpixel else None  # sub-pixel measurements
        self.last_solve_size = (len(ids) - n_fixed, n_fixed, int(gi.numel()))
        with timed("backend.store_read"):
            Xs, Cs, T_WC, K = self.kf.stack(ids)
        if self.cfg.dynamic.enabled:  # moving pixels (found by the frontend) constrain nothing
            dyn = self.kf.dyn_masks(ids)
            if dyn is not None:
                Cs = Cs.masked_fill(dyn, 0.0)  # the kernels need C > C_conf at both ends of a match
        H, W = self.kf.store.H, self.kf.store.W
        if self.cfg.use_calib:
            Xs = constrain_points_to_ray(Xs, K, H, W)
            dx = ops.gauss_newton_calib(
                T_WC, Xs, Cs, K, ii, jj, idx, valid, Q, H, W, int(lo.pixel_border), lo.depth_eps,
                lo.sigma_pixel, lo.sigma_depth, lo.C_conf, lo.Q_conf, lo.max_iters, lo.delta_norm, huber=lo.huber, p_ii2jj=p,
                n_fixed=n_fixed,
            )
        else:
            dx = ops.gauss_newton_rays(
                T_WC, Xs, Cs, ii, jj, idx, valid, Q, lo.sigma_ray, lo.sigma_dist, lo.C_conf, lo.Q_conf,
                lo.max_iters, lo.delta_norm, huber=lo.huber, p_ii2jj=p, width=W, n_fixed=n_fixed,
            )
        first = lo.pin if sel is None else n_fixed  # the original writes back unique[pin:]
        self.kf.store.set_poses(ids[first:], T_WC[first:])
        self.kf.update_poses(ids[first:], T_WC[first:])
        return dx

    def edge_lists(self) -> tuple[list[int], list[int], list[bool]]:
        return self.ii.tolist(), self.jj.tolist(), self.is_loop.tolist()
