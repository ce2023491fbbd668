"""GL side of the viewer: textures per keyframe, shader programs and draw calls (moderngl).

Pointmaps are drawn *attribute-less*: one draw of ``W*H`` vertices per keyframe, the vertex shader
derives the pixel from ``gl_VertexID`` and fetches the point, confidence and colour from textures,
so uploading a keyframe is three texture writes and drawing it is one call. Surfels go through a
geometry shader (oriented discs); point mode uses round screen-space points.

Texture life cycle: keyframe slot ``i`` is (re)uploaded only when ``keyframe_versions()[i]``
changed (its image only when the keyframe's ``frame_id`` changed too); slots past the end of the
version array are released. At most ``max_uploads`` keyframes are uploaded per frame; the rest
wait for the next frame (the viewer never stalls on a burst).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .math3d import frustum_corners, frustum_segments, rays_from_K, se3_matrix, sim3_matrix

SHADER_DIR = Path(__file__).parent / "shaders"
_DEFAULT_HW = (384, 512)  # frustum aspect for keyframes not uploaded yet
CURRENT_DEPTH_BIAS = 1e-3  # relative pull towards the eye: the current pointmap wins over a coinciding keyframe


def _shader(name: str, defines: tuple[str, ...] = ()) -> str:
    head = "#version 330\n" + "".join(f"#define {d}\n" for d in defines)
    return head + (SHADER_DIR / name).read_text()


def _mat(M: np.ndarray) -> bytes:
    """Row-major numpy 4x4 -> column-major float32 bytes for a GLSL mat4."""
    return np.ascontiguousarray(np.asarray(M, dtype=np.float32).T).tobytes()


def depth_colormap(n: int = 256) -> np.ndarray:
    """A perceptual-ish blue-green-yellow-red ramp for depth colouring: [n, 3] uint8."""
    t = np.array([0.0, 0.15, 0.35, 0.5, 0.65, 0.8, 1.0])
    rgb = np.array(
        [
            [0.19, 0.07, 0.23],
            [0.27, 0.40, 0.90],
            [0.10, 0.80, 0.90],
            [0.30, 0.95, 0.40],
            [0.85, 0.90, 0.20],
            [0.98, 0.55, 0.10],
            [0.55, 0.05, 0.02],
        ]
    )
    x = np.linspace(0, 1, n)
    out = np.stack([np.interp(x, t, rgb[:, c]) for c in range(3)], -1)
    return np.round(out * 255).astype(np.uint8)


def prepare_points(X: np.ndarray, K: np.ndarray | None) -> np.ndarray:
    """Pointmap [H, W, 3] as float32; with intrinsics (calibrated mode) the points are rebuilt as
    ``z * K^-1 [u, v, 1]`` so they lie exactly on the calibrated rays."""
    X = np.asarray(X, dtype=np.float32)
    if K is not None:
        H, W = X.shape[:2]
        X = (rays_from_K(K, H, W) * X[..., 2:3]).astype(np.float32)
    return np.ascontiguousarray(X)


@dataclass
class UploadStats:
    keyframe_uploads: int = 0  # pointmap + confidence uploads of keyframes
    rgb_uploads: int = 0  # keyframe image uploads
    current_uploads: int = 0  # current-frame uploads
    released: int = 0  # keyframe slots released


class _FrameTextures:
    """Textures of one pointmap (keyframe slot or current frame)."""

    def __init__(self, ctx, H: int, W: int):
        import moderngl

        self.H, self.W = H, W
        self.X = ctx.texture((W, H), 3, dtype="f4")
        self.C = ctx.texture((W, H), 1, dtype="f4")
        self.rgb = ctx.texture((W, H), 3, dtype="f1")
        for t in (self.X, self.C, self.rgb):
            t.filter = (moderngl.NEAREST, moderngl.NEAREST)
        self.frame_id: int | None = None
        self.version: int | None = None
        self.K: np.ndarray | None = None

    def write(self, X, C, rgb, K, frame_id, version, stats: UploadStats | None = None, write_rgb=None) -> bool:
        """Upload; returns True when the image was uploaded too."""
        self.X.write(prepare_points(X, K).tobytes())
        self.C.write(np.ascontiguousarray(np.asarray(C, dtype=np.float32).reshape(self.H, self.W)).tobytes())
        if write_rgb is None:
            write_rgb = frame_id != self.frame_id
        if write_rgb:
            self.rgb.write(np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8)[..., :3]).tobytes())
        self.frame_id, self.version, self.K = frame_id, version, None if K is None else np.asarray(K)
        return bool(write_rgb)

    def release(self):
        for t in (self.X, self.C, self.rgb):
            t.release()


class Renderer:
    """Owns every GL object of the 3D view and draws one frame into the bound framebuffer."""

    def __init__(self, ctx):
        import moderngl

        self.ctx = ctx
        self._mgl = moderngl
        self.prog_points = ctx.program(
            vertex_shader=_shader("pointmap.vert"), fragment_shader=_shader("pointmap.frag")
        )
        self.prog_surfels = ctx.program(
            vertex_shader=_shader("pointmap.vert", ("SURFEL",)),
            geometry_shader=_shader("surfel.geom"),
            fragment_shader=_shader("pointmap.frag", ("SURFEL",)),
        )
        self.prog_lines = ctx.program(
            vertex_shader=_shader("lines.vert"),
            geometry_shader=_shader("lines.geom"),
            fragment_shader=_shader("lines.frag"),
        )
        for p in (self.prog_points, self.prog_surfels):
            for unit, name in enumerate(("tex_X", "tex_C", "tex_rgb", "tex_mask", "tex_cmap")):
                if name in p:
                    p[name].value = unit
        self.vao_points = ctx.vertex_array(self.prog_points, [])
        self.vao_surfels = ctx.vertex_array(self.prog_surfels, [])
        self._line_capacity = 4096  # vertices
        self.line_vbo = ctx.buffer(reserve=self._line_capacity * 24, dynamic=True)
        self.vao_lines = ctx.vertex_array(self.prog_lines, [(self.line_vbo, "3f 3f", "in_pos", "in_color")])
        self.cmap = ctx.texture((256, 1), 3, depth_colormap().tobytes(), dtype="f1")
        self.no_mask = ctx.texture((1, 1), 1, b"\x00", dtype="f1")
        self.no_mask.filter = (moderngl.NEAREST, moderngl.NEAREST)

        self.keyframes: dict[int, _FrameTextures] = {}
        self.poses = np.zeros((0, 8), np.float32)  # [n_kf, 8]
        self.kf_shapes: dict[int, tuple[int, int]] = {}
        self.current: _FrameTextures | None = None
        self.current_pose: np.ndarray | None = None  # [8]
        self.current_mask: object | None = None  # texture or None
        self.current_depth_range = (0.0, 1.0)
        self._current_version = None
        self._has_mask = False
        self.edges = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, bool))
        self.stats = UploadStats()
        self._corners = None  # cached unit-depth frustum corners of the keyframes
        self.last_segment_count = 0

    # ---- synchronisation with the source ----------------------------------------------------------
    def sync_keyframes(self, versions: np.ndarray, read_keyframe, max_uploads: int,
                       on_upload=None) -> tuple[bool, list[int]]:
        """Upload changed keyframes (at most ``max_uploads``, 0 = no limit) and release vanished ones.

        ``read_keyframe(i)`` returns a KeyframeData or None; ``on_upload(i, kf)`` is called after
        each upload. Returns (anything changed, indices uploaded).
        """
        n = int(len(versions))
        changed = False
        for i in [k for k in self.keyframes if k >= n]:
            self._corners = None
            self.keyframes.pop(i).release()
            self.kf_shapes.pop(i, None)
            self.stats.released += 1
            changed = True
        cached = np.array([self.keyframes[i].version if i in self.keyframes else -(2**62) for i in range(n)],
                          dtype=np.int64)
        todo = np.nonzero(cached != np.asarray(versions, dtype=np.int64))[0]
        if max_uploads > 0:
            todo = todo[:max_uploads]
        uploaded = []
        for i in todo.tolist():
            kf = read_keyframe(i)
            if kf is None:
                continue
            H, W = np.asarray(kf.X).shape[:2]
            tex = self.keyframes.get(i)
            if tex is not None and (tex.H, tex.W) != (H, W):
                tex.release()
                tex = None
            if tex is None:
                tex = self.keyframes[i] = _FrameTextures(self.ctx, H, W)
            if tex.write(kf.X, kf.C, kf.rgb, kf.K, int(kf.frame_id), int(versions[i])):
                self.stats.rgb_uploads += 1
            self.stats.keyframe_uploads += 1
            self.kf_shapes[i] = (H, W)
            self._corners = None
            uploaded.append(i)
            if on_upload is not None:
                on_upload(i, kf)
            changed = True
        return changed, uploaded

    def set_current(self, cur, version: int) -> None:
        """Upload the current frame (CurrentData or None)."""
        self._current_version = version
        if cur is None:
            self.current_pose = None
            return
        X = np.asarray(cur.X)
        H, W = X.shape[:2]
        if self.current is not None and (self.current.H, self.current.W) != (H, W):
            self.current.release()
            self.current = None
            if self.current_mask is not None:
                self.current_mask.release()
                self.current_mask = None
        if self.current is None:
            self.current = _FrameTextures(self.ctx, H, W)
        self.current.write(cur.X, cur.C, cur.rgb, cur.K, int(cur.frame_id), version, write_rgb=True)
        z = X[..., 2][np.isfinite(X[..., 2]) & (X[..., 2] > 0)]
        if z.size:
            lo, hi = np.percentile(z, [2, 98])
            self.current_depth_range = (float(lo), float(max(hi, lo + 1e-6)))
        if cur.dynamic_mask is not None:
            if self.current_mask is None:
                self.current_mask = self.ctx.texture((W, H), 1, dtype="f1")
                self.current_mask.filter = (self._mgl.NEAREST, self._mgl.NEAREST)
            m = (np.asarray(cur.dynamic_mask).reshape(H, W) > 0).astype(np.uint8) * 255
            self.current_mask.write(np.ascontiguousarray(m).tobytes())
            self._has_mask = True
        else:
            self._has_mask = False
        self.current_pose = np.asarray(cur.T_WC, dtype=np.float32).reshape(8)
        self.stats.current_uploads += 1

    @property
    def current_version(self):
        return self._current_version

    # ---- drawing ---------------------------------------------------------------------------------
    def _program(self, opts):
        if opts.point_mode == "surfel":
            return self.prog_surfels, self.vao_surfels
        return self.prog_points, self.vao_points

    def _setup_pointmaps(self, proj: np.ndarray, opts, *, color_mode: int = 0, mask=None,
                         depth_range=(0.0, 1.0), depth_bias: float = 0.0):
        """Uniforms shared by every pointmap of one pass; returns (program, vao)."""
        prog, vao = self._program(opts)
        prog["stride"].value = int(opts.point_stride)
        prog["border"].value = int(opts.border)
        prog["conf_threshold"].value = float(opts.conf_threshold)
        prog["m_proj"].write(_mat(proj))
        prog["color_mode"].value = int(color_mode)
        prog["depth_range"].value = tuple(float(x) for x in depth_range)
        prog["use_mask"].value = int(mask is not None)
        prog["mask_color"].value = tuple(opts.mask_color)
        prog["lighting"].value = int(bool(opts.lighting))
        prog["depth_bias"].value = float(depth_bias)
        if "point_size" in prog:
            prog["point_size"].value = float(opts.point_size)
        if "surfel_scale" in prog:
            prog["surfel_scale"].value = float(opts.surfel_scale)
        (mask if mask is not None else self.no_mask).use(3)
        self.cmap.use(4)
        return prog, vao

    def _draw_pointmap(self, prog, vao, tex: _FrameTextures, modelview: np.ndarray, stride: int) -> None:
        """One attribute-less draw of a pointmap with model-view matrix ``modelview`` [4, 4]."""
        prog["size"].value = (tex.W, tex.H)
        prog["m_modelview"].write(_mat(modelview))
        tex.X.use(0)
        tex.C.use(1)
        tex.rgb.use(2)
        cols = (tex.W + stride - 1) // stride
        rows = (tex.H + stride - 1) // stride
        vao.render(self._mgl.POINTS, vertices=cols * rows)

    def _keyframe_corners(self, n: int) -> np.ndarray:
        """Frustum corners at unit depth of keyframes 0..n-1 [n, 4, 3], rebuilt only after uploads."""
        if self._corners is None or len(self._corners) != n:
            self._corners = np.stack([
                frustum_corners(*self.kf_shapes.get(i, _DEFAULT_HW), self.keyframes[i].K if i in self.keyframes
                                else None, 1.0)
                for i in range(n)
            ])
        return self._corners

    def line_segments(self, opts) -> tuple[np.ndarray, np.ndarray]:
        """All line geometry of the frame: segments [N, 2, 3] (world) and colours [N, 3]."""
        segs, cols = [], []

        def add(s, c):
            if len(s):
                segs.append(np.asarray(s, dtype=np.float64).reshape(-1, 2, 3))
                cols.append(np.broadcast_to(np.asarray(c, dtype=np.float64), (segs[-1].shape[0], 3)))

        n = len(self.poses)
        centres = self.poses[:, :3].astype(np.float64)
        if opts.show_axes:
            L = 10 * opts.frustum_scale
            add([[0, 0, 0, L, 0, 0]], (1, 0, 0))
            add([[0, 0, 0, 0, L, 0]], (0, 1, 0))
            add([[0, 0, 0, 0, 0, L]], (0, 0, 1))
        if opts.show_keyframe_frustums and n:
            corners = self._keyframe_corners(n) * opts.frustum_scale
            add(frustum_segments(se3_matrix(self.poses), corners), opts.keyframe_frustum_color)
        if opts.show_edges and n:
            ii, jj, loop = self.edges
            ok = (ii >= 0) & (jj >= 0) & (ii < n) & (jj < n)
            ii, jj, loop = ii[ok], jj[ok], loop[ok]
            e = np.stack([centres[ii], centres[jj]], 1)
            add(e[~loop], opts.edge_color)
            add(e[loop], opts.loop_edge_color)
        if opts.show_trajectory:
            pts = centres
            if self.current_pose is not None:
                pts = np.concatenate([pts, self.current_pose[None, :3].astype(np.float64)])
            if len(pts) >= 2:
                add(np.stack([pts[:-1], pts[1:]], 1), opts.trajectory_color)
        if opts.show_current_frustum and self.current_pose is not None:
            H, W = (self.current.H, self.current.W) if self.current is not None else _DEFAULT_HW
            K = self.current.K if self.current is not None else None
            add(frustum_segments(se3_matrix(self.current_pose[None]), frustum_corners(H, W, K, opts.frustum_scale)),
                opts.current_frustum_color)
        if not segs:
            return np.zeros((0, 2, 3)), np.zeros((0, 3))
        return np.concatenate(segs), np.concatenate(cols)

    def _draw_lines(self, view, proj, size, opts) -> None:
        segs, cols = self.line_segments(opts)
        self.last_segment_count = len(segs)
        if not len(segs):
            return
        verts = np.concatenate([segs.reshape(-1, 3), np.repeat(cols, 2, axis=0)], axis=1).astype(np.float32)
        if verts.shape[0] > self._line_capacity:
            while self._line_capacity < verts.shape[0]:
                self._line_capacity *= 2
            self.line_vbo.orphan(self._line_capacity * 24)
        self.line_vbo.write(verts.tobytes())
        p = self.prog_lines
        p["m_view"].write(_mat(view))
        p["m_proj"].write(_mat(proj))
        p["viewport"].value = (float(size[0]), float(size[1]))
        p["line_width"].value = float(opts.line_width)
        p["near"].value = float(opts.near)
        self.vao_lines.render(self._mgl.LINES, vertices=verts.shape[0])

    def draw(self, view: np.ndarray, proj: np.ndarray, size: tuple[int, int], opts) -> None:
        """Draw the scene into the bound framebuffer (already cleared) of ``size`` = (W, H) pixels."""
        ctx = self.ctx
        ctx.enable_only(self._mgl.DEPTH_TEST | self._mgl.PROGRAM_POINT_SIZE)
        stride = int(opts.point_stride)
        n = len(self.poses)
        if opts.show_keyframe_points and n and self.keyframes:
            prog, vao = self._setup_pointmaps(proj, opts)
            modelviews = view @ sim3_matrix(self.poses)  # [n, 4, 4], Sim(3) scale included
            for i, tex in self.keyframes.items():
                if i < n:
                    self._draw_pointmap(prog, vao, tex, modelviews[i], stride)
        if opts.show_current_points and self.current is not None and self.current_pose is not None:
            prog, vao = self._setup_pointmaps(
                proj, opts,
                color_mode=1 if opts.current_points_color == "depth" else 0,
                mask=self.current_mask if (opts.show_dynamic_mask and self._has_mask) else None,
                depth_range=self.current_depth_range, depth_bias=CURRENT_DEPTH_BIAS,
            )
            self._draw_pointmap(prog, vao, self.current, view @ sim3_matrix(self.current_pose), stride)
        self._draw_lines(view, proj, size, opts)

    def release(self) -> None:
        for t in self.keyframes.values():
            t.release()
        self.keyframes.clear()
        if self.current is not None:
            self.current.release()
        if self.current_mask is not None:
            self.current_mask.release()
        for o in (self.vao_points, self.vao_surfels, self.vao_lines, self.line_vbo, self.cmap, self.no_mask,
                  self.prog_points, self.prog_surfels, self.prog_lines):
            o.release()
