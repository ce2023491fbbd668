"""Dataset.frame_rgb / frame_depth (the SLAM loop reads only images, the ground-truth prior only
depth and poses) return the same data as a full read, also when frames are undistorted."""
from pathlib import Path

import numpy as np
import pytest

from mast3r_slam.datasets.tum import TUMDataset

TUM = Path(__file__).resolve().parents[1] / "data" / "tum_fr1_rpy"


@pytest.mark.skipif(not (TUM / "rgb.txt").is_file(), reason="tests/data/tum_fr1_rpy not present")
@pytest.mark.parametrize("undistort", [False, True])
def test_partial_reads_equal_full_reads(undistort):
    ds = TUMDataset(TUM, camera=1)
    ds.set_calibration(None, apply=undistort)
    for i in (0, 1, len(ds) - 1):
        full, rgb, dep = ds[i], ds.frame_rgb(i), ds.frame_depth(i)
        assert full.depth is not None and full.T_WC_gt is not None
        np.testing.assert_array_equal(rgb.rgb, full.rgb)
        assert rgb.depth is None and rgb.timestamp == full.timestamp
        np.testing.assert_array_equal(dep.depth, full.depth)
        np.testing.assert_array_equal(dep.T_WC_gt, full.T_WC_gt)
        assert dep.rgb.size == 0 and dep.timestamp == full.timestamp
