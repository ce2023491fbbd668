"""The viewer application: window, loop, input handling and the :func:`run_viewer` entry point.

:class:`ViewerApp` is window-agnostic: it polls the source, renders the 3D view into an offscreen
framebuffer, copies it to the target framebuffer and draws the GUI on top. The same object runs
in a GLFW window (interactive) or a moderngl-window headless EGL window (``headless_dir``).
Input handlers take framebuffer pixel coordinates (top-left origin), so they are testable
without a display.
"""
from __future__ import annotations

import copy
import logging
import os
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import Mast3rSlamError
from .camera import ViewerCamera
from .config import ViewerConfig
from .math3d import se3_matrix
from .source import MODES, Status, ViewerControl, ViewerSource

log = logging.getLogger("mast3r_slam.viewer")

#: reasons :func:`run_viewer` returns
EXIT_CLOSED, EXIT_TERMINATED, EXIT_MAX_FRAMES, EXIT_NO_DISPLAY, EXIT_SOURCE_ERROR = (
    "closed", "terminated", "max_frames", "no_display", "source_error")


def check_dependencies() -> None:
    """Raise a one-line Mast3rSlamError when the viewer's optional packages are missing."""
    missing = []
    for mod in ("moderngl", "moderngl_window"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        raise Mast3rSlamError(
            f"viewer: {', '.join(missing)} not installed; "
            "install with `pip install 'mast3r-slam[viz]'` or run with --no-viz"
        )


def mode_name(mode) -> str:
    """"TRACKING" from "TRACKING", "tracking", a Mode enum member or its integer value."""
    if hasattr(mode, "name"):
        return str(mode.name)
    if isinstance(mode, (int, np.integer)) and 0 <= int(mode) < len(MODES):
        return MODES[int(mode)]
    return str(mode).upper()


def display_available() -> bool:
    """True when a window can plausibly be opened (X11/Wayland display on Linux; always elsewhere).

    Cheap and side-effect free: it only looks at the environment.
    """
    if sys.platform.startswith("linux") or "bsd" in sys.platform:
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


class ViewerApp:
    """State and behaviour of the viewer, independent of the window system."""

    def __init__(self, window, source: ViewerSource, control: ViewerControl, config: ViewerConfig | None = None,
                 *, gui: bool = True):
        from .renderer import Renderer

        self.window = window
        self.ctx = window.ctx
        self.source = source
        self.control = control
        self.opts = copy.deepcopy(config or ViewerConfig())  # live options edited by the GUI
        o = self.opts
        self.camera = ViewerCamera(o.fov_y_deg, o.near, o.far, o.follow, o.follow_offset, o.orbit_speed_deg,
                                   o.zoom_factor)
        self.renderer = Renderer(self.ctx)
        self.status = Status()
        self.paused = False
        self.viewer_fps = 0.0
        self.message = ""  # last action's feedback shown in the GUI (e.g. screenshot path)
        self.frames_rendered = 0
        self._status_sig = None
        self._edges_sig = None
        self._poses = None
        self._first_poll = True
        self._scene = None  # (size, samples, fbo, color_fbo)
        self._screenshots: list[Path] = []
        self._screenshot_counter = 0
        self._drag = None  # (mode, depth, pivot) while a mouse button is held
        self._cursor = (0.0, 0.0)
        self._last_current = None
        self.last_input = -1e9  # perf_counter time of the last user input (windowed redraw policy)
        self.gui = None
        if gui:
            try:
                from .gui import Gui

                self.gui = Gui(self, window)
            except Exception as e:  # missing / incompatible imgui-bundle: carry on without the overlay
                log.warning("viewer: GUI overlay disabled (%s: %s)", type(e).__name__, e)
                self.gui = None

    # ---- polling -------------------------------------------------------------------------------
    def poll(self) -> bool:
        """Read the source once (never blocks); upload what changed. Returns True if anything changed."""
        src, r = self.source, self.renderer
        changed = False
        st = src.status()
        st.mode = mode_name(st.mode)
        if self._first_poll:
            self.paused = bool(st.paused)
            self._first_poll = False
            changed = True
        sig = (st.mode, st.frame, st.n_keyframes, st.n_edges)
        changed |= sig != self._status_sig
        self._status_sig = sig
        self.status = st

        versions = np.asarray(src.keyframe_versions(), dtype=np.int64)
        n_kf = len(versions)

        def on_upload(i, kf):  # the newest keyframe's image goes to the GUI panel
            if self.gui is not None and i == n_kf - 1:
                self.gui.keyframe_image.set(np.asarray(kf.rgb))

        kf_changed, _ = r.sync_keyframes(versions, src.keyframe, self.opts.max_uploads_per_frame, on_upload)
        changed |= kf_changed
        poses = np.asarray(src.keyframe_poses(), dtype=np.float32).reshape(-1, 8)
        poses = poses[: len(versions)]
        if self._poses is None or self._poses.shape != poses.shape or not np.array_equal(self._poses, poses):
            changed = True
        self._poses = poses
        r.poses = poses

        cv = int(src.current_version())
        if cv != r.current_version:
            cur = src.current() if cv >= 0 else None
            r.set_current(cur, cv)
            self._last_current = cur
            self.refresh_current_panel()
            changed = True

        ii, jj, loop = src.edges()
        ii, jj, loop = (np.asarray(ii, np.int64).reshape(-1), np.asarray(jj, np.int64).reshape(-1),
                        np.asarray(loop, bool).reshape(-1))
        esig = (ii.size, hash(ii.tobytes()), hash(jj.tobytes()), hash(loop.tobytes()))
        if esig != self._edges_sig:
            r.edges = (ii, jj, loop)
            self._edges_sig = esig
            changed = True
        return changed

    def refresh_current_panel(self) -> None:
        cur = self._last_current
        if self.gui is None or cur is None:
            return
        from .gui import overlay_mask

        mask = cur.dynamic_mask if self.opts.show_dynamic_mask else None
        self.gui.current_image.set(overlay_mask(cur.rgb, mask, self.opts.mask_color))

    # ---- rendering -----------------------------------------------------------------------------
    def _scene_fbo(self, size):
        o = self.opts
        if self._scene is not None and self._scene[0] == (size, o.samples):
            return self._scene[2], self._scene[3]
        self._release_scene()
        ctx = self.ctx
        if o.samples > 0:
            fbo = ctx.framebuffer(ctx.renderbuffer(size, 4, samples=o.samples),
                                  ctx.depth_renderbuffer(size, samples=o.samples))
            color = ctx.framebuffer(ctx.texture(size, 4))
        else:
            fbo = ctx.framebuffer(ctx.texture(size, 4), ctx.depth_texture(size))
            color = fbo
        self._scene = ((size, o.samples), None, fbo, color)
        return fbo, color

    def _release_scene(self):
        if self._scene is None:
            return
        _, _, fbo, color = self._scene
        for f in {id(fbo): fbo, id(color): color}.values():
            for a in f.color_attachments:
                a.release()
            if f.depth_attachment is not None:
                f.depth_attachment.release()
            f.release()
        self._scene = None

    @property
    def size(self) -> tuple[int, int]:
        return tuple(int(x) for x in self.window.buffer_size)

    def render(self, dt: float = 1 / 60, target=None) -> None:
        """Draw one frame into ``target`` (default: the window's framebuffer)."""
        target = target if target is not None else self.window.fbo
        size = self.size
        o = self.opts
        if self.renderer.current_pose is not None:
            self.camera.update_follow(se3_matrix(self.renderer.current_pose))
        fbo, color = self._scene_fbo(size)
        fbo.use()
        fbo.viewport = (0, 0, *size)
        fbo.clear(*o.background, 1.0, depth=1.0)
        self.renderer.draw(self.camera.view_matrix(), self.camera.projection(*size), size, o)
        if color is not fbo:
            self.ctx.copy_framebuffer(color, fbo)
        if self._screenshots and not o.screenshot_gui:
            self._save_screenshots(self._read(color, size))
        self.ctx.copy_framebuffer(target, color)
        target.use()
        target.viewport = (0, 0, *size)
        if self.gui is not None and o.show_gui and (not self.window.headless or o.headless_gui):
            self.ctx.enable_only(0)
            self.gui.draw(dt)
        if self._screenshots:
            self._save_screenshots(self._read(target, size))
        self.frames_rendered += 1
        if dt > 0:
            fps = 1.0 / dt
            self.viewer_fps = fps if self.viewer_fps == 0 else 0.9 * self.viewer_fps + 0.1 * fps

    @staticmethod
    def _read(fbo, size) -> np.ndarray:
        data = fbo.read(viewport=(0, 0, *size), components=3, alignment=1)
        return np.frombuffer(data, np.uint8).reshape(size[1], size[0], 3)[::-1].copy()

    def read_frame(self, target=None) -> np.ndarray:
        """The last composited frame (3D view + GUI) [H, W, 3] uint8, top row first."""
        return self._read(target if target is not None else self.window.fbo, self.size)

    def read_scene(self) -> np.ndarray:
        """The last 3D view without the GUI [H, W, 3] uint8."""
        size = self.size
        _, color = self._scene_fbo(size)
        return self._read(color, size)

    def depth_at(self, x: float, y: float) -> float | None:
        """Eye depth of the scene under pixel (x, y) of the last frame, None for background or
        when the 3D view is multisampled (no depth readback)."""
        if self._scene is None or self.opts.samples > 0:
            return None
        W, H = self.size
        xi, yi = int(np.clip(x, 0, W - 1)), int(np.clip(y, 0, H - 1))
        fbo = self._scene[2]
        raw = fbo.read(viewport=(xi, H - 1 - yi, 1, 1), attachment=-1, dtype="f4")
        return self.camera.depth_from_buffer(float(np.frombuffer(raw, np.float32)[0]))

    # ---- actions -------------------------------------------------------------------------------
    def set_paused(self, paused: bool) -> None:
        self.paused = bool(paused)
        self.control.set_paused(self.paused)

    def toggle_pause(self) -> None:
        self.set_paused(not self.paused)

    def step(self) -> None:
        """Ask SLAM to process exactly one frame (only while paused)."""
        if self.paused:
            self.control.step()

    def set_conf_threshold(self, c: float) -> None:
        self.opts.conf_threshold = float(max(c, 0.0))
        self.control.set_conf_threshold(self.opts.conf_threshold)

    def set_follow(self, on: bool) -> None:
        pose = se3_matrix(self.renderer.current_pose) if self.renderer.current_pose is not None else None
        self.camera.set_follow(on, pose)

    def reset_view(self) -> None:
        self.camera.reset()

    def request_screenshot(self, path: str | Path | None = None) -> Path:
        """Save the next rendered frame as PNG (3D view only unless ``screenshot_gui``); returns the path."""
        if path is None:
            self._screenshot_counter += 1
            stamp = time.strftime("%Y%m%d_%H%M%S")
            path = Path(self.opts.screenshot_dir) / f"viewer_{stamp}_{self._screenshot_counter:03d}.png"
        path = Path(path)
        self._screenshots.append(path)
        return path

    def _save_screenshots(self, img: np.ndarray) -> None:
        from PIL import Image

        for p in self._screenshots:
            try:
                p.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(img).save(p)
                self.message = f"screenshot saved: {p}"
                log.info("viewer: %s", self.message)
            except OSError as e:
                self.message = f"screenshot failed: {p}: {e.strerror or e}"
                log.warning("viewer: %s", self.message)
        self._screenshots = []

    def close(self) -> None:
        """Tell SLAM that the window was closed."""
        self.control.terminate()

    # ---- input (framebuffer pixels, top-left origin) ---------------------------------------------
    def key(self, name: str) -> None:
        """Keyboard shortcut by name: space pause/resume, n step, p screenshot, f follow, g GUI, r reset."""
        if name == "space":
            self.toggle_pause()
        elif name == "n":
            self.step()
        elif name == "p":
            self.request_screenshot()
        elif name == "f":
            self.set_follow(not self.camera.follow)
        elif name == "g":
            self.opts.show_gui = not self.opts.show_gui
        elif name == "r":
            self.reset_view()

    def _point_under(self, x: float, y: float) -> tuple[float, np.ndarray]:
        d = self.depth_at(x, y)
        if d is None:
            d = self.camera.default_depth()
        return d, self.camera.unproject(x, y, d, *self.size)

    def mouse_move(self, x: float, y: float) -> None:
        self._cursor = (float(x), float(y))

    def mouse_press(self, x: float, y: float, button: str, modifiers: tuple[str, ...] = ()) -> None:
        """``button`` is "left", "right" or "middle"; left drags pan (orbit with shift/ctrl),
        right drags orbit around the point under the cursor, middle drags pan."""
        self._cursor = (float(x), float(y))
        orbit = button == "right" or (button == "left" and ("shift" in modifiers or "ctrl" in modifiers))
        depth, pivot = self._point_under(x, y)
        self._drag = ("orbit" if orbit else "pan", depth, pivot)

    def mouse_drag(self, x: float, y: float, dx: float, dy: float) -> None:
        self._cursor = (float(x), float(y))
        if self._drag is None:
            return
        mode, depth, pivot = self._drag
        if mode == "orbit":
            self.camera.orbit(dx, dy, pivot)
        else:
            self.camera.pan(dx, dy, depth, self.size[1])

    def mouse_release(self, x: float, y: float, button: str = "left") -> None:
        self._cursor = (float(x), float(y))
        self._drag = None

    def scroll(self, steps: float, x: float | None = None, y: float | None = None) -> None:
        """Zoom towards the point under the cursor (positive steps zoom in)."""
        if x is None or y is None:
            x, y = self._cursor
        _, target = self._point_under(x, y)
        self.camera.zoom(steps, target)

    # ---- teardown ------------------------------------------------------------------------------
    def release(self) -> None:
        if self.gui is not None:
            self.gui.release()
            self.gui = None
        self._release_scene()
        self.renderer.release()


# ------------------------------------------------------------------------------------------------
# windows and the loop
# ------------------------------------------------------------------------------------------------
def create_window(config: ViewerConfig, headless: bool):
    """A moderngl-window window: GLFW when interactive, an EGL offscreen one when headless."""
    kw = dict(title=config.title, size=(config.width, config.height), gl_version=(3, 3), samples=0)
    if headless:
        from moderngl_window.context.headless import Window

        return Window(backend="egl", vsync=False, **kw)
    from moderngl_window.context.glfw import Window

    return Window(vsync=config.vsync, resizable=True, **kw)


def connect_window_events(window, app: ViewerApp) -> None:
    """Route the window's input events to the GUI first, then (if the GUI does not want them) to the app."""
    keys = window.keys
    names = {"SPACE": "space", "N": "n", "P": "p", "F": "f", "G": "g", "R": "r"}
    keymap = {getattr(keys, k): v for k, v in names.items() if getattr(keys, k, "undefined") != "undefined"}
    buttons = {window.mouse.left: "left", window.mouse.right: "right", window.mouse.middle: "middle"}

    def gui_r():
        return app.gui.renderer if app.gui is not None else None

    def gui_has(kind: str) -> bool:
        if app.gui is None or not app.opts.show_gui:
            return False
        return app.gui.wants_mouse() if kind == "mouse" else app.gui.wants_keyboard()

    def ratio() -> float:
        return float(window.pixel_ratio or 1.0)

    def on_key(key, action, modifiers):
        if gui_r():
            gui_r().key_event(key, action, modifiers)
        if action == keys.ACTION_PRESS and key in keymap and not gui_has("keyboard"):
            app.key(keymap[key])

    def on_position(x, y, dx, dy):
        if gui_r():
            gui_r().mouse_position_event(x, y, dx, dy)
        app.mouse_move(x * ratio(), y * ratio())

    def on_drag(x, y, dx, dy):
        if gui_r():
            gui_r().mouse_drag_event(x, y, dx, dy)
        if app._drag is not None:
            r = ratio()
            app.mouse_drag(x * r, y * r, dx * r, dy * r)

    def on_press(x, y, button):
        if gui_r():
            gui_r().mouse_press_event(x, y, button)
        if not gui_has("mouse") and button in buttons:
            mods = tuple(m for m in ("shift", "ctrl") if getattr(window.modifiers, m, False))
            app.mouse_press(x * ratio(), y * ratio(), buttons[button], mods)

    def on_release(x, y, button):
        if gui_r():
            gui_r().mouse_release_event(x, y, button)
        app.mouse_release(x * ratio(), y * ratio(), buttons.get(button, "left"))

    def on_scroll(x_offset, y_offset):
        if gui_r():
            gui_r().mouse_scroll_event(x_offset, y_offset)
        if not gui_has("mouse") and y_offset:
            app.scroll(float(y_offset))

    def on_char(char):
        if gui_r():
            gui_r().unicode_char_entered(char)

    def on_resize(width, height):
        if gui_r():
            gui_r().resize(width, height)

    def touched(fn):  # every event marks input activity (the GUI must redraw to react)
        def wrapper(*args):
            app.last_input = time.perf_counter()
            fn(*args)

        return wrapper

    window.key_event_func = touched(on_key)
    window.mouse_position_event_func = touched(on_position)
    window.mouse_drag_event_func = touched(on_drag)
    window.mouse_press_event_func = touched(on_press)
    window.mouse_release_event_func = touched(on_release)
    window.mouse_scroll_event_func = touched(on_scroll)
    window.unicode_char_entered_func = touched(on_char)
    window.resize_func = touched(on_resize)


def _events_only(window) -> bool:
    """Process pending window events without presenting a frame; False if the backend cannot."""
    if getattr(window, "name", "") == "glfw":
        import glfw

        glfw.poll_events()
        return True
    return False


def run_loop(window, app: ViewerApp, *, writer=None, max_frames: int | None = None,
             on_frame: Callable[[ViewerApp, int], None] | None = None) -> str:
    """Poll, render and present until the window closes, SLAM terminates or ``max_frames`` frames.

    Headless windows render only when something changed (or ``render_unchanged``), at most
    ``headless_fps`` frames per second, and hand every frame to ``writer``. Interactive windows
    render when SLAM's state changed or within 1 s of user input, else every ``idle_redraw_s``
    (so a paused or finished run costs the GPU nearly nothing). Returns the exit reason.
    """
    o = app.opts
    headless = bool(window.headless)
    n = 0
    dirty = True
    last = None
    t_prev = time.perf_counter()
    while True:
        if window.is_closing:
            return EXIT_CLOSED
        try:
            dirty |= app.poll()
        except Exception as e:  # the source went away (SLAM crashed or shut down mid-read)
            log.warning("viewer: reading the SLAM state failed (%s: %s); closing the viewer", type(e).__name__, e)
            return EXIT_SOURCE_ERROR
        terminated = app.status.mode == "TERMINATED"
        if min(window.buffer_size) <= 0:  # minimised: nothing to draw into, keep handling events
            window.swap_buffers()
            time.sleep(0.05)
            continue
        now = time.perf_counter()
        if headless:
            due = dirty or o.render_unchanged or terminated
            rate_ok = o.headless_fps <= 0 or last is None or now - last >= 1.0 / o.headless_fps
            if not (due and (rate_ok or terminated)):
                time.sleep(o.poll_interval_s)
                continue
        else:
            idle = not dirty and now - app.last_input > 1.0 and last is not None and now - last < o.idle_redraw_s
            if idle and not (terminated and o.close_on_terminate) and _events_only(window):
                time.sleep(o.poll_interval_s)
                continue
        dt = now - t_prev
        t_prev = now
        app.render(dt if n else 1 / 60)
        if writer is not None:
            writer.write(app.read_frame())
        window.swap_buffers()
        n += 1
        dirty = False
        last = now
        if on_frame is not None:
            on_frame(app, n)
        if window.is_closing:
            return EXIT_CLOSED
        if terminated and (headless or o.close_on_terminate):
            return EXIT_TERMINATED
        if max_frames is not None and n >= max_frames:
            return EXIT_MAX_FRAMES


def run_viewer(
    source: ViewerSource,
    control: ViewerControl,
    *,
    headless_dir: str | Path | None = None,
    video: bool = False,
    config: ViewerConfig | None = None,
    max_frames: int | None = None,
    on_frame: Callable[[ViewerApp, int], None] | None = None,
    window=None,
) -> str:
    """Run the viewer until its window closes or SLAM terminates (blocking; call it in its own process).

    * interactive (``headless_dir`` None): a GLFW window; closing it calls ``control.terminate()``.
      Without a display it logs one line and returns ``"no_display"`` at once (SLAM carries on).
    * headless: renders offscreen through EGL and writes ``frame_000000.png``... into
      ``headless_dir`` (plus ``viewer.mp4`` when ``video``), GUI overlay included.

    ``max_frames`` stops after that many rendered frames; ``on_frame(app, n)`` is called after
    each. ``window`` (tests, embedding) is an already created moderngl-window window to use
    instead of opening one; it is destroyed on return. Returns the exit reason: "closed",
    "terminated", "max_frames", "no_display" or "source_error".
    """
    headless = headless_dir is not None
    if window is None and not headless and not display_available():
        log.warning("viewer: no display: running without a window")
        return EXIT_NO_DISPLAY
    check_dependencies()
    config = config or ViewerConfig()
    if config.lower_priority and hasattr(os, "nice"):
        try:
            os.nice(10)
        except OSError:
            pass
    if window is None:
        try:
            window = create_window(config, headless)
        except Exception as e:
            if headless:
                raise Mast3rSlamError(
                    f"viewer: headless rendering needs EGL (Mesa libEGL): {type(e).__name__}: {e}") from e
            log.warning("viewer: could not open a window (%s): running without a window", e)
            return EXIT_NO_DISPLAY
    writer = None
    app = None
    reason = EXIT_CLOSED
    try:
        app = ViewerApp(window, source, control, config)
        connect_window_events(window, app)
        if headless:
            from .headless import FrameWriter

            writer = FrameWriter(headless_dir, video=video, fps=config.video_fps)
        reason = run_loop(window, app, writer=writer, max_frames=max_frames, on_frame=on_frame)
    finally:
        if writer is not None:
            writer.close()
        if app is not None:
            app.release()
        try:
            window.destroy()
        except Exception:  # pragma: no cover - teardown of a broken context
            pass
    if reason == EXIT_CLOSED:
        control.terminate()
    return reason
