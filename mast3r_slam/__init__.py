"""MASt3R-SLAM: real-time monocular dense SLAM on the MASt3R two-view network.

Public API (imports are lazy so that ``import mast3r_slam`` stays cheap):

* :func:`load_mast3r` - the MASt3R network from an official checkpoint;
* :mod:`mast3r_slam.lie` - SO(3)/SE(3)/Sim(3) on plain tensors;
* :mod:`mast3r_slam.ops` - matching and Gauss-Newton kernels (CUDA or PyTorch);
* :func:`mast3r_slam.config.load_config` - typed configuration.
"""
from .errors import (
    CalibrationError,
    CheckpointError,
    ConfigError,
    DatasetError,
    Mast3rSlamError,
    TrajectoryFileError,
    WorkerError,
)

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "load_mast3r",
    "Mast3rSlamError",
    "ConfigError",
    "DatasetError",
    "CalibrationError",
    "CheckpointError",
    "TrajectoryFileError",
    "WorkerError",
]


def load_mast3r(path, device="cpu", **kwargs):
    """Load the MASt3R network from a checkpoint file (see :mod:`mast3r_slam.network`)."""
    from .network import load_mast3r as _load

    return _load(path, device, **kwargs)
