"""Dear ImGui panels of the viewer (imgui-bundle 1.6.x through moderngl-window's integration).

imgui-bundle is pinned to 1.6.x: moderngl-window 3.1.1's renderer uploads the font atlas with
``get_tex_data_as_rgba32``, which Dear ImGui 1.92 (imgui-bundle 1.92+) removed. If the GUI
cannot start (missing or incompatible imgui-bundle), the viewer runs without the overlay and says
so once; keyboard shortcuts keep working.
"""
from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger("mast3r_slam.viewer")

_MODE_COLORS = {
    "INIT": (0.7, 0.7, 0.7, 1.0),
    "TRACKING": (0.3, 0.9, 0.3, 1.0),
    "RELOC": (1.0, 0.6, 0.1, 1.0),
    "TERMINATED": (0.9, 0.3, 0.3, 1.0),
}
_MODE_TEXT = {"INIT": "initialising", "TRACKING": "tracking", "RELOC": "relocalising", "TERMINATED": "finished"}


def overlay_mask(rgb: np.ndarray, mask: np.ndarray | None, color, alpha: float = 0.6) -> np.ndarray:
    """Image [H, W, 3] uint8 with the pixels of ``mask`` [H, W] bool blended towards ``color`` (0..1)."""
    rgb = np.asarray(rgb, dtype=np.uint8)[..., :3]
    if mask is None:
        return np.ascontiguousarray(rgb)
    out = rgb.astype(np.float32)
    m = np.asarray(mask, dtype=bool)
    out[m] = (1 - alpha) * out[m] + alpha * 255.0 * np.asarray(color, dtype=np.float32)
    return np.round(out).astype(np.uint8)


class _PanelImage:
    """An RGB texture shown in an ImGui image widget (recreated when the size changes)."""

    def __init__(self, ctx, renderer):
        self.ctx, self.renderer = ctx, renderer
        self.tex = None
        self.size = (0, 0)

    def set(self, rgb: np.ndarray) -> None:
        H, W = rgb.shape[:2]
        if self.tex is None or self.size != (W, H):
            self.release()
            self.tex = self.ctx.texture((W, H), 3, dtype="f1")
            self.renderer.register_texture(self.tex)
            self.size = (W, H)
        self.tex.write(np.ascontiguousarray(rgb[..., :3], dtype=np.uint8).tobytes())

    def release(self) -> None:
        if self.tex is not None:
            self.renderer.remove_texture(self.tex)
            self.tex.release()
            self.tex = None


class Gui:
    """Builds and draws the panels; actions go through the :class:`~.app.ViewerApp`."""

    def __init__(self, app, window):
        from imgui_bundle import imgui
        from moderngl_window.integrations.imgui_bundle import ModernglWindowRenderer

        self.imgui = imgui
        self.app = app
        self.context = imgui.create_context()
        imgui.set_current_context(self.context)
        io = imgui.get_io()
        io.set_ini_filename("")  # never write imgui.ini into the working directory
        io.font_global_scale = float(app.opts.gui_scale)
        try:
            self.renderer = ModernglWindowRenderer(window)
        except Exception:
            imgui.destroy_context(self.context)
            raise
        self.current_image = _PanelImage(window.ctx, self.renderer)
        self.keyframe_image = _PanelImage(window.ctx, self.renderer)
        self.panel_rect = (0.0, 0.0, 0.0, 0.0)  # x, y, w, h of the control panel (pixels)
        self.images_rect = (0.0, 0.0, 0.0, 0.0)  # x, y, w, h of the image panel (pixels)
        self._warm = False

    # ---- inputs ----------------------------------------------------------------------------------
    def wants_mouse(self) -> bool:
        return bool(self.imgui.get_io().want_capture_mouse)

    def wants_keyboard(self) -> bool:
        return bool(self.imgui.get_io().want_capture_keyboard)

    # ---- drawing ---------------------------------------------------------------------------------
    def draw(self, dt: float) -> None:
        imgui = self.imgui
        imgui.set_current_context(self.context)
        io = imgui.get_io()
        io.delta_time = max(float(dt), 1e-4)
        if not self._warm:
            # Dear ImGui measures auto-sized windows on their first frame and shows them from the
            # second: run one frame without drawing so the very first image has the panels.
            imgui.new_frame()
            self._controls()
            self._images()
            imgui.render()
            self._warm = True
        imgui.new_frame()
        self._controls()
        self._images()
        imgui.render()
        self.renderer.render(imgui.get_draw_data())

    def _controls(self) -> None:
        imgui, app, o = self.imgui, self.app, self.app.opts
        st = app.status
        s = float(o.gui_scale)
        imgui.set_next_window_pos(imgui.ImVec2(8 * s, 8 * s), imgui.Cond_.first_use_ever)
        imgui.set_next_window_size(imgui.ImVec2(300 * s, 0), imgui.Cond_.first_use_ever)
        imgui.begin("MASt3R-SLAM")
        mode = str(st.mode)
        imgui.text("Mode:")
        imgui.same_line()
        imgui.text_colored(imgui.ImVec4(*_MODE_COLORS.get(mode, (1, 1, 1, 1))), _MODE_TEXT.get(mode, mode.lower()))
        if app.paused:
            imgui.same_line()
            imgui.text_colored(imgui.ImVec4(1.0, 0.8, 0.2, 1.0), "[paused]")
        total = f" / {st.n_frames}" if st.n_frames else ""
        imgui.text(f"Frame {st.frame}{total}")
        imgui.text(f"SLAM {st.fps:5.1f} fps   viewer {app.viewer_fps:5.1f} fps")
        ii, jj, loop = app.renderer.edges
        imgui.text(f"Keyframes {st.n_keyframes}   edges {st.n_edges} ({int(np.count_nonzero(loop))} loop)")
        if st.stand_in:
            imgui.text_colored(imgui.ImVec4(1.0, 0.55, 0.1, 1.0), f"PRIOR: {st.stand_in}")
        imgui.separator()

        if imgui.button("Resume" if app.paused else "Pause"):
            app.toggle_pause()
        imgui.same_line()
        imgui.begin_disabled(not app.paused)
        if imgui.button("Step"):
            app.step()
        imgui.end_disabled()
        imgui.same_line()
        if imgui.button("Screenshot"):
            app.request_screenshot()
        imgui.same_line()
        if imgui.button("Reset view"):
            app.reset_view()

        changed, c = imgui.slider_float("Confidence", float(o.conf_threshold), 0.0, 10.0, "%.2f")
        if changed:
            app.set_conf_threshold(c)
        changed, v = imgui.checkbox("Follow camera", app.camera.follow)
        if changed:
            app.set_follow(v)
        for label, name in (
            ("Keyframe points", "show_keyframe_points"),
            ("Current points", "show_current_points"),
            ("Keyframe frustums", "show_keyframe_frustums"),
            ("Current frustum", "show_current_frustum"),
            ("Trajectory", "show_trajectory"),
            ("Graph edges", "show_edges"),
            ("Axes", "show_axes"),
            ("Lighting", "lighting"),
            ("Dynamic mask", "show_dynamic_mask"),
        ):
            changed, v = imgui.checkbox(label, bool(getattr(o, name)))
            if changed:
                setattr(o, name, v)
                if name == "show_dynamic_mask":
                    app.refresh_current_panel()
        if imgui.collapsing_header("Rendering"):
            modes = ["surfel", "point"]
            changed, k = imgui.combo("Points as", modes.index(o.point_mode), modes)
            if changed:
                o.point_mode = modes[k]
            if o.point_mode == "surfel":
                changed, v = imgui.slider_float("Surfel size", float(o.surfel_scale), 0.1, 3.0, "%.2f")
                if changed:
                    o.surfel_scale = v
            else:
                changed, v = imgui.slider_float("Point size", float(o.point_size), 1.0, 10.0, "%.1f")
                if changed:
                    o.point_size = v
            changed, v = imgui.slider_int("Pixel stride", int(o.point_stride), 1, 8)
            if changed:
                o.point_stride = max(1, v)
            colours = ["depth", "image"]
            changed, k = imgui.combo("Current colour", colours.index(o.current_points_color), colours)
            if changed:
                o.current_points_color = colours[k]
            changed, v = imgui.slider_float("Frustum size", float(o.frustum_scale), 0.005, 0.5, "%.3f")
            if changed:
                o.frustum_scale = v
            changed, v = imgui.slider_float("Line width", float(o.line_width), 1.0, 8.0, "%.1f")
            if changed:
                o.line_width = v
        if app.message:
            imgui.text_wrapped(app.message)
        pos, size = imgui.get_window_pos(), imgui.get_window_size()
        self.panel_rect = (pos.x, pos.y, size.x, size.y)
        imgui.end()

    def _images(self) -> None:
        imgui, s = self.imgui, float(self.app.opts.gui_scale)
        shown = [(n, p) for n, p in (("current", self.current_image), ("keyframe", self.keyframe_image)) if p.tex]
        if not shown:
            return
        io = imgui.get_io()
        width = 200 * s
        imgui.set_next_window_pos(imgui.ImVec2(io.display_size.x - width - 24 * s, 8 * s), imgui.Cond_.first_use_ever)
        imgui.begin("Images", None, imgui.WindowFlags_.always_auto_resize)
        for name, panel in shown:
            W, H = panel.size
            imgui.text(name)
            imgui.image(panel.tex.glo, imgui.ImVec2(width, width * H / max(W, 1)))
        pos, size = imgui.get_window_pos(), imgui.get_window_size()
        self.images_rect = (pos.x, pos.y, size.x, size.y)
        imgui.end()

    def release(self) -> None:
        self.current_image.release()
        self.keyframe_image.release()
        try:
            self.renderer.shutdown()
        finally:
            self.imgui.destroy_context(self.context)
