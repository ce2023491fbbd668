"""Procedural textures for the synthetic scenes (numpy + OpenCV, deterministic per seed).

Every generator returns a float32 RGB image in [0, 1] of shape ``[h, w, 3]``. Textures are
baked once per scene into images that cover a surface without repetition (``texels_per_m``
texels per metre) and sampled with trilinear mip-mapping by the renderer, so that distant
surfaces do not alias.

Patterns: multi-octave value noise (``fbm``), wood grain / planks, stone (jittered Voronoi
cells), fabric (weave), plaster, tiles, cardboard and posters (saturated shapes, stripes and
text-like blocks: high-frequency detail so that matching has texture everywhere).
"""
from __future__ import annotations

import cv2
import numpy as np


# ----------------------------------------------------------------------------------------------
# noise primitives
# ----------------------------------------------------------------------------------------------
def value_noise(rng: np.random.Generator, h: int, w: int, cells: float) -> np.ndarray:
    """Smooth value noise in about [-1, 1] with ``cells`` features along the long side [h, w]."""
    step = max(max(h, w) / max(float(cells), 1.0), 1.0)  # texels per lattice cell
    gh, gw = int(np.ceil(h / step)) + 3, int(np.ceil(w / step)) + 3
    grid = rng.uniform(-1.0, 1.0, size=(gh, gw)).astype(np.float32)
    big = cv2.resize(grid, (int(round(gw * step)), int(round(gh * step))), interpolation=cv2.INTER_CUBIC)
    o = int(round(step))
    return np.clip(big[o : o + h, o : o + w], -1.5, 1.5)


def fbm(rng: np.random.Generator, h: int, w: int, cells: float = 4, octaves: int = 5, gain: float = 0.5) -> np.ndarray:
    """Fractal (multi-octave) value noise, roughly in [-1, 1] [h, w]."""
    out = np.zeros((h, w), np.float32)
    amp, total = 1.0, 0.0
    for k in range(octaves):
        c = cells * (2**k)
        if c > max(h, w) / 1.5:  # finer than the texel grid
            break
        out += amp * value_noise(rng, h, w, c)
        total += amp
        amp *= gain
    return out / max(total, 1e-6)


def _mix(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0, 1)[..., None]
    return a * (1 - t) + b * t


def _palette(c0, c1, t: np.ndarray) -> np.ndarray:
    return _mix(np.asarray(c0, np.float32), np.asarray(c1, np.float32), t)


def _rand_color(rng: np.random.Generator, sat: tuple[float, float] = (0.3, 0.9), val: tuple[float, float] = (0.3, 0.95)) -> np.ndarray:
    hsv = np.array([[[rng.uniform(0, 180), rng.uniform(*sat) * 255, rng.uniform(*val) * 255]]], np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32) / 255.0


# ----------------------------------------------------------------------------------------------
# materials
# ----------------------------------------------------------------------------------------------
def plaster(rng, h, w, tint=None) -> np.ndarray:
    base = tint if tint is not None else _rand_color(rng, (0.05, 0.25), (0.7, 0.9))
    n = fbm(rng, h, w, cells=max(h, w) / 40, octaves=6, gain=0.6)
    spots = fbm(rng, h, w, cells=max(h, w) / 8, octaves=2)
    img = base[None, None] * (1.0 + 0.22 * n[..., None] + 0.1 * spots[..., None])
    return np.clip(img, 0, 1)


def wallpaper(rng, h, w) -> np.ndarray:
    """Damask-like repeating motif with hand-made irregularities (stripes + dots + noise)."""
    c0, c1 = _rand_color(rng, (0.2, 0.5), (0.5, 0.85)), _rand_color(rng, (0.2, 0.6), (0.3, 0.7))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    period = rng.uniform(18, 30)
    warp = 6 * fbm(rng, h, w, cells=max(h, w) / 60, octaves=3)
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * (xx + warp) / period)
    dots = (np.sin(2 * np.pi * xx / (period / 2)) * np.sin(2 * np.pi * (yy + warp) / (period / 2)) > 0.55).astype(np.float32)
    t = 0.6 * stripes + 0.4 * dots
    img = _palette(c0, c1, t)
    img *= 1.0 + 0.15 * fbm(rng, h, w, cells=max(h, w) / 30, octaves=5)[..., None]
    return np.clip(img, 0, 1)


def wood(rng, h, w, planks: bool = True, plank_px: int = 40) -> np.ndarray:
    """Wood grain along x; with ``planks``, boards of ``plank_px`` texels separated by dark seams."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    light, dark = np.array([0.72, 0.52, 0.32], np.float32), np.array([0.42, 0.26, 0.13], np.float32)
    light = light * rng.uniform(0.85, 1.15)
    out = np.zeros((h, w, 3), np.float32)
    board = (yy // plank_px).astype(np.int32) if planks else np.zeros_like(yy, np.int32)
    nb = int(board.max()) + 1
    shift = rng.uniform(0, 1000, size=nb).astype(np.float32)
    tone = rng.uniform(0.8, 1.2, size=nb).astype(np.float32)
    warp = fbm(rng, h, w, cells=max(h, w) / 120, octaves=4)
    fine = fbm(rng, h, w, cells=max(h, w) / 6, octaves=4)
    ring = np.sin((yy * 0.9 + 9 * warp + 0.02 * (xx + shift[board])) * (2 * np.pi / rng.uniform(5, 9)))
    t = 0.5 + 0.35 * ring + 0.25 * fine
    out = _palette(light, dark, t) * tone[board][..., None]
    if planks:
        # board ends at random offsets and seams between boards
        length = rng.uniform(4, 7) * plank_px
        ends = ((xx + shift[board] * 3) % length) < 2
        seam = (yy % plank_px) < 2
        out[seam | ends] *= 0.35
    return np.clip(out, 0, 1)


def stone(rng, h, w, cell_px: float = 30) -> np.ndarray:
    """Jittered-grid Voronoi cells (flagstones) with dark mortar and speckles."""
    gy, gx = int(np.ceil(h / cell_px)) + 2, int(np.ceil(w / cell_px)) + 2
    pts = (np.stack(np.mgrid[0:gy, 0:gx], -1).astype(np.float32) - 1 + rng.uniform(0.1, 0.9, (gy, gx, 2))) * cell_px
    cols = rng.uniform(0.35, 0.75, (gy, gx, 1)) * np.array([1.0, 0.97, 0.9]) + rng.uniform(-0.05, 0.05, (gy, gx, 3))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = (yy // cell_px).astype(np.int32) + 1, (xx // cell_px).astype(np.int32) + 1
    d1 = np.full((h, w), np.inf, np.float32)
    d2 = np.full((h, w), np.inf, np.float32)
    best = np.zeros((h, w, 3), np.float32)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            iy, ix = np.clip(cy + dy, 0, gy - 1), np.clip(cx + dx, 0, gx - 1)
            p = pts[iy, ix]
            d = np.hypot(p[..., 0] - yy, p[..., 1] - xx)
            closer = d < d1
            d2 = np.where(closer, d1, np.minimum(d2, d))
            best = np.where(closer[..., None], cols[iy, ix], best)
            d1 = np.where(closer, d, d1)
    mortar = np.clip((d2 - d1) / 3.0, 0, 1)
    img = best * (0.35 + 0.65 * mortar[..., None])
    img *= 1.0 + 0.25 * fbm(rng, h, w, cells=max(h, w) / 10, octaves=5)[..., None]
    return np.clip(img, 0, 1).astype(np.float32)


def fabric(rng, h, w) -> np.ndarray:
    base = _rand_color(rng, (0.3, 0.8), (0.3, 0.7))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    p = rng.uniform(3, 5)
    weave = np.sin(2 * np.pi * xx / p) * np.sin(2 * np.pi * yy / p)
    check = ((xx // rng.uniform(20, 40) + yy // rng.uniform(20, 40)) % 2).astype(np.float32)
    img = base[None, None] * (0.75 + 0.12 * weave[..., None] + 0.15 * check[..., None])
    img *= 1.0 + 0.2 * fbm(rng, h, w, cells=max(h, w) / 25, octaves=4)[..., None]
    return np.clip(img, 0, 1)


def tiles(rng, h, w, tile_px: int = 60) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    ty, tx = yy // tile_px, xx // tile_px
    nty, ntx = int(ty.max()) + 1, int(tx.max()) + 1
    a, b = _rand_color(rng, (0.0, 0.2), (0.75, 0.95)), _rand_color(rng, (0.1, 0.4), (0.4, 0.7))
    pick = rng.uniform(0, 1, (nty, ntx)).astype(np.float32)
    img = _palette(a, b, (pick[ty, tx] > 0.6).astype(np.float32) * 0.8 + 0.1 * pick[ty, tx])
    grout = ((yy % tile_px) < 3) | ((xx % tile_px) < 3)
    img[grout] = 0.3
    img *= 1.0 + 0.15 * fbm(rng, h, w, cells=max(h, w) / 15, octaves=5)[..., None]
    return np.clip(img, 0, 1)


def cardboard(rng, h, w) -> np.ndarray:
    base = np.array([0.66, 0.5, 0.33], np.float32) * rng.uniform(0.85, 1.1)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = base[None, None] * (1.0 + 0.18 * fbm(rng, h, w, cells=max(h, w) / 12, octaves=5)[..., None])
    # tape strip and printed label
    img[np.abs(xx - w * rng.uniform(0.3, 0.7)) < max(w // 14, 2)] *= 0.8
    poster_into(rng, img, int(h * 0.55), int(w * 0.1), int(h * 0.35), int(w * 0.4))
    return np.clip(img, 0, 1)


def poster_into(rng, img: np.ndarray, y0: int, x0: int, ph: int, pw: int) -> None:
    """Paint a poster (shapes, stripes, text-like lines) into ``img`` in place."""
    if ph < 8 or pw < 8:
        return
    canvas = np.zeros((ph, pw, 3), np.uint8)
    canvas[:] = (_rand_color(rng, (0.0, 0.3), (0.75, 1.0)) * 255).astype(np.uint8)
    for _ in range(int(rng.integers(6, 14))):
        col = tuple(int(c) for c in (_rand_color(rng) * 255))
        kind = rng.integers(0, 4)
        cx, cy = int(rng.integers(0, pw)), int(rng.integers(0, ph))
        s = int(rng.integers(max(ph, pw) // 12 + 1, max(ph, pw) // 3 + 2))
        if kind == 0:
            cv2.circle(canvas, (cx, cy), s, col, -1, lineType=cv2.LINE_AA)
        elif kind == 1:
            cv2.rectangle(canvas, (cx - s, cy - s // 2), (cx + s, cy + s // 2), col, -1)
        elif kind == 2:
            tri = np.array([[cx, cy - s], [cx - s, cy + s], [cx + s, cy + s]], np.int32)
            cv2.fillPoly(canvas, [tri], col, lineType=cv2.LINE_AA)
        else:
            th = max(1, s // 6)
            for k in range(-3, 4):
                cv2.line(canvas, (cx - s, cy + k * 3 * th), (cx + s, cy + k * 3 * th - s // 2), col, th, cv2.LINE_AA)
    # text-like block: rows of dark dashes of random lengths
    lines = int(rng.integers(3, 7))
    lh = max(ph // 18, 2)
    for k in range(lines):
        y = int(ph * 0.65) + k * 2 * lh
        if y + lh >= ph:
            break
        x = pw // 10
        while x < pw * 0.9:
            ln = int(rng.integers(lh, 5 * lh))
            cv2.rectangle(canvas, (x, y), (min(x + ln, pw - 2), y + lh), (25, 25, 30), -1)
            x += ln + lh
    cv2.rectangle(canvas, (0, 0), (pw - 1, ph - 1), (20, 20, 20), max(1, min(ph, pw) // 60))
    h, w = img.shape[:2]
    ys, xs = slice(max(y0, 0), min(y0 + ph, h)), slice(max(x0, 0), min(x0 + pw, w))
    img[ys, xs] = canvas[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0].astype(np.float32) / 255.0


def poster(rng, h, w) -> np.ndarray:
    img = np.zeros((h, w, 3), np.float32)
    poster_into(rng, img, 0, 0, h, w)
    return img


GENERATORS = {
    "plaster": plaster,
    "wallpaper": wallpaper,
    "wood": lambda rng, h, w: wood(rng, h, w, planks=False),
    "planks": wood,
    "stone": stone,
    "fabric": fabric,
    "tiles": tiles,
    "cardboard": cardboard,
    "poster": poster,
}


def make_texture(kind: str, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Texture of a named kind (see ``GENERATORS``) as float32 [h, w, 3] in [0, 1]."""
    return GENERATORS[kind](rng, int(h), int(w)).astype(np.float32)


def mip_pyramid(img: np.ndarray, min_size: int = 2) -> list[np.ndarray]:
    """Box-filtered mip levels of a texture, level 0 = full resolution."""
    levels = [np.ascontiguousarray(img, dtype=np.float32)]
    while min(levels[-1].shape[:2]) >= 2 * min_size:
        cur = levels[-1]
        h2, w2 = cur.shape[0] // 2, cur.shape[1] // 2
        levels.append(cv2.resize(cur[: 2 * h2, : 2 * w2], (w2, h2), interpolation=cv2.INTER_AREA))
    return levels
