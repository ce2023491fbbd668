"""Backend logic: graph construction for new keyframes, loop closure, relocalisation (spec §1.5, §6).

This class is process-agnostic: the single-thread mode calls it inline, the multi-process mode runs
it in the backend process (:mod:`mast3r_slam.backend.process`). Retrieval database ids always equal
keyframe ids: keyframes are inserted in order and relocalisation requests are served in FIFO order
after every queued keyframe (the original's race is fixed).

Re-use links (ours, docs/QUIRKS.md): when the frontend switches its tracking keyframe to an
existing one instead of making a new keyframe, it asks for an edge between the previous tracking
keyframe and the re-used one (:meth:`Backend.add_link`), served in the same FIFO order.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..config import Config
from ..frame import Frame
from ..matching import make_matcher
from ..priors.base import Prior
from ..retrieval import RetrievalDatabase
from ..runtime.store import KeyframeStore
from .factor_graph import FactorGraph
from .keyframe_cache import KeyframeCache
from ..timing import timed

log = logging.getLogger(__name__)


@dataclass
class RelocResult:
    success: bool
    keyframe: int = -1  # index of the relocalised (new) keyframe
    hits: tuple[int, ...] = ()


class Backend:
    def __init__(self, cfg: Config, prior: Prior, store: KeyframeStore, device: str | torch.device = "cpu"):
        self.cfg = cfg
        self.prior = prior
        self.store = store
        self.device = torch.device(device)
        self.keyframes = KeyframeCache(store, device)
        self.graph = FactorGraph(prior, make_matcher(cfg.matching), self.keyframes, cfg, device)
        self.db = RetrievalDatabase(prior.retrieval_codebook().to(self.device), device=self.device)
        self.n_inserted = 0  # database ids == keyframe ids
        self.loop_closures = 0
        self.links_added = 0  # re-use links that became edges

    # ------------------------------------------------------------------------------------------
    def _retrieve(self, frame: Frame, add: bool) -> list[int]:
        feats = self.prior.retrieval_features(frame)
        r = self.cfg.retrieval
        if r.k <= 0:  # retrieval off: keep the database ids in step, return no candidates
            if add:
                self.db.add(feats)
            return []
        hits = self.db.update(feats, add_after_query=add, k=r.k, min_thresh=r.min_thresh)
        return [int(h) for h in hits]

    def add_keyframe(self, idx: int) -> int:
        """Edges to the previous keyframe and retrieval hits, then a global solve. Returns edges added."""
        with timed("backend.keyframe"):
            return self._add_keyframe(idx)

    def _add_keyframe(self, idx: int) -> int:
        if idx != self.n_inserted:
            raise RuntimeError(f"backend: keyframe {idx} arrived but the database holds {self.n_inserted} images")
        with timed("backend.store_read"):
            frame = self.keyframes.frame(idx)
        cands = {idx - 1} if idx > 0 else set()
        with timed("backend.retrieval"):
            hits = self._retrieve(frame, add=True)
        self.n_inserted += 1
        cands |= set(hits)
        cands.discard(idx)
        cands = sorted(cands)
        added = 0
        self.graph.touch([idx])
        if cands:
            loops = [c for c in cands if c != idx - 1]
            if loops:
                log.debug("keyframe %d: retrieval candidates %s", idx, loops)
            ok, stats = self.graph.add_factors(cands, [idx] * len(cands), self.cfg.local_opt.min_match_frac)
            added = stats.added
            self.loop_closures += sum(1 for (i, j, f) in stats.fractions if i != j - 1 and f >= self.cfg.local_opt.min_match_frac)
        self._publish_edges()
        with timed("backend.global_opt"):
            self.graph.solve()
        return added

    def add_link(self, i: int, j: int) -> int:
        """Edge between keyframes ``i`` and ``j`` (the frontend switched tracking from one to the
        other) unless one exists; then a solve. Returns edges added (0 or 1)."""
        with timed("backend.link"):
            a, b = min(i, j), max(i, j)
            if a == b or b >= self.n_inserted or self.graph.has_edge(a, b):
                return 0
            ok, stats = self.graph.add_factors([a], [b], self.cfg.local_opt.min_match_frac)
            if not ok:
                return 0
            self.links_added += 1
            if b != a + 1:
                self.loop_closures += 1
            self.graph.touch([a, b])
            self._publish_edges()
            with timed("backend.global_opt"):
                self.graph.solve()
            return 1

    def relocalise(self, frame: Frame) -> RelocResult:
        """Try to attach a lost frame (with its mono pointmap) to the map (spec §6.3, fixed quirks)."""
        hits = self._retrieve(frame, add=False)
        if not hits:
            return RelocResult(False)
        n = self.store.append(frame)
        if n != self.n_inserted:
            self.store.pop_last()
            raise RuntimeError(f"backend: relocalisation keyframe {n} but the database holds {self.n_inserted} images")
        self.keyframes.forget(n)
        rc = self.cfg.reloc
        ok, stats = self.graph.add_factors([n] * len(hits), hits, rc.min_match_frac, is_reloc=rc.strict)
        if not ok:
            self.store.pop_last()
            self.keyframes.forget(n)
            return RelocResult(False, hits=tuple(hits))
        # insert into the database (same id as the keyframe) and start from the best accepted hit
        # (hits are ordered by retrieval score; the original took hits[0] even when its edge was rejected)
        self.db.add(self.prior.retrieval_features(frame))
        self.n_inserted += 1
        accepted = {j for (_, j, f) in stats.fractions if f >= rc.min_match_frac}
        best = next((h for h in hits if h in accepted), hits[0])
        T_best = self.store.poses([best])
        self.store.set_poses([n], T_best)
        self.keyframes.update_poses([n], T_best.to(self.device))
        self.graph.touch([n])
        self._publish_edges()
        self.graph.solve()
        return RelocResult(True, n, tuple(hits))

    def _publish_edges(self) -> None:
        ii, jj, loop = self.graph.edge_lists()
        self.store.set_edges(ii, jj, loop)
