"""The prior interface: what SLAM asks of the two-view network.

Two implementations share it:

* :class:`mast3r_slam.priors.network.Mast3rPrior` - the MASt3R network (official checkpoints);
* :class:`mast3r_slam.priors.oracle.OraclePrior` - a *ground-truth stand-in* built from a
  sequence's depth and poses with an error model imitating the network. It exists because the
  weights cannot be shipped or downloaded here; every output of a run using it says so.

Conventions (spec: SLAM §0 and §3.1). For an ordered pair (view 1 = i, view 2 = j) both
pointmaps are expressed in camera i: ``X_ii`` (image i in camera i) and ``X_ji`` (image j in
camera i). Every per-pixel output is flattened row-major (``n = u + W v``):

====  =============================  ===============
key   meaning                         shape
====  =============================  ===============
X     3D points                       [..., HW, 3]
C     point confidence, 1 + e^x >= 1  [..., HW, 1]
D     unit descriptors                [..., HW, 24]
Q     descriptor confidence, e^x > 0  [..., HW, 1]
====  =============================  ===============
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Sequence

import torch

from ..frame import Frame


@dataclass
class Prediction:
    """Outputs for one or more views, each flattened per pixel (see module docstring)."""

    X: torch.Tensor  # [..., HW, 3]
    C: torch.Tensor  # [..., HW, 1]
    D: torch.Tensor  # [..., HW, F]
    Q: torch.Tensor  # [..., HW, 1]

    def __getitem__(self, idx) -> "Prediction":
        return Prediction(self.X[idx], self.C[idx], self.D[idx], self.Q[idx])


class Prior(ABC):
    """A source of pointmap predictions for frames (the network, or its ground-truth stand-in)."""

    #: short name shown in logs and outputs ("mast3r" or "oracle")
    name: str = "prior"
    #: True for stand-ins that are not the network; runs using one must say so everywhere
    is_stand_in: bool = False
    #: descriptor dimension
    desc_dim: int = 24

    @property
    def description(self) -> str:
        """One line for logs and metrics.json."""
        return self.name

    # --- per frame -------------------------------------------------------------------------
    @abstractmethod
    def encode(self, frame: Frame) -> None:
        """Compute and cache ``frame.feat`` / ``frame.pos`` (no-op when already cached)."""

    @abstractmethod
    def mono(self, frame: Frame) -> tuple[torch.Tensor, torch.Tensor]:
        """Single-view prediction (the image paired with itself): (X_ff [HW,3], C_ff [HW,1])."""

    # --- pairs -----------------------------------------------------------------------------
    @abstractmethod
    def asymmetric(self, frame_i: Frame, frame_j: Frame) -> tuple[Prediction, Prediction]:
        """Decode the ordered pair (i, j) once: (res_ii, res_ji), both in camera i, each [HW, c].

        Tracking calls it with i = current frame, j = last keyframe.
        """

    @abstractmethod
    def symmetric(self, frames_i: Sequence[Frame], frames_j: Sequence[Frame]) -> Prediction:
        """Decode B pairs in both orders in one batched call.

        Returns a Prediction whose tensors are [4, B, HW, c] in the order [ii, ji, jj, ij]:
        X_ii, X_ji (decode (i, j)) and X_jj, X_ij (decode (j, i)); same for C, D, Q.
        """

    # --- retrieval -------------------------------------------------------------------------
    @abstractmethod
    def retrieval_features(self, frame: Frame) -> torch.Tensor:
        """Local features for image retrieval [k, Dr] (from image content, never poses)."""

    @abstractmethod
    def retrieval_codebook(self) -> torch.Tensor:
        """Visual-word centroids [K, Dr] for the ASMK retrieval database."""
