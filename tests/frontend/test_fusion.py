"""Pointmap fusion modes (spec §2.2) with the fixes documented in mast3r_slam/fusion.py."""
import math

import pytest
import torch

from mast3r_slam.frame import Frame
from mast3r_slam.fusion import make_fusion


def frame():
    return Frame(frame_id=0, img=torch.zeros(1, 3, 2, 2), uimg=torch.zeros(2, 2, 3), img_shape=(2, 2), T_WC=torch.zeros(1, 8))


X1 = torch.tensor([[1.0, 0, 1], [0, 1, 2], [1, 1, 1], [-1, 0.001, 1]])
X2 = torch.tensor([[3.0, 0, 1], [0, 3, 2], [1, 1, 3], [-1, -0.001, 1]])
C1 = torch.tensor([[1.0], [2.0], [3.0], [1.0]])
C2 = torch.tensor([[3.0], [2.0], [1.0], [1.0]])


def test_weighted_pointmap():
    f = frame()
    fuse = make_fusion("weighted_pointmap")
    fuse(f, X1, C1)
    assert f.N == 1 and f.N_updates == 1 and torch.equal(f.X_canon, X1)
    fuse(f, X2, C2)
    assert f.N == 2 and f.N_updates == 2
    assert torch.allclose(f.X_canon[0], torch.tensor([2.5, 0, 1.0]))  # (1*1 + 3*3) / 4
    assert torch.allclose(f.C, C1 + C2)
    assert torch.allclose(f.C_avg(), (C1 + C2) / 2)


def test_weighted_spherical_wraps_azimuth():
    f = frame()
    fuse = make_fusion("weighted_spherical")
    fuse(f, X1, C1)
    fuse(f, X2, C2)
    # pixel 3: azimuths +-(pi - 0.001): the circular mean stays at pi, not 0 (the original's bug)
    phi = math.atan2(f.X_canon[3, 1].item(), f.X_canon[3, 0].item())
    assert abs(abs(phi) - math.pi) < 1e-3
    assert torch.allclose(f.X_canon[3].norm(), X1[3].norm(), atol=1e-5)


def test_recent_first_indep():
    f = frame(); fuse = make_fusion("recent"); fuse(f, X1, C1); fuse(f, X2, C2)
    assert torch.equal(f.X_canon, X2) and f.N == 1
    f = frame(); fuse = make_fusion("first"); fuse(f, X1, C1); fuse(f, X2, C2); fuse(f, X2 * 2, C2)
    assert torch.equal(f.X_canon, X1)  # creation-time map kept (fixed quirk)
    f = frame(); fuse = make_fusion("indep_conf"); fuse(f, X1, C1); fuse(f, X2, C2)
    assert torch.equal(f.X_canon[0], X2[0]) and torch.equal(f.X_canon[2], X1[2]) and torch.equal(f.X_canon[1], X1[1])


@pytest.mark.parametrize("score", ["median", "mean"])
def test_best_score(score):
    f = frame()
    fuse = make_fusion("best_score", score)
    fuse(f, X1, C1)
    assert f.score is not None
    fuse(f, X2, C2 * 0.5)  # lower score: ignored
    assert torch.equal(f.X_canon, X1)
    fuse(f, X2, C2 * 10)  # higher score: replaces
    assert torch.equal(f.X_canon, X2)
