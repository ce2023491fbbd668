"""Kernel interface: matching, global Gauss-Newton and tracking solvers.

Every op validates its arguments (a :class:`KernelArgumentError` naming the argument), makes the
inputs contiguous and runs either the CUDA extension (tensors on a GPU and the extension loads,
see :mod:`mast3r_slam.ops._backend`) or the PyTorch implementation of the same name with a
leading underscore (``_torch_matching``, ``_torch_gn``, ``_torch_tracking``), on any device.

``MAST3R_SLAM_OPS`` selects the path: ``auto`` (default), ``torch`` (always PyTorch) or ``cuda``
(CUDA tensors must use the extension: an error if it does not load; CPU tensors still use
PyTorch). The argument lists of the first four ops are those of the original kernels (see
tests/fixtures/kernels and docs/KERNELS.md); shapes are in the signatures' comments.

Conventions: poses ``[tx, ty, tz, qx, qy, qz, qw, s]`` (camera-to-world Sim(3)); pixel (u, v) of
an H x W image has linear index ``u + W v``; tangent vectors ``[tau, omega, sigma]``; updates are
left retractions ``Exp(xi) T``.
"""
from __future__ import annotations

import os

import torch

from ..errors import Mast3rSlamError
from . import _backend
from ._torch_gn import _gauss_newton_calib, _gauss_newton_points, _gauss_newton_rays
from ._torch_matching import _iter_proj, _refine_matches
from ._torch_tracking import TrackResult, _track_calib, _track_rays

Tensor = torch.Tensor

__all__ = [
    "iter_proj",
    "refine_matches",
    "gauss_newton_rays",
    "gauss_newton_calib",
    "gauss_newton_points",
    "track_rays",
    "track_calib",
    "calib_measurements",
    "TrackResult",
    "KernelArgumentError",
    "backend_for",
    "extension_status",
]


class KernelArgumentError(Mast3rSlamError, ValueError):
    """A kernel was called with a tensor of the wrong shape, dtype or device, or a bad option."""


extension_status = _backend.extension_status

_F32 = (torch.float32,)
_F32_F64 = (torch.float32, torch.float64)


# ----------------------------------------------------------------------------------------------
# validation and dispatch
# ----------------------------------------------------------------------------------------------
def _check(op: str, env: dict, name: str, t, dims: str, dtypes) -> Tensor:
    """Check dtype and shape against ``dims`` ("B,HW,3": symbols bind on first use) and the device
    against the first tensor checked; returns ``t.contiguous()``."""
    want = "/".join(str(d).replace("torch.", "") for d in dtypes)
    if not isinstance(t, torch.Tensor):
        raise KernelArgumentError(f"{op}: {name} must be a {want} tensor [{dims}], got {type(t).__name__}")
    spec = [s.strip() for s in dims.split(",")] if dims else []
    shape = list(t.shape)
    if t.dtype not in dtypes or t.dim() != len(spec):
        raise KernelArgumentError(f"{op}: {name} must be {want} [{dims}], got {str(t.dtype).replace('torch.', '')} {shape}")
    for sym, size in zip(spec, shape):
        expected = int(sym) if sym.isdigit() else env.get(sym)
        if expected is None:
            env[sym] = size
        elif expected != size:
            bound = ", ".join(f"{k} = {v}" for k, v in env.items() if not k.startswith("_") and k in spec)
            raise KernelArgumentError(f"{op}: {name} must be [{dims}] with {bound}, got {shape}")
    dev = env.setdefault("_device", t.device)
    if t.device != dev:
        raise KernelArgumentError(f"{op}: {name} is on {t.device} but the other tensors are on {dev}")
    return t.contiguous()


def _check_int(op: str, name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise KernelArgumentError(f"{op}: {name} must be an integer >= {minimum}, got {value!r}")
    return value


def _check_pos(op: str, name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise KernelArgumentError(f"{op}: {name} must be a positive number, got {value!r}")
    return float(value)


def _mode() -> str:
    mode = os.environ.get("MAST3R_SLAM_OPS", "auto").strip().lower() or "auto"
    if mode not in ("auto", "torch", "cuda"):
        raise KernelArgumentError(f"environment variable MAST3R_SLAM_OPS must be auto, torch or cuda, got {mode!r}")
    return mode


def _extension(op: str, device: torch.device, cuda_ok: bool = True):
    """The CUDA extension to run ``op`` on ``device``, or None for the PyTorch path."""
    mode = _mode()
    if device.type != "cuda" or mode == "torch":
        return None
    ext = _backend.get_extension() if cuda_ok else None
    if ext is None and mode == "cuda":
        why = _backend.extension_status() if cuda_ok else "this op has no CUDA kernel for these dtypes"
        raise Mast3rSlamError(f"{op}: MAST3R_SLAM_OPS=cuda but the CUDA kernels cannot be used ({why})")
    return ext


def backend_for(device: torch.device | str) -> str:
    """'cuda' or 'torch': the path an op called with float32 tensors on ``device`` takes now."""
    return "cuda" if _extension("backend_for", torch.device(device)) is not None else "torch"


# ----------------------------------------------------------------------------------------------
# matching
# ----------------------------------------------------------------------------------------------
def iter_proj(
    rays_with_grad: Tensor,  # [B, H, W, 9] float32: unit rays of image 1 and their d/du, d/dv
    target_rays: Tensor,  # [B, N, 3] float32: unit rays to find in image 1 (N = HW: one per pixel of image 2)
    p_init: Tensor,  # [B, N, 2] float32: initial pixel (u, v) in image 1
    max_iter: int,
    lambda_init: float,
    cost_thresh: float,
) -> tuple[Tensor, Tensor]:
    """Iterative projective matching: per query, ``max_iter`` Levenberg-Marquardt steps on the
    bilinearly interpolated ray image (pixels clamped to [1, W-2] x [1, H-2]).

    Returns (p [B, N, 2] float32 pixel positions, converged [B, N] bool: the cost of the last
    iteration's kept position is below ``cost_thresh``).
    """
    op = "iter_proj"
    env: dict = {}
    rays_with_grad = _check(op, env, "rays_with_grad", rays_with_grad, "B,H,W,9", _F32)
    target_rays = _check(op, env, "target_rays", target_rays, "B,N,3", _F32)
    p_init = _check(op, env, "p_init", p_init, "B,N,2", _F32)
    if env["H"] < 3 or env["W"] < 3:
        raise KernelArgumentError(f"{op}: the image must be at least 3 x 3 pixels, got {env['H']} x {env['W']}")
    _check_int(op, "max_iter", max_iter, 0)
    ext = _extension(op, rays_with_grad.device)
    if ext is not None:
        p, conv = ext.iter_proj(rays_with_grad, target_rays, p_init, max_iter, float(lambda_init), float(cost_thresh))
        return p, conv
    return _iter_proj(rays_with_grad, target_rays, p_init, max_iter, float(lambda_init), float(cost_thresh))


def refine_matches(
    D11: Tensor,  # [B, H, W, F] float16/float32 descriptors of image 1
    D21: Tensor,  # [B, N, F] same dtype: descriptors of the queries (N = HW: image 2's pixels)
    p1: Tensor,  # [B, N, 2] int64: current match (u, v) in image 1 (inside the image)
    radius: int,
    dilation_max: int,
) -> Tensor:
    """Descriptor refinement in dilated (2 radius + 1)^2 windows, dilation ``dilation_max`` .. 1.

    Returns p1_new [B, N, 2] int64. float16 descriptors are dotted with float16 rounding as the
    original (exactly on the CUDA kernel and on the CPU; approximately in the PyTorch path on a
    GPU); see :func:`mast3r_slam.ops._torch_matching._refine_matches`.
    """
    op = "refine_matches"
    env: dict = {}
    D11 = _check(op, env, "D11", D11, "B,H,W,F", (torch.float16, torch.float32))
    D21 = _check(op, env, "D21", D21, "B,N,F", (D11.dtype,))
    p1 = _check(op, env, "p1", p1, "B,N,2", (torch.int64,))
    _check_int(op, "radius", radius, 0)
    _check_int(op, "dilation_max", dilation_max, 1)
    ext = _extension(op, D11.device)
    if ext is not None:
        return ext.refine_matches(D11, D21, p1, radius, dilation_max)
    return _refine_matches(D11, D21, p1, radius, dilation_max)


# ----------------------------------------------------------------------------------------------
# global Gauss-Newton
# ----------------------------------------------------------------------------------------------
def _check_graph(op: str, Twc, Xs, Cs, ii, jj, idx_ii2jj, valid_match, Q, max_iter, delta_thresh):
    env: dict = {}
    Twc_c = _check(op, env, "Twc", Twc, "n,8", _F32)
    Xs = _check(op, env, "Xs", Xs, "n,HW,3", _F32)
    Cs = _check(op, env, "Cs", Cs, "n,HW,1", _F32)
    ii = _check(op, env, "ii", ii, "E", (torch.int64,))
    jj = _check(op, env, "jj", jj, "E", (torch.int64,))
    idx_ii2jj = _check(op, env, "idx_ii2jj", idx_ii2jj, "E,HW", (torch.int64,))
    valid_match = _check(op, env, "valid_match", valid_match, "E,HW,1", (torch.bool,))
    Q = _check(op, env, "Q", Q, "E,HW,1", _F32)
    _check_int(op, "max_iter", max_iter, 0)
    if env["E"] > 0:
        n_unique = int(torch.unique(torch.cat([ii, jj])).numel())  # one sync per call, not per iteration
        if n_unique != env["n"]:
            raise KernelArgumentError(
                f"{op}: Twc, Xs and Cs must have one row per distinct keyframe id of ii and jj ({n_unique}), got {env['n']}"
            )
    return Twc_c, Xs, Cs, ii, jj, idx_ii2jj, valid_match, Q


def _check_subpixel(op: str, p_ii2jj, idx_ii2jj: Tensor, HW: int, width, height=None):
    """Validate the optional sub-pixel matches [E, HW, 2] float32 and the image width (needed to
    interpolate; ``height`` = HW / width). Returns (p or None, width or None)."""
    if p_ii2jj is None:
        return None, width
    env = {"E": idx_ii2jj.shape[0], "HW": HW, "_device": idx_ii2jj.device}
    p = _check(op, env, "p_ii2jj", p_ii2jj, "E,HW,2", _F32)
    if isinstance(width, bool) or not isinstance(width, int) or width < 2 or HW % width != 0 or HW // width < 2:
        raise KernelArgumentError(
            f"{op}: width must be an integer >= 2 dividing HW = {HW} (with HW / width >= 2) when p_ii2jj is given, got {width!r}"
        )
    return p, width


def _run_gn(op: str, Twc: Tensor, Twc_c: Tensor, E: int, torch_fn, args: tuple, n_fixed: int = 1) -> Tensor:
    n = Twc.shape[0]
    _check_int(op, "n_fixed", n_fixed, 1)
    if n <= n_fixed or E == 0:
        return torch.zeros(max(n - n_fixed, 0), 7, dtype=Twc.dtype, device=Twc.device)
    # the CUDA kernel fixes exactly one pose; more fixed poses (windowed solves) take the PyTorch
    # path, which runs on the same device without host synchronisation
    ext = _extension(op, Twc.device) if n_fixed == 1 else None
    if ext is not None:
        dx = getattr(ext, op)(Twc_c, *args)
    else:
        dx = torch_fn(Twc_c, *args, n_fixed=n_fixed) if n_fixed != 1 else torch_fn(Twc_c, *args)
    if Twc_c.data_ptr() != Twc.data_ptr():
        Twc.copy_(Twc_c)
    return dx


def gauss_newton_rays(
    Twc: Tensor,  # [n, 8] float32 camera-to-world poses, updated IN PLACE
    Xs: Tensor,  # [n, HW, 3] float32 canonical pointmaps
    Cs: Tensor,  # [n, HW, 1] float32 average confidences
    ii: Tensor,  # [E] int64 keyframe ids (measurement side)
    jj: Tensor,  # [E] int64 keyframe ids (prediction side)
    idx_ii2jj: Tensor,  # [E, HW] int64: pixel of ii[e] matched to pixel k of jj[e]
    valid_match: Tensor,  # [E, HW, 1] bool (per pixel of jj[e])
    Q: Tensor,  # [E, HW, 1] float32 match quality (per pixel of jj[e])
    sigma_ray: float,
    sigma_dist: float,
    C_thresh: float,
    Q_thresh: float,
    max_iter: int,
    delta_thresh: float,
    huber: float = 1.345,
    p_ii2jj: Tensor | None = None,  # [E, HW, 2] float32: sub-pixel (u, v) in ii[e] matched to pixel k of jj[e]
    width: int | None = None,  # image width (required with p_ii2jj)
    n_fixed: int = 1,  # ours: the first n_fixed rows are held fixed (windowed solves); 1 as the original
) -> Tensor:
    """Global Sim(3) pose-graph Gauss-Newton with ray + distance residuals (spec 5.3-5.5).

    Rows of Twc/Xs/Cs are ordered by sorted unique keyframe id of ii and jj; the first (lowest id)
    pose is fixed. Stops after the iteration whose step norm is below ``delta_thresh``. Returns
    the last step dx [n-1, 7] ([tau, omega, sigma] per non-fixed pose).

    With ``p_ii2jj`` the measured point of pixel k of jj[e] is ``Xs[ii[e]]`` interpolated
    bilinearly at that sub-pixel position (image ``width`` x ``HW / width``) instead of
    ``Xs[ii[e]][idx_ii2jj[e, k]]``; ``idx_ii2jj`` still selects the confidence ``Cs[ii[e]]``
    tested against ``C_thresh``. Without it the results are those of the original.
    """
    op = "gauss_newton_rays"
    Twc_c, Xs, Cs, ii, jj, idx, vm, Q = _check_graph(op, Twc, Xs, Cs, ii, jj, idx_ii2jj, valid_match, Q, max_iter, delta_thresh)
    for name, v in (("sigma_ray", sigma_ray), ("sigma_dist", sigma_dist), ("huber", huber)):
        _check_pos(op, name, v)
    p, width = _check_subpixel(op, p_ii2jj, idx, Xs.shape[1], width)
    args = (Xs, Cs, ii, jj, idx, vm, Q, float(sigma_ray), float(sigma_dist), float(C_thresh), float(Q_thresh), max_iter,
            float(delta_thresh), float(huber), p, width)
    return _run_gn(op, Twc, Twc_c, ii.shape[0], _gauss_newton_rays, args, n_fixed)


def gauss_newton_calib(
    Twc: Tensor,  # [n, 8] float32, updated IN PLACE
    Xs: Tensor,  # [n, HW, 3] float32 pointmaps constrained to the pixel rays of K
    Cs: Tensor,  # [n, HW, 1] float32
    K: Tensor,  # [3, 3] float32 intrinsics at network resolution
    ii: Tensor,  # [E] int64
    jj: Tensor,  # [E] int64
    idx_ii2jj: Tensor,  # [E, HW] int64
    valid_match: Tensor,  # [E, HW, 1] bool
    Q: Tensor,  # [E, HW, 1] float32
    height: int,
    width: int,
    pixel_border: int,
    z_eps: float,
    sigma_pixel: float,
    sigma_depth: float,
    C_thresh: float,
    Q_thresh: float,
    max_iter: int,
    delta_thresh: float,
    huber: float = 1.345,
    p_ii2jj: Tensor | None = None,  # [E, HW, 2] float32 sub-pixel matches (u, v) in ii[e]
    n_fixed: int = 1,  # ours: the first n_fixed rows are held fixed (windowed solves)
) -> Tensor:
    """Global Sim(3) Gauss-Newton with pixel + log-depth residuals (calibrated). Same conventions
    as :func:`gauss_newton_rays`; returns the last step dx [n-1, 7]. With ``p_ii2jj`` the
    measured pixel is the sub-pixel position itself and the measured log depth that of
    ``Xs[ii[e]]`` interpolated there (validity and confidence still from ``idx_ii2jj``)."""
    op = "gauss_newton_calib"
    Twc_c, Xs, Cs, ii, jj, idx, vm, Q = _check_graph(op, Twc, Xs, Cs, ii, jj, idx_ii2jj, valid_match, Q, max_iter, delta_thresh)
    K = _check(op, {"_device": Twc.device}, "K", K, "3,3", _F32)
    _check_int(op, "height", height, 1)
    _check_int(op, "width", width, 1)
    if height * width != Xs.shape[1]:
        raise KernelArgumentError(f"{op}: height * width must equal HW = {Xs.shape[1]}, got {height} * {width}")
    if isinstance(pixel_border, bool) or not isinstance(pixel_border, int):
        raise KernelArgumentError(f"{op}: pixel_border must be an integer, got {pixel_border!r}")
    for name, v in (("sigma_pixel", sigma_pixel), ("sigma_depth", sigma_depth), ("huber", huber)):
        _check_pos(op, name, v)
    p, _ = _check_subpixel(op, p_ii2jj, idx, Xs.shape[1], width)
    args = (Xs, Cs, K, ii, jj, idx, vm, Q, height, width, pixel_border, float(z_eps), float(sigma_pixel), float(sigma_depth),
            float(C_thresh), float(Q_thresh), max_iter, float(delta_thresh), float(huber), p)
    return _run_gn(op, Twc, Twc_c, ii.shape[0], _gauss_newton_calib, args, n_fixed)


def gauss_newton_points(
    Twc: Tensor,  # [n, 8] float32, updated IN PLACE
    Xs: Tensor,  # [n, HW, 3] float32
    Cs: Tensor,  # [n, HW, 1] float32
    ii: Tensor,  # [E] int64
    jj: Tensor,  # [E] int64
    idx_ii2jj: Tensor,  # [E, HW] int64
    valid_match: Tensor,  # [E, HW, 1] bool
    Q: Tensor,  # [E, HW, 1] float32
    sigma_point: float,
    C_thresh: float,
    Q_thresh: float,
    max_iter: int,
    delta_thresh: float,
    huber: float = 1.345,
    p_ii2jj: Tensor | None = None,  # [E, HW, 2] float32 sub-pixel matches (u, v) in ii[e]
    width: int | None = None,  # image width (required with p_ii2jj)
) -> Tensor:
    """Global Sim(3) Gauss-Newton with 3D point residuals (exported by the original, unused by the
    system). Same conventions (and ``p_ii2jj``) as :func:`gauss_newton_rays`; returns the last
    step dx [n-1, 7]."""
    op = "gauss_newton_points"
    Twc_c, Xs, Cs, ii, jj, idx, vm, Q = _check_graph(op, Twc, Xs, Cs, ii, jj, idx_ii2jj, valid_match, Q, max_iter, delta_thresh)
    for name, v in (("sigma_point", sigma_point), ("huber", huber)):
        _check_pos(op, name, v)
    p, width = _check_subpixel(op, p_ii2jj, idx, Xs.shape[1], width)
    args = (Xs, Cs, ii, jj, idx, vm, Q, float(sigma_point), float(C_thresh), float(Q_thresh), max_iter, float(delta_thresh),
            float(huber), p, width)
    return _run_gn(op, Twc, Twc_c, ii.shape[0], _gauss_newton_points, args)


# ----------------------------------------------------------------------------------------------
# tracking
# ----------------------------------------------------------------------------------------------
def _check_track_common(op, env, T_CkCf, X_f, sqrt_w, huber, max_iters, rel_error, delta_norm):
    if not isinstance(T_CkCf, torch.Tensor) or T_CkCf.numel() != 8 or T_CkCf.shape[-1] != 8 or T_CkCf.dim() > 2:
        got = list(T_CkCf.shape) if isinstance(T_CkCf, torch.Tensor) else type(T_CkCf).__name__
        raise KernelArgumentError(f"{op}: T_CkCf must be a pose [8] or [1, 8], got {got}")
    T = _check(op, env, "T_CkCf", T_CkCf.reshape(8), "8", _F32_F64)
    X_f = _check(op, env, "X_f", X_f, "HW,3", (T.dtype,))
    sqrt_w = _check(op, env, "sqrt_w", sqrt_w, "HW,1", (T.dtype,))
    _check_pos(op, "huber", huber)
    _check_int(op, "max_iters", max_iters, 0)
    return T, X_f, sqrt_w


def track_rays(
    T_CkCf: Tensor,  # [8] or [1, 8] float32/float64 initial relative pose (frame -> keyframe)
    X_f: Tensor,  # [HW, 3] frame points matched to each keyframe pixel (X_f_canon[idx_f2k])
    X_k: Tensor,  # [HW, 3] keyframe canonical points
    sqrt_w: Tensor,  # [HW, 1] per-pixel sqrt weight valid_opt * sqrt(q)
    sigma_ray: float,
    sigma_dist: float,
    huber: float,
    max_iters: int,
    rel_error: float,
    delta_norm: float,
    sync_every: int | None = None,
) -> TrackResult:
    """Tracking IRLS with ray + distance residuals (uncalibrated, spec 4.2 and 4.4).

    Returns a :class:`TrackResult` of device tensors (T_CkCf of the input's shape, num_iters,
    converged, failed, cost) without a host synchronisation per iteration: read the flags once.
    ``sync_every`` (PyTorch path only; default: every iteration on the CPU, every 8 on a GPU,
    0 = never) lets the loop end early once it has stopped; the results do not depend on it.
    """
    op = "track_rays"
    env: dict = {}
    T, X_f, sqrt_w = _check_track_common(op, env, T_CkCf, X_f, sqrt_w, huber, max_iters, rel_error, delta_norm)
    X_k = _check(op, env, "X_k", X_k, "HW,3", (T.dtype,))
    _check_pos(op, "sigma_ray", sigma_ray)
    _check_pos(op, "sigma_dist", sigma_dist)
    ext = _extension(op, T.device, cuda_ok=T.dtype == torch.float32)
    if ext is not None:
        out = TrackResult(*ext.track_rays(T, X_f, X_k, sqrt_w, float(sigma_ray), float(sigma_dist), float(huber), max_iters,
                                          float(rel_error), float(delta_norm)))
    else:
        out = _track_rays(T, X_f, X_k, sqrt_w, float(sigma_ray), float(sigma_dist), float(huber), max_iters, float(rel_error),
                          float(delta_norm), sync_every)
    return out._replace(T_CkCf=out.T_CkCf.reshape(T_CkCf.shape))


def track_calib(
    T_CkCf: Tensor,  # [8] or [1, 8] float32/float64 initial relative pose
    X_f: Tensor,  # [HW, 3] matched frame points, constrained to rays
    meas_k: Tensor,  # [HW, 3] keyframe measurements (u, v, log z) (see calib_measurements)
    valid_meas_k: Tensor,  # [HW, 1] bool: keyframe depth > depth_eps
    sqrt_w: Tensor,  # [HW, 1] valid_opt * sqrt(q)
    K: Tensor,  # [3, 3] intrinsics
    height: int,
    width: int,
    sigma_pixel: float,
    sigma_depth: float,
    pixel_border: int,
    depth_eps: float,
    huber: float,
    max_iters: int,
    rel_error: float,
    delta_norm: float,
    sync_every: int | None = None,
) -> TrackResult:
    """Tracking IRLS with pixel + log-depth residuals (calibrated, spec 4.3 and 4.4). Same
    results and conventions as :func:`track_rays`."""
    op = "track_calib"
    env: dict = {}
    T, X_f, sqrt_w = _check_track_common(op, env, T_CkCf, X_f, sqrt_w, huber, max_iters, rel_error, delta_norm)
    meas_k = _check(op, env, "meas_k", meas_k, "HW,3", (T.dtype,))
    valid_meas_k = _check(op, env, "valid_meas_k", valid_meas_k, "HW,1", (torch.bool,))
    K = _check(op, env, "K", K, "3,3", _F32_F64).to(T.dtype)
    _check_int(op, "height", height, 1)
    _check_int(op, "width", width, 1)
    if height * width != env["HW"]:
        raise KernelArgumentError(f"{op}: height * width must equal HW = {env['HW']}, got {height} * {width}")
    _check_pos(op, "sigma_pixel", sigma_pixel)
    _check_pos(op, "sigma_depth", sigma_depth)
    ext = _extension(op, T.device, cuda_ok=T.dtype == torch.float32)
    if ext is not None:
        out = TrackResult(*ext.track_calib(T, X_f, meas_k, valid_meas_k, sqrt_w, K, height, width, float(sigma_pixel),
                                           float(sigma_depth), float(pixel_border), float(depth_eps), float(huber), max_iters,
                                           float(rel_error), float(delta_norm)))
    else:
        out = _track_calib(T, X_f, meas_k, valid_meas_k, sqrt_w, K, height, width, float(sigma_pixel), float(sigma_depth),
                           float(pixel_border), float(depth_eps), float(huber), max_iters, float(rel_error),
                           float(delta_norm), sync_every)
    return out._replace(T_CkCf=out.T_CkCf.reshape(T_CkCf.shape))


def calib_measurements(
    X_k: Tensor,  # [HW, 3] keyframe points (camera frame)
    height: int,
    width: int,
    depth_eps: float,
) -> tuple[Tensor, Tensor]:
    """Keyframe measurements of the calibrated tracker: (meas_k [HW, 3] = (u, v, log z) with
    zeros where invalid, valid_meas_k [HW, 1] = z > depth_eps)."""
    HW = height * width
    if X_k.dim() != 2 or X_k.shape != (HW, 3):
        raise KernelArgumentError(f"calib_measurements: X_k must be [height * width, 3] = [{HW}, 3], got {list(X_k.shape)}")
    n = torch.arange(HW, device=X_k.device)
    uv = torch.stack([n % width, torch.div(n, width, rounding_mode="floor")], dim=-1).to(X_k.dtype)
    z = X_k[:, 2:3]
    valid = z > depth_eps
    logz = torch.log(torch.where(valid, z, torch.ones_like(z)))
    meas = torch.where(valid, torch.cat([uv, logz], dim=-1), torch.zeros(HW, 3, dtype=X_k.dtype, device=X_k.device))
    return meas, valid
