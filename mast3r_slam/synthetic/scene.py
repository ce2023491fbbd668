"""Scene description: textured primitives (room, boxes, spheres, cylinders) and their ray tests.

World frame: metres, z up, floor at z = 0, room centred on the origin. Every primitive has a
rigid pose (``R`` [3, 3], ``c`` [3]) mapping its local frame to the world; dynamic objects
change their primitives' poses per frame. Ray tests take the camera centre ``o`` [3] and
un-normalised world ray directions ``d`` [N, 3] whose camera-frame z component is 1, so the
returned ray parameter ``t`` is directly the z-depth of the hit.
"""
from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field

import numpy as np

from . import textures as tex

_EPS = 1e-6
# Room (and default layout) dimensions, metres
ROOM_HALF = np.array([4.0, 3.0, 1.4])  # x, y half extents; z half height
ROOM_CENTER = np.array([0.0, 0.0, 1.4])
ROOM_TEXELS_PER_M = 128.0
OBJECT_TEXELS_PER_M = 200.0


@dataclass
class Material:
    """A baked texture (mip pyramid) covering a surface; ``density`` texels per metre."""

    levels: list  # list of [h, w, 3] float32 arrays, level 0 first
    density: float


def matmul3(A: np.ndarray, M: np.ndarray) -> np.ndarray:
    """``A @ M`` for A [N, 3] and M [3, 3] (much faster than numpy's generic matmul for N x 3)."""
    return A[:, 0:1] * M[0] + A[:, 1:2] * M[1] + A[:, 2:3] * M[2]


def rot_z(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


@dataclass
class Primitive:
    """Base class. ``mats``: material index per face (one entry for single-surface shapes)."""

    mats: list
    R: np.ndarray = field(default_factory=lambda: np.eye(3))
    c: np.ndarray = field(default_factory=lambda: np.zeros(3))
    name: str = ""
    dynamic: bool = False

    def to_local(self, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, list]:
        """Camera centre [3] and ray directions [N, 3] in the local frame (directions as 3 arrays)."""
        R = self.R
        dl = [d[:, 0] * R[0, k] + d[:, 1] * R[1, k] + d[:, 2] * R[2, k] for k in range(3)]
        return (o - self.c) @ R, dl

    def bound(self) -> tuple[np.ndarray, float] | None:
        """World bounding sphere (centre, radius), or None for primitives that fill the view."""
        return None

    # subclasses: intersect(o, d) -> t [N] (inf on miss); surface(p_local) -> (n_local, uv, face)
    def surface_world(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pl = matmul3(p - self.c, self.R)
        n, uv, face = self.surface(pl)
        return matmul3(n, self.R.T), uv, face


def _slabs(o, dl, lo, hi):
    """Entry / exit ray parameters of rays (local dirs as 3 arrays) against a local AABB."""
    t_near = t_far = None
    for k in range(3):
        dk = dl[k]
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = 1.0 / np.where(np.abs(dk) < 1e-12, 1e-12, dk)
        t1 = (lo[k] - o[k]) * inv
        t2 = (hi[k] - o[k]) * inv
        tmin, tmax = np.minimum(t1, t2), np.maximum(t1, t2)
        t_near = tmin if t_near is None else np.maximum(t_near, tmin)
        t_far = tmax if t_far is None else np.minimum(t_far, tmax)
    return t_near, t_far


def _box_faces_uv(p: np.ndarray, half: np.ndarray, inside: bool):
    """Face index (axis*2 + (coordinate > 0)), outward normal and metric uv for points on a box."""
    rel = np.abs(p) / half[None]
    axis = np.argmax(rel, axis=1)
    sign = np.take_along_axis(p, axis[:, None], 1)[:, 0] > 0
    face = axis * 2 + sign
    n = np.zeros_like(p)
    n[np.arange(len(p)), axis] = np.where(sign, 1.0, -1.0)
    if inside:
        n = -n
    # uv: the two remaining axes, measured from the face corner
    a1 = np.where(axis == 0, 1, 0)
    a2 = np.where(axis == 2, 1, 2)
    idx = np.arange(len(p))
    u = p[idx, a1] + half[a1]
    v = p[idx, a2] + half[a2]
    # keep "up" (z) along v on vertical faces, flip v so that textures are upright
    v = np.where(axis != 2, 2 * half[a2] - v, v)
    return n, np.stack([u, v], 1), face


@dataclass
class Box(Primitive):
    half: np.ndarray = field(default_factory=lambda: np.ones(3))

    def intersect(self, o, d):
        ol, dl = self.to_local(o, d)
        t_near, t_far = _slabs(ol, dl, -self.half, self.half)
        hit = (t_near <= t_far) & (t_near > _EPS)
        return np.where(hit, t_near, np.inf)

    def surface(self, pl):
        return _box_faces_uv(pl, self.half, inside=False)

    def bound(self):
        return self.c, float(np.linalg.norm(self.half))


@dataclass
class Room(Primitive):
    """The inside of an axis-aligned box: floor (face 4), ceiling (5), walls (0-3)."""

    half: np.ndarray = field(default_factory=lambda: ROOM_HALF.copy())

    def intersect(self, o, d):
        ol, dl = self.to_local(o, d)
        _, t = _slabs(ol, dl, -self.half, self.half)
        return np.where(t > _EPS, t, np.inf)

    def surface(self, pl):
        n, uv, face = _box_faces_uv(pl, self.half, inside=True)
        return n, uv, face


@dataclass
class Sphere(Primitive):
    radius: float = 0.5

    def intersect(self, o, d):
        ol, dl = self.to_local(o, d)
        a = dl[0] * dl[0] + dl[1] * dl[1] + dl[2] * dl[2]
        b = dl[0] * ol[0] + dl[1] * ol[1] + dl[2] * ol[2]
        cc = float(ol @ ol) - self.radius**2
        disc = b * b - a * cc
        sq = np.sqrt(np.maximum(disc, 0))
        t0 = (-b - sq) / a
        t1 = (-b + sq) / a
        t = np.where(t0 > _EPS, t0, t1)
        return np.where((disc >= 0) & (t > _EPS), t, np.inf)

    def bound(self):
        return self.c, self.radius

    def surface(self, pl):
        n = pl / np.linalg.norm(pl, axis=1, keepdims=True)
        lon = np.arctan2(n[:, 1], n[:, 0]) + np.pi
        lat = np.arccos(np.clip(n[:, 2], -1, 1))
        uv = np.stack([lon * self.radius, lat * self.radius], 1)
        return n, uv, np.zeros(len(pl), np.int64)


@dataclass
class Cylinder(Primitive):
    """Capped cylinder along local z, centred at the local origin."""

    radius: float = 0.2
    half_height: float = 0.5

    def intersect(self, o, d):
        ol, dl = self.to_local(o, d)
        r2 = self.radius**2
        a = dl[0] ** 2 + dl[1] ** 2
        b = dl[0] * ol[0] + dl[1] * ol[1]
        cc = ol[0] ** 2 + ol[1] ** 2 - r2
        disc = b * b - a * cc
        sq = np.sqrt(np.maximum(disc, 0))
        with np.errstate(divide="ignore", invalid="ignore"):
            t0 = (-b - sq) / a
            zs = ol[2] + t0 * dl[2]
            side_ok = (disc >= 0) & (a > 1e-12) & (t0 > _EPS) & (np.abs(zs) <= self.half_height)
            t_side = np.where(side_ok, t0, np.inf)
            best = t_side
            for zc in (-self.half_height, self.half_height):
                tc = (zc - ol[2]) / np.where(np.abs(dl[2]) < 1e-12, 1e-12, dl[2])
                x = ol[0] + tc * dl[0]
                y = ol[1] + tc * dl[1]
                ok = (tc > _EPS) & (x * x + y * y <= r2)
                best = np.minimum(best, np.where(ok, tc, np.inf))
        return best

    def bound(self):
        return self.c, float(np.hypot(self.radius, self.half_height))

    def surface(self, pl):
        on_cap = np.abs(np.abs(pl[:, 2]) - self.half_height) < 1e-4 * max(1.0, self.half_height)
        rr = np.hypot(pl[:, 0], pl[:, 1])
        on_cap &= rr < self.radius * (1 - 1e-5)
        n = np.zeros_like(pl)
        n[:, :2] = pl[:, :2] / np.maximum(rr, 1e-9)[:, None]
        n[on_cap] = 0
        n[on_cap, 2] = np.sign(pl[on_cap, 2])
        ang = np.arctan2(pl[:, 1], pl[:, 0]) + np.pi
        uv_side = np.stack([ang * self.radius, self.half_height - pl[:, 2]], 1)
        uv_cap = pl[:, :2] + self.radius
        uv = np.where(on_cap[:, None], uv_cap, uv_side)
        return n, uv, on_cap.astype(np.int64)


@dataclass
class Scene:
    materials: list = field(default_factory=list)
    prims: list = field(default_factory=list)
    lights: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))  # point lights [L, 3]
    ambient: float = 0.35
    detail: Material | None = None  # tileable fine detail multiplied into every surface

    def add_material(self, kind: str, rng: np.random.Generator, size_m, density: float) -> int:
        w = max(int(np.ceil(size_m[0] * density)), 8)
        h = max(int(np.ceil(size_m[1] * density)), 8)
        img = tex.make_texture(kind, rng, h, w)
        self.materials.append(Material(tex.mip_pyramid(img), density))
        return len(self.materials) - 1


@dataclass
class MovingObject:
    """A rigid group of primitives with a world pose per frame (``poses`` [N, 4, 4])."""

    name: str
    prims: list  # primitives with poses relative to the object frame
    local_R: list
    local_c: list
    poses: np.ndarray

    def place(self, f: int) -> None:
        T = self.poses[f]
        for p, R, c in zip(self.prims, self.local_R, self.local_c):
            p.R = T[:3, :3] @ R
            p.c = T[:3, :3] @ c + T[:3, 3]


def _periodic_detail(rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """Tileable band-limited noise in about [-1, 1] (FFT-filtered white noise) [size, size]."""
    white = rng.standard_normal((size, size))
    f = np.fft.fftfreq(size)
    fr = np.sqrt(f[:, None] ** 2 + f[None] ** 2)
    filt = np.exp(-((fr - 0.12) ** 2) / (2 * 0.08**2))
    n = np.real(np.fft.ifft2(np.fft.fft2(white) * filt))
    return (n / (3 * n.std())).astype(np.float32)


def build_room(seed: int = 0, near_objects: bool = True) -> Scene:
    """A fresh copy of the room (textures are shared and cached per process; see ``_build_room``)."""
    base = _build_room(int(seed), bool(near_objects))
    return Scene(
        materials=list(base.materials),
        prims=[copy.copy(p) for p in base.prims],
        lights=base.lights.copy(),
        ambient=base.ambient,
        detail=base.detail,
    )


@functools.lru_cache(maxsize=1)  # textures take ~90 MB: keep only the last room
def _build_room(seed: int, near_objects: bool) -> Scene:
    """The furnished 8 x 6 x 2.8 m room shared by every sequence (textures depend on ``seed``).

    ``near_objects`` adds a standing lamp and a plant close to the camera path (depths down to
    about 0.5 m); the dynamic sequence leaves them out to keep the walkway of the moving
    objects clear.
    """
    rng = np.random.default_rng([seed, 7331])
    s = Scene()
    D = ROOM_TEXELS_PER_M
    hx, hy, hz = ROOM_HALF
    # room surfaces: faces 0/1 = x walls, 2/3 = y walls, 4 = floor, 5 = ceiling
    wall_x = [s.add_material(k, rng, (2 * hy, 2 * hz), D) for k in ("wallpaper", "plaster")]
    wall_y = [s.add_material(k, rng, (2 * hx, 2 * hz), D) for k in ("plaster", "wallpaper")]
    floor = s.add_material("planks", rng, (2 * hx, 2 * hy), D)
    ceil = s.add_material("tiles", rng, (2 * hx, 2 * hy), D)
    # posters, frames and a stone band painted into the walls (unique content everywhere)
    for m, length in ((wall_x[0], 2 * hy), (wall_x[1], 2 * hy), (wall_y[0], 2 * hx), (wall_y[1], 2 * hx)):
        img = s.materials[m].levels[0]
        h, w = img.shape[:2]
        band = tex.stone(rng, int(0.35 * D), w, cell_px=0.12 * D)
        img[h - band.shape[0] :, :] = band  # wainscot along the floor (v grows downwards)
        n_posters = int(length // 1.6)
        xs = np.linspace(0.4, length - 1.6, n_posters) + rng.uniform(-0.2, 0.2, n_posters)
        for x in xs:
            pw, ph = rng.uniform(0.5, 1.1), rng.uniform(0.4, 0.9)
            y = rng.uniform(0.35, 1.05)
            tex.poster_into(rng, img, int(y * D), int(x * D), int(ph * D), int(pw * D))
        s.materials[m] = Material(tex.mip_pyramid(img), D)
    room = Room(mats=[wall_x[0], wall_x[1], wall_y[0], wall_y[1], floor, ceil], c=ROOM_CENTER.copy(), name="room")
    s.prims.append(room)

    O = OBJECT_TEXELS_PER_M

    def box(kind, center, half, yaw=0.0, name=""):
        half = np.asarray(half, float)
        m = s.add_material(kind, rng, (2 * (half[0] + half[1]) + 0.1, 2 * max(half) + 0.1), O)
        s.prims.append(Box(mats=[m], half=half, R=rot_z(yaw), c=np.asarray(center, float), name=name))

    def sphere(kind, center, r, name=""):
        m = s.add_material(kind, rng, (2 * np.pi * r, np.pi * r), O)
        s.prims.append(Sphere(mats=[m], radius=r, c=np.asarray(center, float), name=name))

    def cyl(kind, center, r, h, name=""):
        m = s.add_material(kind, rng, (2 * np.pi * r + 2 * r, max(2 * h, 2 * r)), O)
        s.prims.append(Cylinder(mats=[m], radius=r, half_height=h / 2, c=np.asarray(center, float), name=name))

    # table with legs and items
    box("wood", (3.0, -1.2, 0.74), (0.4, 0.7, 0.025), name="table_top")
    for dx in (-0.34, 0.34):
        for dy in (-0.64, 0.64):
            box("wood", (3.0 + dx, -1.2 + dy, 0.36), (0.03, 0.03, 0.36), name="table_leg")
    sphere("fabric", (2.9, -1.45, 0.885), 0.12, name="ball_small")
    box("cardboard", (3.1, -0.85, 0.865), (0.15, 0.1, 0.1), yaw=0.3, name="parcel")
    cyl("tiles", (2.8, -0.8, 0.89), 0.07, 0.25, name="vase")
    # shelf against the -y wall, with books
    sx, sy = -1.2, -2.8
    for x in (sx - 0.8, sx + 0.8):
        box("wood", (x, sy, 0.9), (0.02, 0.2, 0.9), name="shelf_side")
    for z in (0.02, 0.6, 1.2, 1.78):
        box("wood", (sx, sy, z), (0.8, 0.2, 0.015), name="shelf_board")
    for level, z0 in enumerate((0.035, 0.615, 1.215)):
        x = sx - 0.75
        while x < sx + 0.6:
            w = rng.uniform(0.03, 0.09)
            hgt = rng.uniform(0.18, 0.4)
            kind = ("poster", "fabric", "cardboard")[int(rng.integers(0, 3))]
            box(kind, (x + w, sy + 0.02, z0 + hgt / 2), (w, rng.uniform(0.1, 0.16), hgt / 2), name="book")
            x += 2 * w + rng.uniform(0.0, 0.12)
    # crates in a corner
    box("wood", (-3.4, 2.4, 0.3), (0.3, 0.3, 0.3), name="crate")
    box("cardboard", (-3.35, 2.35, 0.85), (0.25, 0.25, 0.25), yaw=0.4, name="crate_top")
    box("cardboard", (-2.7, 2.6, 0.2), (0.3, 0.25, 0.2), yaw=-0.2, name="crate_low")
    # ball, pillar, plant pot, sofa, cabinet, floor lamp, a box in the corner
    sphere("tiles", (2.6, 2.2, 0.3), 0.3, name="ball")
    cyl("stone", (-2.95, -0.6, 1.4), 0.22, 2.8, name="pillar")
    cyl("stone", (0.6, 2.6, 0.3), 0.25, 0.6, name="pot")
    sphere("fabric", (0.6, 2.6, 0.85), 0.3, name="bush")
    box("fabric", (-0.9, 2.55, 0.22), (0.9, 0.4, 0.22), name="sofa_seat")
    box("fabric", (-0.9, 2.88, 0.55), (0.9, 0.1, 0.55), name="sofa_back")
    box("wood", (-3.72, 1.0, 0.5), (0.25, 0.6, 0.5), name="cabinet")
    cyl("plaster", (3.55, 1.3, 0.75), 0.025, 1.5, name="lamp_pole")
    sphere("poster", (3.55, 1.3, 1.6), 0.18, name="lamp_shade")
    box("cardboard", (3.4, -2.5, 0.4), (0.3, 0.3, 0.4), yaw=0.2, name="corner_box")
    if near_objects:
        cyl("plaster", (0.2, -1.65, 0.72), 0.03, 1.44, name="near_lamp_pole")
        sphere("poster", (0.2, -1.65, 1.6), 0.2, name="near_lamp_shade")
        cyl("tiles", (-0.4, 1.65, 0.6), 0.15, 1.2, name="near_column")
        sphere("fabric", (-0.4, 1.65, 1.45), 0.28, name="near_plant")
    s.lights = np.array([[1.5, 0.5, 2.7], [-2.0, -1.0, 2.7], [0.0, 2.0, 2.6]])
    s.detail = Material([lv[..., None] for lv in tex.mip_pyramid(_periodic_detail(rng))], 512.0)
    return s


def add_moving_objects(scene: Scene, rng: np.random.Generator, poses_per_object: dict) -> list[MovingObject]:
    """Add the dynamic objects (a walking figure, a rolling cart) with the given poses [N, 4, 4]."""
    objs = []
    O = OBJECT_TEXELS_PER_M
    for name, poses in poses_per_object.items():
        if name == "figure":
            shirt = scene.add_material("fabric", rng, (1.6, 1.4), O)
            skin = scene.add_material("plaster", rng, (1.0, 0.5), O)
            parts = [
                Cylinder(mats=[shirt], radius=0.2, half_height=0.62, name="figure_body", dynamic=True),
                Sphere(mats=[skin], radius=0.14, name="figure_head", dynamic=True),
                Box(mats=[shirt], half=np.array([0.08, 0.3, 0.06]), name="figure_shoulders", dynamic=True),
            ]
            cs = [np.array([0, 0, 0.64]), np.array([0, 0, 1.45]), np.array([0, 0, 1.2])]
        else:
            mat = scene.add_material("cardboard", rng, (2.6, 1.0), O)
            mat2 = scene.add_material("poster", rng, (1.0, 1.0), O)
            parts = [
                Box(mats=[mat], half=np.array([0.32, 0.28, 0.42]), name=f"{name}_box", dynamic=True),
                Box(mats=[mat2], half=np.array([0.2, 0.2, 0.12]), name=f"{name}_top", dynamic=True),
            ]
            cs = [np.array([0, 0, 0.44]), np.array([0, 0, 0.98])]
        obj = MovingObject(name, parts, [np.eye(3)] * len(parts), cs, np.asarray(poses, float))
        scene.prims.extend(parts)
        objs.append(obj)
    return objs
