"""Iterative projective matching with descriptor refinement (spec section 3.2).

For every pixel q of image 2, find the pixel p of image 1 whose ray (from the pointmap X11, in
camera 1) best aligns with the ray of X21(q) (image 2's point predicted in camera 1), then refine
p by descriptor similarity in a dilated neighbourhood. Inputs are image-shaped ``[B, H, W, c]``
tensors; outputs are flattened row-major (pixel (u, v) has linear index ``u + W * v``).

The kernels are :func:`mast3r_slam.ops.iter_proj` and :func:`mast3r_slam.ops.refine_matches`
(CUDA extension on the GPU, PyTorch otherwise). Reproduced quirks of the original (see
docs/KERNELS.md): the float pixel is truncated, and validity (converged and distance check) is
decided *before* the refinement moves the match (``revalidate=True`` re-checks the distance at
the refined pixel instead).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import ops
from .ops._torch_rows import bilinear_rows

Tensor = torch.Tensor

__all__ = ["match", "Matcher", "make_matcher", "subpixel_positions", "sample_pointmap", "prepare_rays", "ray_image_gradients", "pixel_to_lin", "lin_to_pixel"]


def pixel_to_lin(p: Tensor, W: int) -> Tensor:
    """Integer pixels [..., 2] (u, v) -> linear indices u + W v [...]."""
    return p[..., 0] + W * p[..., 1]


def lin_to_pixel(idx: Tensor, W: int) -> Tensor:
    """Linear indices [...] -> integer pixels [..., 2] (u, v)."""
    return torch.stack([idx % W, torch.div(idx, W, rounding_mode="floor")], dim=-1)


_SCHARR = ((-3.0, 0.0, 3.0), (-10.0, 0.0, 10.0), (-3.0, 0.0, 3.0))
_GRAD_WEIGHTS: dict = {}  # (C, dtype, device) -> (kx, ky) contiguous [C, 1, 3, 3]


def _gradient_weights(C: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    """The depthwise kernels of :func:`ray_image_gradients`, built once per (C, dtype, device): a
    fresh ``torch.tensor(..., device=cuda)`` is a host-to-device copy that waits for the GPU queue,
    and conv2d copies an expanded weight to a contiguous one on every call."""
    key = (C, dtype, device)
    w = _GRAD_WEIGHTS.get(key)
    if w is None:
        k = torch.tensor(_SCHARR, dtype=dtype) / 32.0
        w = (k.expand(C, 1, 3, 3).contiguous().to(device), k.t().expand(C, 1, 3, 3).contiguous().to(device))
        if len(_GRAD_WEIGHTS) > 16:
            _GRAD_WEIGHTS.clear()
        _GRAD_WEIGHTS[key] = w
    return w


def ray_image_gradients(rays: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel x/y gradients of an image [B, C, H, W] with reflect padding.

    3x3 Scharr-like kernels gx = [[-3, 0, 3], [-10, 0, 10], [-3, 0, 3]] / 32 and gy = gx^T
    (cross-correlation; a unit central difference on a linear ramp).
    """
    kx, ky = _gradient_weights(rays.shape[1], rays.dtype, rays.device)
    padded = F.pad(rays, (1, 1, 1, 1), mode="reflect")
    C = rays.shape[1]
    return F.conv2d(padded, kx, groups=C), F.conv2d(padded, ky, groups=C)


# The fused CUDA paths (one kernel for prepare_rays; match = 2 + 2 kernels): bit-identical to the
# PyTorch ops below, whose arithmetic they reproduce (csrc/matching.cu). _NORM_MODE picks the
# summation order of F.normalize's norm (0: ATen's reduction of 3 floats; see matching.cu).
_FUSED = True
_NORM_MODE = 0
_TILED = True  # refinement blocks on 16 x 8 tiles of query pixels (csrc/matching.cu, kOut = 2)


def _fused_ext(X: Tensor, name: str):
    """The CUDA extension when it has the fused entry point ``name`` and X is on the GPU, else None."""
    if not (_FUSED and X.is_cuda):
        return None
    ext = ops._extension(name, X.device)
    return ext if ext is not None and hasattr(ext, name) else None


def prepare_rays(X11: Tensor, X21: Tensor) -> tuple[Tensor, Tensor]:
    """Inputs of the projective iterations.

    X11, X21: [B, H, W, 3]. Returns (rays_with_grad [B, H, W, 9] = [ray, d ray/du, d ray/dv] of
    the normalised X11, target_rays [B, HW, 3] = normalised X21).
    """
    B, H, W, _ = X11.shape
    ext = _fused_ext(X11, "prepare_rays")
    if (ext is not None and H >= 3 and W >= 3 and X11.dtype == torch.float32 and X21.dtype == torch.float32
            and X21.shape == X11.shape and X21.device == X11.device):
        rays_with_grad, target = ext.prepare_rays(X11.contiguous(), X21.contiguous(), _NORM_MODE)
        return rays_with_grad, target
    rays = F.normalize(X11, dim=-1).permute(0, 3, 1, 2)
    gx, gy = ray_image_gradients(rays)
    rays_with_grad = torch.cat([rays, gx, gy], dim=1).permute(0, 2, 3, 1).contiguous()
    target = F.normalize(X21.reshape(B, H * W, 3), dim=-1)
    return rays_with_grad, target


def match(
    X11: Tensor,  # [B, H, W, 3] image 1's points in camera 1
    X21: Tensor,  # [B, H, W, 3] image 2's points in camera 1
    D11: Tensor,  # [B, H, W, F] image 1's descriptors
    D21: Tensor,  # [B, H, W, F] image 2's descriptors
    idx_init: Tensor | None = None,  # [B, HW] int64 initial idx_1_to_2 (None: identity)
    *,
    max_iter: int = 10,
    lambda_init: float = 1e-8,
    convergence_thresh: float = 1e-6,
    dist_thresh: float = 0.1,
    radius: int = 3,
    dilation_max: int = 5,
    revalidate: bool = False,
    fp16_descriptors: bool | None = None,
) -> tuple[Tensor, Tensor]:
    """Match every pixel of image 2 to a pixel of image 1.

    Returns (idx_1_to_2 [B, HW] int64 linear indices into image 1, valid_match2 [B, HW, 1] bool).
    ``fp16_descriptors`` (default: on CUDA) casts descriptors to float16 for the refinement as the
    original does; on the CPU float32 is used by default (faster there; on the fixtures the
    refined indices agree with the original's float16 ones on >= 99.5% of pixels).
    """
    if X11.dim() != 4 or X11.shape[-1] != 3:
        raise ops.KernelArgumentError(f"match: X11 must be [B, H, W, 3], got {list(X11.shape)}")
    if X21.shape != X11.shape:
        raise ops.KernelArgumentError(f"match: X21 must have the shape of X11 {list(X11.shape)}, got {list(X21.shape)}")
    B, H, W, _ = X11.shape
    if D11.dim() != 4 or D11.shape[:3] != X11.shape[:3]:
        raise ops.KernelArgumentError(f"match: D11 must be [B, H, W, F] with B, H, W = {B}, {H}, {W}, got {list(D11.shape)}")
    if D21.shape != D11.shape:
        raise ops.KernelArgumentError(f"match: D21 must have the shape of D11 {list(D11.shape)}, got {list(D21.shape)}")
    X11 = X11.float()
    X21 = X21.float()
    if idx_init is not None and idx_init.shape != (B, H * W):
        raise ops.KernelArgumentError(f"match: idx_init must be [B, HW] = [{B}, {H * W}], got {list(idx_init.shape)}")
    ext = _fused_ext(X11, "match_project")
    if ext is not None and H >= 3 and W >= 3 and X21.device == X11.device and (idx_init is None or idx_init.device == X11.device):
        return _match_fused(ext, X11, X21, D11, D21, idx_init, max_iter, lambda_init, convergence_thresh, dist_thresh, radius,
                            dilation_max, revalidate, fp16_descriptors)
    rays_with_grad, target = prepare_rays(X11, X21)

    if idx_init is None:
        p_init = _identity_pixels(H, W, X11.device).expand(B, -1, -1)  # made contiguous by ops.iter_proj
    else:
        p_init = lin_to_pixel(idx_init, W).float()

    p, converged = ops.iter_proj(rays_with_grad, target, p_init, max_iter, lambda_init, convergence_thresh)
    p1 = p.long()  # truncation, as the original

    valid = converged & _dist_ok(X11, X21, p1, dist_thresh)

    if radius > 0:
        if fp16_descriptors is None:
            fp16_descriptors = X11.is_cuda
        dt = torch.float16 if fp16_descriptors else torch.float32
        p1 = ops.refine_matches(D11.to(dt).contiguous(), D21.reshape(B, H * W, -1).to(dt).contiguous(), p1, radius, dilation_max)
        if revalidate:
            valid = converged & _dist_ok(X11, X21, p1, dist_thresh)
    return _lin(p1, W), valid[..., None]


def _match_fused(ext, X11, X21, D11, D21, idx_init, max_iter, lambda_init, convergence_thresh, dist_thresh, radius, dilation_max,
                 revalidate, fp16_descriptors):
    """match() on the GPU in 2 + 2 kernels: rays + gradients (packed for the iterations), the
    iterations with the truncation, linear index and distance check as epilogue, then the float16
    refinement with the descriptor cast folded into its packing and linear indices out. Same
    results as the op-by-op path."""
    B, H, W, _ = X11.shape
    ops._check_int("iter_proj", "max_iter", max_iter, 0)
    init = None if idx_init is None else idx_init.long().contiguous()
    p1, lin, converged, valid = ext.match_project(X11.contiguous(), X21.contiguous(), init, max_iter, float(lambda_init),
                                                  float(convergence_thresh), float(dist_thresh), _NORM_MODE)
    if radius > 0:
        fp16 = True if fp16_descriptors is None else fp16_descriptors
        F_ = D11.shape[-1]
        if (fp16 and hasattr(ext, "refine_matches_lin") and D11.dtype in (torch.float32, torch.float16) and D21.dtype == D11.dtype
                and F_ % 8 == 0 and 8 <= F_ <= 32 and D11.is_cuda and D21.device == D11.device):
            ops._check_int("refine_matches", "radius", radius, 0)
            ops._check_int("refine_matches", "dilation_max", dilation_max, 1)
            lin = ext.refine_matches_lin(D11.contiguous(), D21.reshape(B, H * W, -1).contiguous(), p1, radius, dilation_max,
                                         _TILED)
            if revalidate:
                p1 = lin_to_pixel(lin, W)
        else:
            dt = torch.float16 if fp16 else torch.float32
            p1 = ops.refine_matches(D11.to(dt).contiguous(), D21.reshape(B, H * W, -1).to(dt).contiguous(), p1, radius, dilation_max)
            lin = _lin(p1, W)
        if revalidate:
            valid = converged & _dist_ok(X11, X21, p1, dist_thresh)
    return lin, valid[..., None]


def _dist_ok(X11: Tensor, X21: Tensor, p1: Tensor, dist_thresh: float) -> Tensor:
    """||X11(p1(q)) - X21(q)|| < dist_thresh  -> [B, HW] bool."""
    B, H, W, _ = X11.shape
    lin = _lin(p1, W)
    X11p = torch.gather(X11.reshape(B, H * W, 3), 1, lin[..., None].expand(-1, -1, 3))
    return torch.linalg.norm(X11p - X21.reshape(B, H * W, 3), dim=-1) < dist_thresh


def _lin(p1: Tensor, W: int) -> Tensor:
    """:func:`pixel_to_lin` of int64 pixels in one kernel (u + W v, exact in integers)."""
    return torch.add(p1[..., 0], p1[..., 1], alpha=W)


_IDENTITY: dict = {}  # (H, W, device) -> [1, HW, 2] float32


def _identity_pixels(H: int, W: int, device: torch.device) -> Tensor:
    """(u, v) of every pixel in row-major order, [1, HW, 2] float32, built once per (H, W, device)
    (callers never write to it)."""
    key = (H, W, device)
    p = _IDENTITY.get(key)
    if p is None:
        v, u = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
        p = torch.stack([u, v], -1).reshape(1, H * W, 2).to(device)
        if len(_IDENTITY) > 8:
            _IDENTITY.clear()
        _IDENTITY[key] = p
    return p


@dataclass(frozen=True)
class Matcher:
    """:func:`match` with fixed parameters (build with :func:`make_matcher`)."""

    max_iter: int = 10
    lambda_init: float = 1e-8
    convergence_thresh: float = 1e-6
    dist_thresh: float = 0.1
    radius: int = 3
    dilation_max: int = 5
    revalidate: bool = False

    def __call__(self, X11: Tensor, X21: Tensor, D11: Tensor, D21: Tensor, idx_init: Tensor | None = None):
        return match(
            X11,
            X21,
            D11,
            D21,
            idx_init,
            max_iter=self.max_iter,
            lambda_init=self.lambda_init,
            convergence_thresh=self.convergence_thresh,
            dist_thresh=self.dist_thresh,
            radius=self.radius,
            dilation_max=self.dilation_max,
            revalidate=self.revalidate,
        )


def make_matcher(cfg, revalidate: bool = False) -> Matcher:
    """Matcher from a ``MatchingConfig`` (``cfg.matching``)."""
    return Matcher(
        max_iter=cfg.max_iter,
        lambda_init=cfg.lambda_init,
        convergence_thresh=cfg.convergence_thresh,
        dist_thresh=cfg.dist_thresh,
        radius=cfg.radius,
        dilation_max=cfg.dilation_max,
        revalidate=revalidate,
    )


def subpixel_positions(
    X11: Tensor,  # [HW, 3] or [B, HW, 3] image 1's points in camera 1
    X21: Tensor,  # [HW, 3] or [B, HW, 3] image 2's points in camera 1
    idx_1_to_2: Tensor,  # [HW] or [B, HW] int64 integer matches (e.g. after descriptor refinement)
    H: int,
    W: int,
    iters: int = 3,
    lambda_init: float = 1e-8,
) -> Tensor:
    """Polish integer matches to sub-pixel positions in image 1: [HW, 2] (or [B, HW, 2]) (u, v) float.

    A few projective iterations started at the (refined) integer match converge to the
    position whose ray agrees with X21's ray, so that downstream residuals do not inherit the
    integer rounding (which is nearly constant over neighbouring pixels and biases poses). One
    batched call for B pairs (the backend polishes both directions of all new edges at once).
    """
    single = idx_1_to_2.dim() == 1
    if single:
        X11, X21, idx_1_to_2 = X11[None], X21[None], idx_1_to_2[None]
    B = idx_1_to_2.shape[0]
    if X11.shape[:2] != (B, H * W) or X21.shape != X11.shape or idx_1_to_2.shape != (B, H * W):
        raise ops.KernelArgumentError(
            f"subpixel_positions: X11, X21 must be [B, HW, 3] and idx_1_to_2 [B, HW] with HW = {H} * {W}, got "
            f"{list(X11.shape)}, {list(X21.shape)}, {list(idx_1_to_2.shape)}"
        )
    rays_with_grad, target = prepare_rays(X11.reshape(B, H, W, 3).float(), X21.reshape(B, H, W, 3).float())
    p0 = lin_to_pixel(idx_1_to_2, W).float().contiguous()
    p, _ = ops.iter_proj(rays_with_grad, target, p0, iters, lambda_init, 0.0)
    return p[0] if single else p


def sample_pointmap(X: Tensor, p: Tensor, H: int, W: int) -> Tensor:
    """Bilinear samples of a flattened map X [HW, C] at float pixels p [N, 2] (u, v) -> [N, C]."""
    base = torch.zeros(p.shape[0], dtype=torch.long, device=p.device)
    return bilinear_rows(X.reshape(H * W, X.shape[-1]), base, p, H, W)
