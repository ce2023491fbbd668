"""The blocking entry point: headless frames and video, exit reasons, window close, no display."""
import numpy as np
import pytest
from PIL import Image

from mast3r_slam.viewer import RecordingControl, StaticSource, display_available, run_viewer
from mast3r_slam.viewer.demo import demo_source

from viewer_testutils import H_FB, W_FB, base_config, requires_egl


def test_no_display_returns_without_terminating_slam(monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr("sys.platform", "linux")
    assert display_available() is False
    control = RecordingControl()
    assert run_viewer(StaticSource(), control) == "no_display"
    assert control.events == []
    monkeypatch.setenv("DISPLAY", ":0")
    assert display_available() is True


@pytest.mark.viz
def test_headless_run_writes_numbered_frames_and_video(tmp_path):
    requires_egl()
    import cv2

    src = demo_source(3)
    control = RecordingControl()
    cfg = base_config(show_gui=True, render_unchanged=True, headless_fps=0, show_keyframe_frustums=True)
    seen = []
    reason = run_viewer(src, control, headless_dir=tmp_path, video=True, config=cfg, max_frames=3,
                        on_frame=lambda app, n: seen.append((n, app.renderer.stats.keyframe_uploads)))
    assert reason == "max_frames"
    assert seen == [(1, 3), (2, 3), (3, 3)]  # uploaded once, then nothing changed
    files = sorted(p.name for p in tmp_path.glob("frame_*.png"))
    assert files == ["frame_000000.png", "frame_000001.png", "frame_000002.png"]
    first = np.asarray(Image.open(tmp_path / files[0]).convert("RGB"))
    assert first.shape == (H_FB, W_FB, 3)
    assert (np.abs(first.astype(int) - np.round(np.array(cfg.background) * 255)).max(-1) > 2).mean() > 0.2
    cap = cv2.VideoCapture(str(tmp_path / "viewer.mp4"))
    assert cap.isOpened()
    n = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        assert frame.shape == (H_FB, W_FB, 3)
        n += 1
    assert n == 3
    assert control.events == []  # max_frames is not a window close: SLAM is not told to stop


@pytest.mark.viz
def test_headless_run_returns_when_slam_terminates(tmp_path):
    requires_egl()
    src = demo_source(2)
    src.set_status(mode="TERMINATED")
    control = RecordingControl()
    assert run_viewer(src, control, headless_dir=tmp_path, config=base_config()) == "terminated"
    assert len(list(tmp_path.glob("frame_*.png"))) == 1  # the final state is rendered once
    assert not control.terminated


@pytest.mark.viz
def test_headless_renders_only_on_change(tmp_path):
    """Without render_unchanged, frames are written only when the SLAM state changed."""
    requires_egl()
    src = demo_source(2)
    cfg = base_config(headless_fps=0, poll_interval_s=0.001)
    polls = {"n": 0}
    orig = src.status

    def status():  # SLAM advances on every 5th poll and ends after 20 polls
        polls["n"] += 1
        st = orig()
        st.frame = polls["n"] // 5
        st.mode = "TERMINATED" if polls["n"] >= 20 else "TRACKING"
        return st

    src.status = status
    assert run_viewer(src, RecordingControl(), headless_dir=tmp_path, config=cfg) == "terminated"
    assert len(list(tmp_path.glob("frame_*.png"))) == 5  # first frame + 4 changes (frames 1..4; 4 is final)


@pytest.mark.viz
def test_closing_the_window_terminates_slam():
    requires_egl()
    from mast3r_slam.viewer.app import create_window

    cfg = base_config(render_unchanged=True, headless_fps=0)
    window = create_window(cfg, headless=True)
    control = RecordingControl()

    def close_on_second(app, n):
        if n == 2:
            app.window.close()

    assert run_viewer(demo_source(1), control, config=cfg, window=window, on_frame=close_on_second) == "closed"
    assert control.events == [("terminate", None)]


@pytest.mark.viz
def test_source_failure_ends_the_viewer_cleanly(tmp_path):
    requires_egl()

    class Broken(StaticSource):
        def keyframe_versions(self):
            raise FileNotFoundError("shared memory is gone")

    control = RecordingControl()
    assert run_viewer(Broken(), control, headless_dir=tmp_path, config=base_config()) == "source_error"
    assert control.events == []


@pytest.mark.viz
def test_interactive_loop_skips_redraws_while_idle(monkeypatch):
    """A window (here: EGL pretending to be interactive) redraws on change or input, else rarely."""
    requires_egl()
    import time

    import mast3r_slam.viewer.app as app_mod
    from mast3r_slam.viewer.app import ViewerApp, create_window, run_loop

    class Interactive:
        headless = False

        def __init__(self, w):
            self._w = w

        def __getattr__(self, k):
            return getattr(self._w, k)

    event_polls = []
    monkeypatch.setattr(app_mod, "_events_only", lambda w: event_polls.append(1) or True)
    cfg = base_config(idle_redraw_s=0.05, poll_interval_s=0.002)
    inner = create_window(cfg, headless=True)
    window = Interactive(inner)
    app = ViewerApp(window, demo_source(1), RecordingControl(), cfg, gui=False)
    try:
        t0 = time.perf_counter()
        assert run_loop(window, app, max_frames=3) == "max_frames"
        elapsed = time.perf_counter() - t0
        assert elapsed >= 0.09  # frames 2 and 3 waited for the idle redraw interval
        assert len(event_polls) >= 10  # meanwhile only events were processed
        # recent user input: every loop iteration draws
        event_polls.clear()
        app.last_input = time.perf_counter()
        assert run_loop(window, app, max_frames=3) == "max_frames"
        assert event_polls == []
    finally:
        app.release()
        inner.destroy()


@pytest.mark.filterwarnings("ignore")
def test_window_that_cannot_open_means_no_display(monkeypatch):
    """$DISPLAY set but unusable: GLFW fails, the viewer says so and returns; SLAM is not stopped."""
    pytest.importorskip("glfw")
    pytest.importorskip("moderngl_window")
    monkeypatch.setenv("DISPLAY", ":4321")
    control = RecordingControl()
    reason = run_viewer(StaticSource(), control, max_frames=1)  # max_frames guards a real display
    assert reason in ("no_display", "max_frames")
    assert control.events == []
