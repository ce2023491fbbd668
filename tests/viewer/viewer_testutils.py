"""Helpers of the viewer tests: synthetic pointmaps, pixel sampling, EGL skip (imported by the test modules)."""
import numpy as np
import pytest

from mast3r_slam.viewer import KeyframeData, ViewerConfig

W_FB, H_FB = 320, 240  # framebuffer
H_PM, W_PM = 48, 64  # pointmaps


def requires_egl():
    from mast3r_slam.viewer.headless import egl_available

    try:
        import moderngl  # noqa: F401
    except ImportError:
        pytest.skip("moderngl is not installed (pip install 'mast3r-slam[viz]')")
    if not egl_available():
        pytest.skip("no EGL: headless OpenGL unavailable (install Mesa libegl1 libegl-mesa0 libgl1-mesa-dri)")


def block_colors(H=H_PM, W=W_PM, block=8) -> np.ndarray:
    """Image [H, W, 3] uint8 whose 8x8 blocks all have distinct colours."""
    v, u = np.mgrid[0:H, 0:W]
    bu, bv = u // block, v // block
    return np.stack([40 + 25 * bu, 40 + 30 * bv, 200 - 10 * bu], -1).astype(np.uint8)


def plane_pointmap(H=H_PM, W=W_PM, depth=2.0, f=40.0) -> np.ndarray:
    """Fronto-parallel plane at ``depth`` in the camera, pixel (u, v) on the ray of a pinhole with focal ``f``."""
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    return np.stack([(u - W / 2) / f * depth, (v - H / 2) / f * depth, np.full_like(u, depth)], -1).astype(np.float32)


def plane_keyframe(T_WC, frame_id=0, C=None, rgb=None, depth=2.0) -> KeyframeData:
    X = plane_pointmap(depth=depth)
    C = np.full((H_PM, W_PM), 3.0, np.float32) if C is None else C
    return KeyframeData(frame_id, np.asarray(T_WC, np.float32), X, C, block_colors() if rgb is None else rgb)


def base_config(**kw) -> ViewerConfig:
    """Exact-colour settings: no lighting, no lines unless asked, not following."""
    d = dict(width=W_FB, height=H_FB, lighting=False, follow=False, show_keyframe_frustums=False,
             show_current_frustum=False, show_trajectory=False, show_edges=False, show_gui=False)
    d.update(kw)
    return ViewerConfig(**d)


def background(cfg: ViewerConfig) -> np.ndarray:
    return np.round(np.array(cfg.background) * 255).astype(np.int64)


def colored(img: np.ndarray, cfg: ViewerConfig) -> np.ndarray:
    """[H, W] bool: pixels that differ from the background."""
    return np.abs(img.astype(np.int64) - background(cfg)).max(-1) > 2


def sample(img: np.ndarray, uv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel colours [N, 3] at projected points uv [N, 2] and an in-frame mask [N]."""
    xy = np.floor(uv).astype(np.int64)
    ok = (xy[:, 0] >= 0) & (xy[:, 1] >= 0) & (xy[:, 0] < img.shape[1]) & (xy[:, 1] < img.shape[0])
    out = np.zeros((len(uv), 3), np.int64)
    out[ok] = img[xy[ok, 1], xy[ok, 0]]
    return out, ok
