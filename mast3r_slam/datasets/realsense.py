"""Intel RealSense: a live camera (``realsense`` or ``realsense:<serial>``) or a recording
(``.db3``, or a legacy ``.bag``) played back as fast as it is read (non-real-time).

* Detection: a ``.db3``/``.bag`` file; ``realsense[:serial]`` specs.
* Stream: colour 640x480 RGB8 at 30 Hz from a camera; a recording plays its recorded colour
  stream (RGB8, BGR8 or RGBA8/BGRA8, converted to RGB).
* Timestamps: the frames' device timestamps in seconds.
* Intrinsics: the colour stream's (fx, fy, ppx, ppy; distortion ignored, as the original),
  used in calibrated mode.
* Live source (see :mod:`._live`). ``pyrealsense2`` is imported only here; without it or
  without a camera the constructor raises one :class:`DatasetError` line.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DatasetError
from ._live import LiveDataset
from .base import Intrinsics

RECORDING_EXTENSIONS = (".db3", ".bag")
WIDTH, HEIGHT, FPS = 640, 480, 30
TIMEOUT_MS = 5000


def import_pyrealsense2():
    try:
        import pyrealsense2 as rs
    except ImportError as e:
        hint = " (install the system library: apt-get install libusb-1.0-0)" if "libusb" in str(e) else ""
        raise DatasetError(
            f"realsense: pyrealsense2 is not usable ({e}){hint}; install it with pip install 'mast3r-slam[realsense]'"
        ) from None
    return rs


class RealSenseDataset(LiveDataset):
    kind = "realsense"

    def __init__(self, spec: str = "realsense"):
        spec = str(spec)
        p = Path(spec)
        self.recording: Path | None = p if p.suffix.lower() in RECORDING_EXTENSIONS else None
        serial = None
        if self.recording is None and ":" in spec:
            serial = spec.split(":", 1)[1].strip() or None
        super().__init__(self.recording if self.recording is not None else "realsense")
        self.name = self.recording.stem if self.recording is not None else f"realsense{'_' + serial if serial else ''}"
        if self.recording is not None and not self.recording.is_file():
            raise DatasetError(f"{self.recording}: RealSense recording not found")
        rs = import_pyrealsense2()
        self._rs = rs
        ctx = rs.context()
        cfg = rs.config()
        if self.recording is not None:
            cfg.enable_device_from_file(str(self.recording), repeat_playback=False)
        else:
            serials = [d.get_info(rs.camera_info.serial_number) for d in ctx.query_devices()]
            if not serials:
                raise DatasetError(
                    "realsense: no RealSense camera found (connect one, or pass a recorded .db3/.bag file to --dataset)"
                )
            if serial is not None and serial not in serials:
                raise DatasetError(f"realsense:{serial}: no camera with this serial number (found {', '.join(serials)})")
            if serial is not None:
                cfg.enable_device(serial)
            cfg.enable_stream(rs.stream.color, WIDTH, HEIGHT, rs.format.rgb8, FPS)
        self._pipe = rs.pipeline(ctx)
        try:
            profile = self._pipe.start(cfg)
        except RuntimeError as e:
            src = self.recording if self.recording is not None else "realsense"
            raise DatasetError(f"{src}: cannot start the colour stream ({e})") from None
        self._playback = None
        if self.recording is not None:
            self._playback = profile.get_device().as_playback()
            self._playback.set_real_time(False)
        try:
            vsp = profile.get_stream(rs.stream.color).as_video_stream_profile()
        except RuntimeError:
            self._pipe.stop()
            raise DatasetError(f"{self.recording or 'realsense'}: no colour stream") from None
        intr = vsp.get_intrinsics()
        self._format = vsp.format()
        self.image_size = (intr.width, intr.height)
        self.intrinsics = Intrinsics(intr.width, intr.height, intr.fx, intr.fy, intr.ppx, intr.ppy)
        self._running = True

    @classmethod
    def detect(cls, path: Path) -> bool:
        p = Path(path)
        return p.is_file() and p.suffix.lower() in RECORDING_EXTENSIONS

    def _wait(self):
        """Next colour frame; None at the end of a recording."""
        waited = 0
        while True:
            step = TIMEOUT_MS if self._playback is None else 50
            ok, frames = self._pipe.try_wait_for_frames(step)
            if ok:
                color = frames.get_color_frame()
                if color:
                    return color
                continue
            waited += step
            if self._playback is not None and self._playback.current_status() == self._rs.playback_status.stopped:
                return None  # end of the recording
            if waited >= TIMEOUT_MS:
                if self._playback is not None:
                    return None
                raise DatasetError(f"realsense: the camera sent no frame for {TIMEOUT_MS / 1000:.0f} s")

    def _skip(self) -> bool:
        return self._wait() is not None

    def _grab(self) -> tuple[np.ndarray, float] | None:
        import cv2

        color = self._wait()
        if color is None:
            return None
        arr = np.asanyarray(color.get_data())
        f = self._rs.format
        if self._format == f.bgr8:
            rgb = cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)
        elif self._format == f.bgra8:
            rgb = cv2.cvtColor(arr, cv2.COLOR_BGRA2RGB)
        elif self._format == f.rgba8:
            rgb = np.ascontiguousarray(arr[..., :3])
        elif self._format == f.rgb8:
            rgb = arr.copy()
        else:
            raise DatasetError(f"{self.name}: unsupported colour format {self._format} (expected rgb8/bgr8/rgba8/bgra8)")
        return rgb, color.get_timestamp() / 1000.0

    def close(self) -> None:
        if getattr(self, "_running", False):
            self._running = False
            try:
                self._pipe.stop()
            except RuntimeError:
                pass

    def __getstate__(self):
        raise TypeError("a RealSense dataset cannot be sent to another process")
