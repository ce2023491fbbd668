"""3D viewer: moderngl + Dear ImGui, run in its own process, with headless (EGL) rendering.

Entry point: :func:`run_viewer` (blocking). Data comes through the small :class:`ViewerSource`
protocol and commands go back through :class:`ViewerControl` (see ``source.py``). moderngl,
moderngl-window and imgui-bundle are imported lazily, so importing this package is cheap and
works without them. Docs: docs/VIEWER.md.
"""
from .config import ViewerConfig
from .source import (
    CurrentData,
    KeyframeData,
    NullControl,
    RecordingControl,
    StaticSource,
    Status,
    ViewerControl,
    ViewerSource,
)


def run_viewer(*args, **kwargs):
    """See :func:`mast3r_slam.viewer.app.run_viewer`."""
    from .app import run_viewer as _run

    return _run(*args, **kwargs)


def display_available() -> bool:
    """See :func:`mast3r_slam.viewer.app.display_available`."""
    from .app import display_available as _d

    return _d()


__all__ = [
    "ViewerConfig",
    "ViewerSource",
    "ViewerControl",
    "KeyframeData",
    "CurrentData",
    "Status",
    "StaticSource",
    "RecordingControl",
    "NullControl",
    "run_viewer",
    "display_available",
]
