"""Per-process device copies of keyframes, refreshed only when a keyframe's data version changes."""
from __future__ import annotations

import numpy as np
import torch

from ..frame import Frame
from ..runtime.store import KeyframeStore


class KeyframeCache:
    def __init__(self, store: KeyframeStore, device: str | torch.device = "cpu"):
        self.store = store
        self.device = torch.device(device)
        self._frames: dict[int, tuple[int, Frame]] = {}

    def _refresh(self, ids: list[int]) -> None:
        versions = self.store.versions()
        poses = self.store.poses()
        for i in ids:
            v = int(versions[i])
            hit = self._frames.get(i)
            if hit is None or hit[0] != v:
                f = self.store.frame(i, device=self.device)
                self._frames[i] = (v, f)
            else:
                hit[1].T_WC = poses[i : i + 1].to(self.device)

    def frame(self, idx: int) -> Frame:
        """Keyframe ``idx`` on this process's device (shared object: do not modify)."""
        self._refresh([idx])
        return self._frames[idx][1]

    def stack(self, ids: list[int]):
        """(Xs [n,HW,3], average confidences [n,HW,1], T_WC [n,8] (a copy), K [3,3] or None)."""
        self._refresh(ids)
        frames = [self._frames[i][1] for i in ids]
        Xs = torch.stack([f.X_canon for f in frames])
        Cs = torch.stack([f.C / max(f.N, 1) for f in frames])
        T = torch.cat([f.T_WC for f in frames]).clone()
        K = frames[0].K
        return Xs, Cs, T, K

    def dyn_masks(self, ids: list[int]) -> torch.Tensor | None:
        """[n, HW, 1] bool dynamic pixels of the keyframes (None: no keyframe has any)."""
        self._refresh(ids)
        masks = [self._frames[i][1].extras.get("dyn_mask") for i in ids]
        if all(m is None for m in masks):
            return None
        HW = self._frames[ids[0]][1].X_canon.shape[0]
        z = torch.zeros(HW, dtype=torch.bool, device=self.device)
        return torch.stack([z if m is None else m.reshape(-1) for m in masks])[..., None]

    def update_poses(self, ids: list[int], T_WC: torch.Tensor) -> None:
        for k, i in enumerate(ids):
            if i in self._frames:
                self._frames[i][1].T_WC = T_WC[k : k + 1].clone()

    def forget(self, idx: int) -> None:
        self._frames.pop(idx, None)
