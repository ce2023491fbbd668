"""Options of the 3D viewer (:class:`ViewerConfig`).

Plain dataclass with defaults; every value is validated on construction so a bad option raises a
one-line :class:`~mast3r_slam.errors.ConfigError` naming it (``viewer.<field>``).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

from ..errors import ConfigError

POINT_MODES = ("surfel", "point")
CURRENT_POINTS_COLORS = ("depth", "image")


@dataclass
class ViewerConfig:
    # --- window --------------------------------------------------------------------------------
    width: int = 1600  # window / headless framebuffer width in pixels
    height: int = 900  # window / headless framebuffer height in pixels
    title: str = "MASt3R-SLAM"
    vsync: bool = True  # windowed only; paces the GUI loop to the display
    samples: int = 0  # MSAA samples of the 3D view (0 = exact pixels, enables depth picking)
    background: tuple[float, float, float] = (30 / 255, 35 / 255, 38 / 255)  # #1E2326
    show_gui: bool = True  # Dear ImGui panels (toggle with G)
    gui_scale: float = 1.0  # font scale of the GUI (e.g. 2 on 4K displays)

    # --- pointmaps -----------------------------------------------------------------------------
    conf_threshold: float = 1.5  # draw pixels whose average confidence >= this (also PLY export)
    point_mode: str = "surfel"  # "surfel": oriented discs; "point": screen-space round points
    surfel_scale: float = 0.75  # surfel radius as a multiple of the spacing to the neighbour pixel
    point_size: float = 2.0  # point mode: diameter in pixels
    point_stride: int = 1  # draw every n-th pixel in x and y (1 = all; raise for huge maps)
    border: int = 1  # skip this many pixels along the pointmap border
    lighting: bool = True  # headlight Phong shading; off = exact image colours
    current_points_color: str = "depth"  # current pointmap colour: "depth" (colormap) or "image"
    show_keyframe_points: bool = True
    show_current_points: bool = True
    show_dynamic_mask: bool = True  # tint moving pixels of the current frame (3D + image panel)
    mask_color: tuple[float, float, float] = (1.0, 0.1, 0.1)

    # --- lines ---------------------------------------------------------------------------------
    show_keyframe_frustums: bool = True
    show_current_frustum: bool = True
    show_trajectory: bool = True
    show_edges: bool = True
    show_axes: bool = False
    frustum_scale: float = 0.05  # depth of the drawn frustums in world units
    line_width: float = 2.0  # pixels
    keyframe_frustum_color: tuple[float, float, float] = (0.9, 0.2, 0.2)
    current_frustum_color: tuple[float, float, float] = (0.2, 0.9, 0.2)
    trajectory_color: tuple[float, float, float] = (1.0, 0.8, 0.2)
    edge_color: tuple[float, float, float] = (0.3, 0.6, 1.0)
    loop_edge_color: tuple[float, float, float] = (1.0, 0.2, 1.0)

    # --- camera --------------------------------------------------------------------------------
    follow: bool = True  # follow the current camera, keeping the user's offset
    follow_offset: tuple[float, float, float] = (0.0, 0.0, -2.0)  # eye in the followed camera (OpenCV axes)
    fov_y_deg: float = 60.0
    near: float = 0.01
    far: float = 500.0
    orbit_speed_deg: float = 0.3  # degrees per dragged pixel
    zoom_factor: float = 0.85  # distance factor per scroll step towards the cursor

    # --- loop / performance ----------------------------------------------------------------------
    max_uploads_per_frame: int = 4  # keyframe texture uploads per GUI frame (rest next frame)
    poll_interval_s: float = 0.01  # sleep between polls when nothing changed (and nothing is drawn)
    idle_redraw_s: float = 0.5  # windowed: with no change and no input, redraw only this often
    close_on_terminate: bool = True  # windowed: return when SLAM reports TERMINATED
    lower_priority: bool = False  # os.nice(10) the calling process (use in the viewer's own process)

    # --- output --------------------------------------------------------------------------------
    screenshot_dir: str = "screenshots"
    screenshot_gui: bool = False  # include the GUI overlay in screenshots
    headless_fps: float = 10.0  # headless: most frames per second written (0 = no limit)
    headless_gui: bool = True  # headless: draw the GUI overlay into the frames
    render_unchanged: bool = False  # headless: also write frames when nothing changed
    video_fps: float = 15.0  # frame rate stored in the MP4

    def __post_init__(self):
        def bad(name, expected, got):
            raise ConfigError(f"viewer.{name}: expected {expected}, got {got!r}")

        for name in ("width", "height"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 16:
                bad(name, "an integer >= 16", v)
        if self.point_mode not in POINT_MODES:
            bad("point_mode", " or ".join(repr(m) for m in POINT_MODES), self.point_mode)
        if self.current_points_color not in CURRENT_POINTS_COLORS:
            bad("current_points_color", " or ".join(repr(m) for m in CURRENT_POINTS_COLORS),
                self.current_points_color)
        for name in ("samples", "border", "max_uploads_per_frame"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                bad(name, "an integer >= 0", v)
        if not isinstance(self.point_stride, int) or self.point_stride < 1:
            bad("point_stride", "an integer >= 1", self.point_stride)
        positive = ("surfel_scale", "point_size", "frustum_scale", "line_width", "near", "gui_scale",
                    "video_fps", "poll_interval_s", "idle_redraw_s")
        for name in positive:
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                bad(name, "a positive number", v)
        if not (0 < self.fov_y_deg < 180):
            bad("fov_y_deg", "a number in (0, 180)", self.fov_y_deg)
        if not self.far > self.near:
            bad("far", f"a number > near ({self.near})", self.far)
        if not (0 < self.zoom_factor < 1):
            bad("zoom_factor", "a number in (0, 1)", self.zoom_factor)
        if self.headless_fps < 0 or self.conf_threshold < 0:
            bad("headless_fps" if self.headless_fps < 0 else "conf_threshold", "a number >= 0",
                self.headless_fps if self.headless_fps < 0 else self.conf_threshold)
        for name in ("background", "mask_color", "keyframe_frustum_color", "current_frustum_color",
                     "trajectory_color", "edge_color", "loop_edge_color", "follow_offset"):
            v = getattr(self, name)
            try:
                t = tuple(float(x) for x in v)
            except (TypeError, ValueError):
                bad(name, "three numbers", v)
            if len(t) != 3:
                bad(name, "three numbers", v)
            setattr(self, name, t)

    def replace(self, **changes) -> "ViewerConfig":
        """Copy with some fields changed (validated); unknown names raise ConfigError."""
        known = {f.name for f in fields(self)}
        for k in changes:
            if k not in known:
                raise ConfigError(f"viewer.{k}: unknown viewer option")
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)
