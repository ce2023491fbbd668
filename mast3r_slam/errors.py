"""Exceptions of the package.

Every error a user can cause (a missing file, a bad config key, no camera, a wrong checkpoint)
is a subclass of :class:`Mast3rSlamError` whose message is one line naming the file or option,
what was expected and what was found. The command line prints that line and exits with code 1;
library code never calls ``sys.exit``.
"""


class Mast3rSlamError(Exception):
    """Base class of all errors raised for user mistakes."""


class ConfigError(Mast3rSlamError):
    """Bad configuration file, key, type or command-line override."""


class DatasetError(Mast3rSlamError):
    """Missing, empty or malformed input sequence, or no camera."""


class CalibrationError(Mast3rSlamError):
    """Bad intrinsics file or calibration request."""


class CheckpointError(Mast3rSlamError):
    """Missing, truncated or wrong network checkpoint."""


class TrajectoryFileError(Mast3rSlamError):
    """Malformed trajectory file (TUM format expected)."""


class WorkerError(Mast3rSlamError):
    """A worker process (backend or viewer) died."""
