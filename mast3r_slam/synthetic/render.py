"""Vectorised numpy ray caster: colour, z-depth and primitive ids for one pinhole camera.

One ray per pixel centre (pixel (u, v) has its centre at integer coordinates, OpenCV
convention). All pixels are intersected with each primitive in turn (a few dozen), keeping
the nearest hit; textures are sampled with trilinear mip-mapping from the pixel footprint,
lit by point lights (Lambertian, view independent, no shadows) plus ambient, then lightly
blurred (optics) and given a little deterministic sensor noise.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .scene import Material, Scene, matmul3


@dataclass
class PinholeCamera:
    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float

    @classmethod
    def default(cls, width: int, height: int, hfov_deg: float = 64.0) -> "PinholeCamera":
        """Square pixels, horizontal field of view ``hfov_deg``, principal point at the centre."""
        f = width / (2 * np.tan(np.deg2rad(hfov_deg) / 2))
        return cls(width, height, f, f, (width - 1) / 2, (height - 1) / 2)

    @property
    def K(self) -> np.ndarray:
        return np.array([[self.fx, 0, self.cx], [0, self.fy, self.cy], [0, 0, 1.0]])

    def rays(self) -> np.ndarray:
        """Camera-frame ray directions with z = 1 for every pixel, row-major [H*W, 3]."""
        v, u = np.mgrid[0 : self.height, 0 : self.width].astype(np.float64)
        return np.stack([(u - self.cx) / self.fx, (v - self.cy) / self.fy, np.ones_like(u)], -1).reshape(-1, 3)


def sample_material(mat: Material, uv: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """Trilinear mip-mapped lookup with wrap-around: uv [N, 2] metres, footprint [N] metres/pixel.

    Returns [N, C] float32 (C = channels of the texture)."""
    n_lev = len(mat.levels)
    lod = np.clip(np.log2(np.maximum(footprint * mat.density, 1e-6)), 0, n_lev - 1 - 1e-6).astype(np.float32)
    l0 = lod.astype(np.int64)
    frac = (lod - l0)[:, None]
    out = np.empty((len(uv), mat.levels[0].shape[2]), np.float32)
    for lev in np.unique(l0):
        m = np.nonzero(l0 == lev)[0]
        uvm = uv[m]
        a = _bilinear(mat.levels[lev], uvm, mat.density / 2**lev)
        b = _bilinear(mat.levels[min(lev + 1, n_lev - 1)], uvm, mat.density / 2 ** (lev + 1))
        out[m] = a + (b - a) * frac[m]
    return out


def _bilinear(img: np.ndarray, uv: np.ndarray, density: float) -> np.ndarray:
    h, w, c = img.shape
    flat = img.reshape(h * w, c)
    x = uv[:, 0] * density - 0.5
    y = uv[:, 1] * density - 0.5
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = (x - x0).astype(np.float32)[:, None], (y - y0).astype(np.float32)[:, None]
    x0, y0 = x0.astype(np.int64) % w, y0.astype(np.int64) % h
    x1, y1 = x0 + 1, (y0 + 1) % h
    x1[x1 == w] = 0
    r0, r1 = y0 * w, y1 * w
    top = np.take(flat, r0 + x0, axis=0)
    top += (np.take(flat, r0 + x1, axis=0) - top) * fx
    bot = np.take(flat, r1 + x0, axis=0)
    bot += (np.take(flat, r1 + x1, axis=0) - bot) * fx
    return top + (bot - top) * fy


def _screen_subset(bound, cam: PinholeCamera, R: np.ndarray, o: np.ndarray) -> np.ndarray | None:
    """Linear indices of the pixels whose rays may hit a bounding sphere (None: all pixels)."""
    if bound is None:
        return None
    c, r = bound
    x, y, z = (c - o) @ R  # centre in camera coordinates
    if z + r <= 1e-6:
        return np.zeros(0, np.int64)  # entirely behind the camera
    if z - r <= 0.05:
        return None  # straddles the camera plane: test everything
    u = [cam.fx * (x + sx * r) / (z + sz * r) + cam.cx for sx in (-1, 1) for sz in (-1, 1)]
    v = [cam.fy * (y + sy * r) / (z + sz * r) + cam.cy for sy in (-1, 1) for sz in (-1, 1)]
    u0, u1 = max(int(np.floor(min(u))), 0), min(int(np.ceil(max(u))), cam.width - 1)
    v0, v1 = max(int(np.floor(min(v))), 0), min(int(np.ceil(max(v))), cam.height - 1)
    if u0 > u1 or v0 > v1:
        return np.zeros(0, np.int64)
    return (np.arange(v0, v1 + 1)[:, None] * cam.width + np.arange(u0, u1 + 1)[None]).ravel()


@dataclass
class RenderResult:
    rgb: np.ndarray  # [H, W, 3] uint8
    depth: np.ndarray  # [H, W] float32 z-depth in metres
    prim_id: np.ndarray  # [H, W] int32 index into scene.prims


def render(
    scene: Scene,
    cam: PinholeCamera,
    T_WC: np.ndarray,  # [4, 4] camera-to-world (OpenCV camera axes)
    *,
    noise_seed: int | None = None,
    noise_sigma: float = 0.8,
    blur_sigma: float = 0.5,
    rays_cam: np.ndarray | None = None,
) -> RenderResult:
    """Render one view. ``noise_sigma`` is the sensor noise std in 8-bit levels (0 = none)."""
    H, W = cam.height, cam.width
    rc = cam.rays() if rays_cam is None else rays_cam
    R, o = T_WC[:3, :3], T_WC[:3, 3]
    d = matmul3(rc, R.T)  # [N, 3] world directions, camera z = 1
    t_best = np.full(len(d), np.inf)
    id_best = np.full(len(d), -1, np.int64)
    for k, prim in enumerate(scene.prims):
        sub = _screen_subset(prim.bound(), cam, R, o)
        if sub is None:  # fills the view
            t = prim.intersect(o, d)
            closer = t < t_best
            t_best = np.where(closer, t, t_best)
            id_best = np.where(closer, k, id_best)
        elif len(sub):
            t = prim.intersect(o, d[sub])
            closer = t < t_best[sub]
            t_best[sub[closer]] = t[closer]
            id_best[sub[closer]] = k
    hit = np.isfinite(t_best)
    color = np.zeros((len(d), 3), np.float32)
    order = np.argsort(id_best, kind="stable")
    ids_sorted = id_best[order]
    for k in np.unique(id_best[hit]):
        prim = scene.prims[k]
        idx = order[np.searchsorted(ids_sorted, k) : np.searchsorted(ids_sorted, k, side="right")]
        dk = d[idx]
        p = o + t_best[idx, None] * dk
        n, uv, face = prim.surface_world(p)
        cos = np.abs(np.einsum("ij,ij->i", n, dk)) / np.linalg.norm(dk, axis=1)
        footprint = t_best[idx] / cam.fx / np.sqrt(np.maximum(cos, 0.1))
        # faces of one primitive share its texture at different offsets (boxes) or own one (room)
        mats = np.asarray(prim.mats)[np.minimum(face, len(prim.mats) - 1)]
        if len(prim.mats) == 1:
            uv = uv + np.stack([face * 0.37, face * 0.23], 1)
        col = np.empty((len(idx), 3), np.float32)
        for m in np.unique(mats):
            sel = np.nonzero(mats == m)[0]
            col[sel] = sample_material(scene.materials[m], uv[sel], footprint[sel])
        if scene.detail is not None:
            det = sample_material(scene.detail, uv + k * 0.131, footprint)
            col *= 1.0 + 0.12 * det
        # Lambertian point lights with soft distance falloff + ambient (view independent)
        shade = np.full(len(idx), scene.ambient)
        for light in scene.lights:
            L = light - p
            dist = np.sqrt(np.einsum("ij,ij->i", L, L)) + 1e-9
            lam = np.maximum(np.einsum("ij,ij->i", n, L), 0) / dist
            shade += 0.55 * lam / (1 + (dist / 3.5) ** 2)
        color[idx] = col * shade[:, None].astype(np.float32)
    rgb = np.clip(color, 0, 1).reshape(H, W, 3) * 255.0
    if blur_sigma > 0:
        rgb = cv2.GaussianBlur(rgb, (0, 0), blur_sigma, borderType=cv2.BORDER_REFLECT)
    if noise_seed is not None and noise_sigma > 0:
        rgb = rgb + np.random.default_rng(noise_seed).normal(0, noise_sigma, rgb.shape).astype(np.float32)
    depth = np.where(hit, t_best, 0).reshape(H, W).astype(np.float32)
    return RenderResult(np.clip(np.rint(rgb), 0, 255).astype(np.uint8), depth, id_best.reshape(H, W).astype(np.int32))
