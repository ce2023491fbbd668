"""A synthetic map for trying the viewer without SLAM (and for its tests).

    python -m mast3r_slam.viewer.demo                 # window (needs a display)
    python -m mast3r_slam.viewer.demo --headless out  # PNG frames (+ --video for an MP4)
    python -m mast3r_slam.viewer.demo --bench 20      # headless timing of 20 keyframes of 512x384

The scene is a textured corner (a wall at z = 3 and a floor at y = 1, OpenCV world axes) seen by
cameras moving along x; pointmaps are ray-cast exactly, confidence falls off towards the image
border, and the current frame carries a square "moving object" in its dynamic mask.
"""
from __future__ import annotations

import argparse
import threading
import time

import numpy as np

from .math3d import axis_angle, make_sim3
from .source import CurrentData, KeyframeData, RecordingControl, StaticSource


def _intrinsics(H: int, W: int) -> np.ndarray:
    f = 0.9 * W
    return np.array([[f, 0, (W - 1) / 2], [0, f, (H - 1) / 2], [0, 0, 1.0]])


def render_view(T_WC: np.ndarray, H: int = 48, W: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ray-cast the demo scene from Sim(3) pose ``T_WC`` [8]: (X [H,W,3] camera frame, C [H,W], rgb [H,W,3])."""
    from .math3d import quat_to_rot

    K = _intrinsics(H, W)
    u, v = np.meshgrid(np.arange(W, dtype=np.float64), np.arange(H, dtype=np.float64))
    rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1)  # z = 1
    R = quat_to_rot(np.asarray(T_WC[3:7], np.float64))
    c = np.asarray(T_WC[:3], np.float64)
    d = rays @ R.T  # world directions (unit z in camera)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_wall = (3.0 - c[2]) / d[..., 2]
        t_floor = (1.0 - c[1]) / d[..., 1]
    t_wall = np.where(t_wall > 0, t_wall, np.inf)
    t_floor = np.where(t_floor > 0, t_floor, np.inf)
    t = np.minimum(t_wall, t_floor)
    t = np.where(np.isfinite(t), t, 10.0)
    P = c + d * t[..., None]
    X = (rays * t[..., None]).astype(np.float32)  # camera frame: depth t along a z=1 ray
    a, b = np.where((t_wall <= t_floor)[..., None], P[..., [0, 1]], P[..., [0, 2]]).transpose(2, 0, 1)
    checker = ((np.floor(a * 4) + np.floor(b * 4)) % 2).astype(np.float64)
    rgb = np.stack([0.35 + 0.5 * checker, 0.45 + 0.25 * (t_wall <= t_floor), 0.8 - 0.5 * checker], -1)
    rgb = np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8)
    r2 = ((u - W / 2) / W) ** 2 + ((v - H / 2) / H) ** 2
    C = (1.0 + 4.0 * np.exp(-r2 / 0.08)).astype(np.float32)
    return X, C, rgb


def demo_pose(s: float) -> np.ndarray:
    """Camera pose at path parameter ``s`` (0..1): sliding along x while turning slightly."""
    R = axis_angle([0, 1, 0], 0.3 * (s - 0.5))
    return make_sim3(R, t=(2.0 * s - 1.0, 0.0, 0.0))


def demo_source(n_keyframes: int = 4, H: int = 48, W: int = 64, current: bool = True) -> StaticSource:
    src = StaticSource()
    for k in range(n_keyframes):
        T = demo_pose(k / max(n_keyframes - 1, 1))
        X, C, rgb = render_view(T, H, W)
        src.add_keyframe(KeyframeData(frame_id=10 * k, T_WC=T, X=X, C=C, rgb=rgb))
    if n_keyframes > 1:
        ii = np.arange(n_keyframes - 1)
        src.set_edges(np.r_[ii, 0], np.r_[ii + 1, n_keyframes - 1], np.r_[np.zeros(n_keyframes - 1, bool), True])
    if current:
        T = demo_pose(1.0)
        X, C, rgb = render_view(T, H, W)
        mask = np.zeros((H, W), bool)
        mask[H // 3: H // 2, W // 3: W // 2] = True
        src.set_current(CurrentData(frame_id=10 * n_keyframes, T_WC=T, X=X, C=C, rgb=rgb, dynamic_mask=mask))
    src.set_status(mode="TRACKING", frame=10 * n_keyframes, n_frames=100, fps=20.0,
                   stand_in="ground-truth stand-in (demo scene, not MASt3R)")
    return src


def _animate(src: StaticSource, control: RecordingControl, n_frames: int, H: int, W: int, period: float,
             stop: threading.Event) -> None:
    i = 0
    while i < n_frames and not stop.is_set():
        if control.paused and control.steps == 0:
            time.sleep(0.02)
            continue
        if control.paused:
            control.steps -= 1
        s = i / max(n_frames - 1, 1)
        T = demo_pose(s)
        X, C, rgb = render_view(T, H, W)
        if i % 10 == 0:
            src.add_keyframe(KeyframeData(frame_id=i, T_WC=T, X=X, C=C, rgb=rgb))
            n = src.status().n_keyframes
            if n > 1:
                ii = np.arange(n - 1)
                src.set_edges(ii, ii + 1)
        src.set_current(CurrentData(frame_id=i, T_WC=T, X=X, C=C, rgb=rgb))
        src.set_status(mode="TRACKING", frame=i, n_frames=n_frames, fps=1 / period)
        i += 1
        time.sleep(period)
    src.set_status(mode="TERMINATED")


def bench(n_keyframes: int, size=(1280, 720), H: int = 384, W: int = 512, repeats: int = 5) -> dict:
    """Headless timing: ms per frame (all keyframes uploaded, GUI on) for each point mode and stride."""
    from .config import ViewerConfig
    from .headless import HeadlessViewer

    src = demo_source(n_keyframes, H, W)
    out = {}
    for mode in ("surfel", "point"):
        for stride in (1, 2):
            cfg = ViewerConfig(width=size[0], height=size[1], point_mode=mode, point_stride=stride,
                               max_uploads_per_frame=0)
            with HeadlessViewer(src, config=cfg) as v:
                t0 = time.perf_counter()
                v.render()
                v.window.ctx.finish()
                t_first = time.perf_counter() - t0
                t0 = time.perf_counter()
                for _ in range(repeats):
                    v.app.render()
                v.window.ctx.finish()
                out[(mode, stride)] = (1000 * t_first, 1000 * (time.perf_counter() - t0) / repeats)
    return out


def main(argv=None) -> int:
    from .app import run_viewer
    from .config import ViewerConfig

    ap = argparse.ArgumentParser(description="viewer demo on a synthetic scene")
    ap.add_argument("--headless", default=None, metavar="DIR", help="render PNG frames into DIR")
    ap.add_argument("--video", action="store_true", help="with --headless, also write DIR/viewer.mp4")
    ap.add_argument("--frames", type=int, default=120, help="synthetic frames to play")
    ap.add_argument("--size", type=int, nargs=2, default=(1280, 720), metavar=("W", "H"))
    ap.add_argument("--bench", type=int, default=0, metavar="K",
                    help="time headless rendering of K keyframes of 512x384 and exit")
    args = ap.parse_args(argv)
    if args.bench:
        from .headless import HeadlessViewer  # noqa: F401 (fails early without moderngl)

        for (mode, stride), (first, per) in bench(args.bench, tuple(args.size)).items():
            print(f"{args.bench} keyframes 512x384, {args.size[0]}x{args.size[1]}, {mode:6s} stride {stride}: "
                  f"first frame (uploads) {first:8.1f} ms, then {per:8.1f} ms/frame")
        return 0
    src = StaticSource()
    src.set_status(stand_in="ground-truth stand-in (demo scene, not MASt3R)")
    control = RecordingControl()
    stop = threading.Event()
    th = threading.Thread(target=_animate, args=(src, control, args.frames, 192, 256, 0.05, stop), daemon=True)
    th.start()
    cfg = ViewerConfig(width=args.size[0], height=args.size[1], close_on_terminate=False)
    reason = run_viewer(src, control, headless_dir=args.headless, video=args.video, config=cfg)
    stop.set()
    print(f"viewer exited: {reason}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
