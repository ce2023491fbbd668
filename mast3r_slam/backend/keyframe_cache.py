"""Per-process device copies of keyframes, refreshed only when a keyframe's data version changes.

Two levels, so that the backend's memory per keyframe stays small on long runs:

- geometry (canonical pointmap, average confidence, intrinsics, moving-pixel mask): what the
  global solve reads, kept for every keyframe the solve has used;
- whole frames (images, encoder features, descriptors' inputs): what pair decoding reads, kept
  only for the ``max_frames`` most recently used keyframes (LRU). A new keyframe is decoded with
  its previous keyframe and its retrieval hits, so older ones are rarely read again.

The previous version kept a whole frame of every keyframe ever read (with the network, its
encoder features are ~1.2 MB per keyframe at 512x384 in fp16, plus images).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

from ..frame import Frame
from ..runtime.store import KeyframeStore


@dataclass
class _Geometry:
    version: int
    X: torch.Tensor  # [HW, 3] canonical pointmap
    C: torch.Tensor  # [HW, 1] average confidence C / N
    K: torch.Tensor | None  # [3, 3]
    dyn: torch.Tensor | None  # [HW] bool moving pixels (None: none)


class KeyframeCache:
    def __init__(self, store: KeyframeStore, device: str | torch.device = "cpu", max_frames: int = 16):
        self.store = store
        self.device = torch.device(device)
        self.max_frames = max(int(max_frames), 2)
        self._frames: OrderedDict[int, tuple[int, Frame]] = OrderedDict()
        self._geo: dict[int, _Geometry] = {}

    def __len__(self) -> int:
        return len(self._frames)

    def frame(self, idx: int) -> Frame:
        """Keyframe ``idx`` on this process's device (shared object: do not modify)."""
        v = int(self.store.versions()[idx])
        hit = self._frames.get(idx)
        if hit is None or hit[0] != v:
            f = self.store.frame(idx, device=self.device)
            self._frames[idx] = (v, f)
            self._geo[idx] = _Geometry(v, f.X_canon, f.C_avg(), f.K, f.extras.get("dyn_mask"))
        else:
            f = hit[1]
            f.T_WC = self.store.poses([idx]).to(self.device)
        self._frames.move_to_end(idx)
        while len(self._frames) > self.max_frames:
            self._frames.popitem(last=False)
        return f

    def _refresh_geometry(self, ids: list[int]) -> None:
        versions = self.store.versions()
        for i in ids:
            v = int(versions[i])
            g = self._geo.get(i)
            if g is None or g.version != v:
                f = self.store.frame(i, device=self.device, with_feat=False)
                dyn = f.extras.get("dyn_mask")
                self._geo[i] = _Geometry(v, f.X_canon, f.C_avg(), f.K, None if dyn is None else dyn.reshape(-1))

    def stack(self, ids: list[int]):
        """(Xs [n,HW,3], average confidences [n,HW,1], T_WC [n,8] (from the store), K [3,3] or None)."""
        self._refresh_geometry(ids)
        geos = [self._geo[i] for i in ids]
        Xs = torch.stack([g.X for g in geos])
        Cs = torch.stack([g.C for g in geos])
        T = self.store.poses(ids).to(self.device)
        return Xs, Cs, T, geos[0].K

    def dyn_masks(self, ids: list[int]) -> torch.Tensor | None:
        """[n, HW, 1] bool dynamic pixels of the keyframes (None: no keyframe has any)."""
        self._refresh_geometry(ids)
        masks = [self._geo[i].dyn for i in ids]
        if all(m is None for m in masks):
            return None
        HW = self._geo[ids[0]].X.shape[0]
        z = torch.zeros(HW, dtype=torch.bool, device=self.device)
        return torch.stack([z if m is None else m.reshape(-1) for m in masks])[..., None]

    def update_poses(self, ids: list[int], T_WC: torch.Tensor) -> None:
        for k, i in enumerate(ids):
            if i in self._frames:
                self._frames[i][1].T_WC = T_WC[k : k + 1].clone()

    def forget(self, idx: int) -> None:
        self._frames.pop(idx, None)
        self._geo.pop(idx, None)
