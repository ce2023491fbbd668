"""Offscreen rendering: frame files, EGL detection and a scriptable headless viewer.

``run_viewer(..., headless_dir=DIR)`` writes ``DIR/frame_000000.png``, ``frame_000001.png``, ...
(and ``DIR/viewer.mp4`` with ``video=True``) through :class:`FrameWriter`. :class:`HeadlessViewer`
drives the same :class:`~.app.ViewerApp` frame by frame for tests, notebooks and scripts.
"""
from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

import numpy as np

from .config import ViewerConfig
from .source import NullControl, ViewerControl, ViewerSource

log = logging.getLogger("mast3r_slam.viewer")


@lru_cache(maxsize=1)
def egl_available() -> bool:
    """True when an OpenGL 3.3 context can be created offscreen through EGL (Mesa or a GPU driver)."""
    try:
        import moderngl

        ctx = moderngl.create_standalone_context(backend="egl", require=330)
        ctx.release()
        return True
    except Exception:
        return False


class FrameWriter:
    """Numbered PNG frames in a folder, optionally also an MP4 (OpenCV ``mp4v``)."""

    def __init__(self, out_dir: str | Path, video: bool = False, fps: float = 15.0, prefix: str = "frame_"):
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self.count = 0
        self.fps = float(fps)
        self.video_path = self.dir / "viewer.mp4" if video else None
        self._video = None
        self._video_failed = False

    def write(self, img: np.ndarray) -> Path:
        """Write one RGB frame [H, W, 3] uint8; returns the PNG path."""
        import cv2

        bgr = np.ascontiguousarray(img[..., ::-1])
        path = self.dir / f"{self.prefix}{self.count:06d}.png"
        if not cv2.imwrite(str(path), bgr, [cv2.IMWRITE_PNG_COMPRESSION, 1]):
            raise OSError(f"viewer: could not write {path}")
        if self.video_path is not None and not self._video_failed:
            if self._video is None:
                h, w = bgr.shape[:2]
                self._video = cv2.VideoWriter(str(self.video_path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (w, h))
                if not self._video.isOpened():
                    log.warning("viewer: OpenCV cannot write %s (no mp4v encoder); PNG frames only", self.video_path)
                    self._video_failed = True
                    self._video = None
            if self._video is not None:
                self._video.write(bgr)
        self.count += 1
        return path

    def close(self) -> None:
        if self._video is not None:
            self._video.release()
            self._video = None


class HeadlessViewer:
    """The viewer on an offscreen EGL framebuffer, driven one frame at a time.

    >>> with HeadlessViewer(source, config=ViewerConfig(width=320, height=240)) as v:
    ...     img = v.render()          # [240, 320, 3] uint8, GUI included if enabled
    """

    def __init__(self, source: ViewerSource, control: ViewerControl | None = None,
                 config: ViewerConfig | None = None, *, gui: bool = True):
        from .app import ViewerApp, check_dependencies, create_window

        check_dependencies()
        self.config = config or ViewerConfig()
        self.window = create_window(self.config, headless=True)
        self.app = ViewerApp(self.window, source, control or NullControl(), self.config, gui=gui)

    def render(self, poll: bool = True, dt: float = 1 / 30) -> np.ndarray:
        """Poll the source (optional), render one frame, return it [H, W, 3] uint8 (top row first)."""
        if poll:
            self.app.poll()
        self.app.render(dt)
        return self.app.read_frame()

    def scene(self) -> np.ndarray:
        """The last 3D view without the GUI [H, W, 3] uint8."""
        return self.app.read_scene()

    def close(self) -> None:
        if self.app is not None:
            self.app.release()
            self.app = None
            self.window.destroy()

    def __enter__(self) -> "HeadlessViewer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
