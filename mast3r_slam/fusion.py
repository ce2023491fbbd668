"""Canonical pointmap fusion (spec §2.2): how a keyframe's pointmap absorbs new predictions.

``make_fusion(mode, score)`` returns a callable ``fuse(frame, X [HW,3], C [HW,1])``. Modes:

* ``weighted_pointmap`` (default): confidence-weighted running average, C accumulates.
* ``weighted_spherical``: the same average in (r, azimuth, polar) coordinates. Fixed: the azimuth is
  averaged on the circle (the original averaged raw angles and broke at +-pi).
* ``recent``: replace by the latest prediction.
* ``first``: keep the creation-time prediction. Fixed: the original kept the first *update*.
* ``best_score``: keep the prediction whose median (or mean) confidence is highest. Fixed: the
  score is persisted with the keyframe (the original lost it and crashed on re-read keyframes).
* ``indep_conf``: per pixel, keep the more confident prediction.
"""
from __future__ import annotations

from typing import Callable

import torch

from .frame import Frame

FusionFn = Callable[[Frame, torch.Tensor, torch.Tensor], None]


def _score(C: torch.Tensor, how: str) -> float:
    return float(C.median()) if how == "median" else float(C.mean())


def _init(frame: Frame, X: torch.Tensor, C: torch.Tensor, score_how: str | None) -> None:
    frame.X_canon = X.clone()
    frame.C = C.clone()
    frame.N = 1
    frame.N_updates = 1
    if score_how is not None:
        frame.score = _score(C, score_how)


def _to_spherical(X: torch.Tensor) -> torch.Tensor:
    r = X.norm(dim=-1, keepdim=True)
    phi = torch.atan2(X[..., 1:2], X[..., 0:1])
    theta = torch.acos((X[..., 2:3] / r.clamp_min(1e-12)).clamp(-1, 1))
    return torch.cat([r, phi, theta], dim=-1)


def _from_spherical(S: torch.Tensor) -> torch.Tensor:
    r, phi, theta = S[..., 0:1], S[..., 1:2], S[..., 2:3]
    return torch.cat([r * torch.sin(theta) * torch.cos(phi), r * torch.sin(theta) * torch.sin(phi), r * torch.cos(theta)], dim=-1)


def make_fusion(mode: str = "weighted_pointmap", score: str = "median") -> FusionFn:
    """Fusion rule by name (``tracking.filtering_mode`` / ``tracking.filtering_score``)."""

    def fuse(frame: Frame, X: torch.Tensor, C: torch.Tensor, keep: torch.Tensor | None = None) -> None:
        """Fuse (X, C) into ``frame``; pixels where ``keep`` [HW] is True are left as they were."""
        if frame.N == 0 or frame.X_canon is None:
            _init(frame, X, C, score if mode == "best_score" else None)
            return
        if keep is not None:
            X_old, C_old = frame.X_canon, frame.C
            _update(frame, X, C)
            k = keep.reshape(-1, 1)
            frame.X_canon = torch.where(k, X_old, frame.X_canon)
            frame.C = torch.where(k, C_old, frame.C)
            return
        _update(frame, X, C)

    def _update(frame: Frame, X: torch.Tensor, C: torch.Tensor) -> None:
        if mode == "weighted_pointmap":
            Ct = frame.C + C
            frame.X_canon = (frame.C * frame.X_canon + C * X) / Ct
            frame.C = Ct
            frame.N += 1
        elif mode == "weighted_spherical":
            S0, S1 = _to_spherical(frame.X_canon), _to_spherical(X)
            Ct = frame.C + C
            w0, w1 = frame.C / Ct, C / Ct
            r = w0 * S0[..., 0:1] + w1 * S1[..., 0:1]
            theta = w0 * S0[..., 2:3] + w1 * S1[..., 2:3]
            phi = torch.atan2(w0 * torch.sin(S0[..., 1:2]) + w1 * torch.sin(S1[..., 1:2]), w0 * torch.cos(S0[..., 1:2]) + w1 * torch.cos(S1[..., 1:2]))
            frame.X_canon = _from_spherical(torch.cat([r, phi, theta], dim=-1))
            frame.C = Ct
            frame.N += 1
        elif mode == "recent":
            frame.X_canon = X.clone()
            frame.C = C.clone()
        elif mode == "first":
            pass  # keep the creation-time prediction
        elif mode == "best_score":
            s = _score(C, score)
            if frame.score is None or s > frame.score:
                frame.X_canon = X.clone()
                frame.C = C.clone()
                frame.score = s
        elif mode == "indep_conf":
            better = C > frame.C
            frame.X_canon = torch.where(better, X, frame.X_canon)
            frame.C = torch.where(better, C, frame.C)
        else:
            raise ValueError(f"unknown fusion mode {mode!r}")
        frame.N_updates += 1

    return fuse
