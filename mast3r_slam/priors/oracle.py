"""The ground-truth prior: a stand-in for the MASt3R network built from depth and poses.

**This is not the network.** It exists so that the whole SLAM system can run and be tested
without the MASt3R weights (which cannot be downloaded here): pointmaps come from a sequence's
depth maps and ground-truth poses (synthetic sequences, or real RGB-D such as TUM), corrupted by
an error model that imitates the network's typical errors. Every log line and output of a run
using it says so (``is_stand_in = True``; :attr:`OraclePrior.description`).

Conventions are those of :mod:`mast3r_slam.priors.base`: for a decode of the ordered pair
(i, j) both pointmaps are in camera i (``X_ii``, ``X_ji``), ``C = 1 + e^x >= 1``, unit 24-d
descriptors ``D``, ``Q = e^x > 0``, everything flattened row-major ``[HW, c]``.

How a decode (i, j) is made (all pairs of a batch at once, no loop over pairs):

1. per frame (computed once, cached in a bounded LRU): the dataset depth resampled to the
   network image (same resize / crop as :func:`mast3r_slam.image.prepare_image`), holes
   inpainted (push-pull), back-projected with the true network-resolution intrinsics
   -> ``X_true``; the frame's own prediction ``X_f`` = ``X_true`` smoothed across depth edges
   (as a network blurs them), times a smooth + per-pixel multiplicative depth noise, with a
   small focal-length error; base confidences (low at depth edges, holes and far away),
   descriptors and Q from the image (:mod:`.oracle_features`);
2. per decode: a metric scale ``s`` (log-normal), ``X_ii = s X_f(i)``;
   ``X_ji = s dT T_ij X_f(j)`` with the ground-truth relative pose ``T_ij`` perturbed by
   ``dT`` (rotation, translation), extra error and lower C / Q on pixels of j not visible in
   i (occluded, out of view, or moved: moving objects are simply at their own frame's time);
   pairs with little overlap degrade (lower C / Q, larger pose error), as the network's do.

Noise depends only on (seed, frame ids): the same pair decoded twice gives identical outputs
and a frame's own pointmap is the same in every decode up to that decode's scale.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import cv2
import numpy as np
import torch

from ..errors import ConfigError, DatasetError
from ..frame import Frame
from ..image import resize_crop_shape
from . import oracle_features as feats
from .base import Prediction, Prior
from ..io.trajectory import pose7_to_matrix
from .oracle_objects import MODES as MOVING_OBJECT_MODES
from .oracle_objects import MovingObjects
from .oracle_objects import register as register_objects

log = logging.getLogger(__name__)

STAND_IN_NOTE = "ground-truth prior (not the network)"


@dataclass
class OracleErrorModel:
    """Errors the stand-in adds to ground truth (defaults imitate MASt3R; docs/SYNTHETIC.md)."""

    # --- geometry ---------------------------------------------------------------------------
    scale_sigma: float = 0.03  # log-normal std of each decode's metric scale (~3 %)
    # The relative pose used for X_ji is perturbed by an error that grows with the pair's baseline
    # (a network's cross-view prediction is accurate for nearby views and degrades for wide ones):
    rot_sigma_deg: float = 0.15  # RMS rotation error floor (degrees)
    rot_rel: float = 0.01  # + this fraction of the pair's relative rotation angle
    rot_per_baseline_deg: float = 0.5  # + this many degrees per unit baseline / median depth
    trans_sigma: float = 0.003  # RMS translation error floor, fraction of view 1's median depth
    trans_rel: float = 0.02  # + this fraction of the baseline length
    depth_world_sigma: float = 0.02  # smooth multiplicative depth error attached to the scene (std): nearby
    #                                  views of the same surface get the same shape error, as a network's do
    depth_world_wavelength: float = 1.5  # its typical wavelength in metres
    depth_smooth_sigma: float = 0.005  # smooth multiplicative depth error of each frame on its own (std)
    depth_smooth_cells: float = 5.0  # its correlation length: about image width / cells
    depth_pixel_sigma: float = 0.003  # per-pixel multiplicative depth noise (std)
    focal_sigma: float = 0.01  # relative error of each frame's implied focal length
    edge_smooth_px: float = 1.0  # Gaussian smoothing across depth edges (pixels; 0 = off)
    occlusion_sigma: float = 0.05  # extra smooth depth error on pixels of j not seen by i
    low_overlap: float = 0.3  # co-visible fraction below which a pair degrades
    low_overlap_pose_gain: float = 10.0  # pose error multiplier at zero overlap (1 + gain)
    # --- confidences (C = 1 + c, Q = q) --------------------------------------------------------
    edge_thresh: float = 0.08  # relative depth jump between neighbours that counts as an edge
    conf_max: float = 12.0  # c on well-observed pixels (C ~ 8..20 with the spread)
    conf_spread: float = 0.25  # log-std of a smooth per-frame confidence field
    conf_far: float = 6.0  # depth (m) at which c halves
    conf_edge: float = 0.08  # factor on c at depth edges
    conf_hole: float = 0.03  # factor on c where the depth map had no value (inpainted)
    conf_cross: float = 0.75  # factor on c of the cross-view pointmap X_ji
    conf_occluded: float = 0.15  # factor on c of X_ji where j's pixel is not visible in i
    conf_occluded_self: float = 0.6  # factor on c of X_ii where i's pixel is not visible in j
    desc_conf_max: float = 12.0  # q on strongly textured pixels
    desc_conf_contrast: float = 0.015  # local contrast (grey std, [0,1] units) at which q = max / 2
    desc_conf_edge: float = 0.5  # factor on q at depth edges
    desc_conf_occluded: float = 0.12  # factor on q where the pixel is not visible in the other view
    desc_conf_ambiguity: float = 1.0  # < 1: q falls once a descriptor 3-15 px away is this similar (off)
    min_pair_factor: float = 0.2  # lowest global factor on c and q of a non-overlapping pair
    visibility_tol: float = 0.05  # relative depth agreement for "visible in the other view"
    # --- moving objects (synthetic dynamic sequence; priors/oracle_objects.py) ------------------
    moving_objects: str = "registered"  # cross-view X_ji of a moving object: "registered" onto view i, or "physical"

    @classmethod
    def exact(cls) -> "OracleErrorModel":
        """Geometry without any error (confidences are still modelled): X equals ground truth."""
        return cls(
            scale_sigma=0.0,
            rot_sigma_deg=0.0,
            rot_rel=0.0,
            rot_per_baseline_deg=0.0,
            trans_sigma=0.0,
            trans_rel=0.0,
            depth_world_sigma=0.0,
            depth_smooth_sigma=0.0,
            depth_pixel_sigma=0.0,
            focal_sigma=0.0,
            edge_smooth_px=0.0,
            occlusion_sigma=0.0,
        )

    def summary(self) -> str:
        return (
            f"scale {100 * self.scale_sigma:.1f}%, rot {self.rot_sigma_deg:.2f} deg + {100 * self.rot_rel:.0f}% of the angle "
            f"+ {self.rot_per_baseline_deg:.1f} deg per baseline/depth, trans {100 * self.trans_sigma:.1f}% of depth "
            f"+ {100 * self.trans_rel:.0f}% of the baseline, depth {100 * self.depth_world_sigma:.1f}% scene-anchored + {100 * self.depth_smooth_sigma:.1f}% smooth + {100 * self.depth_pixel_sigma:.1f}% pixel"
        )


@dataclass
class _FrameData:
    H: int
    W: int
    X_true: torch.Tensor  # [HW, 3] ground-truth points (holes inpainted), camera frame
    X_pred: torch.Tensor  # [HW, 3] the frame's own prediction (noisy, edge-smoothed)
    z_true: torch.Tensor  # [HW]
    c_base: torch.Tensor  # [HW] confidence c (C = 1 + c) before pair factors
    q_base: torch.Tensor  # [HW] descriptor confidence before pair factors
    D: torch.Tensor  # [HW, 24]
    occ_noise: torch.Tensor  # [HW] smooth unit noise used for occluded pixels
    K: torch.Tensor  # [3, 3] true intrinsics at network resolution
    T_WC: torch.Tensor  # [4, 4] float64 ground-truth camera-to-world
    median_depth: torch.Tensor  # [] float64 median of z_true (numpy's definition)
    obj_label: torch.Tensor | None = None  # [HW] int64 moving-object index per pixel (-1 static), dynamic sequences
    obj_poses: torch.Tensor | None = None  # [n_obj, 4, 4] float64 object-to-world at this frame's time


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
def _smooth_noise(rng: np.random.Generator, H: int, W: int, cells: float) -> np.ndarray:
    """Smooth zero-mean unit-std noise field [H, W] with about ``cells`` blobs across."""
    n = max(float(cells), 1.0)
    gh, gw = max(int(math.ceil(n * H / max(H, W))) + 2, 3), max(int(math.ceil(n + 2)), 3)
    grid = rng.standard_normal((gh, gw)).astype(np.float32)
    f = cv2.resize(grid, (W, H), interpolation=cv2.INTER_CUBIC)
    return (f - f.mean()) / (f.std() + 1e-6)


def _world_noise(seed: int, P: np.ndarray, wavelength: float, n_waves: int = 8) -> np.ndarray:
    """Smooth unit-variance noise over 3D world points [N, 3]: a sum of random plane waves
    (directions, wavelengths around ``wavelength``, phases from ``seed`` only)."""
    r = np.random.default_rng([int(seed), 0x3D0A15E])
    d = r.standard_normal((n_waves, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    k = 2 * np.pi / (wavelength * np.exp(0.4 * r.standard_normal(n_waves)))
    phase = r.uniform(0, 2 * np.pi, n_waves)
    return (np.sqrt(2.0 / n_waves) * np.cos(P @ (d * k[:, None]).T + phase)).sum(1).astype(np.float32)


def _push_pull_fill(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Fill invalid pixels of [H, W] by a weighted image pyramid (push-pull) inpainting."""
    if valid.all():
        return values
    if not valid.any():
        return np.full_like(values, np.nan)
    levels = [(np.where(valid, values, 0).astype(np.float32), valid.astype(np.float32))]
    while min(levels[-1][0].shape) > 1 and levels[-1][1].min() == 0:
        v, w = levels[-1]
        h2, w2 = max(v.shape[0] // 2, 1), max(v.shape[1] // 2, 1)
        vs = cv2.resize(v, (w2, h2), interpolation=cv2.INTER_AREA)
        ws = cv2.resize(w, (w2, h2), interpolation=cv2.INTER_AREA)
        levels.append((vs, ws))
    v, w = levels[-1]
    filled = np.where(w > 0, v / np.maximum(w, 1e-12), (v.sum() / max(w.sum(), 1e-12)))
    for v, w in reversed(levels[:-1]):
        up = cv2.resize(filled, (v.shape[1], v.shape[0]), interpolation=cv2.INTER_LINEAR)
        cur = v / np.maximum(w, 1e-12)
        a = np.clip(w, 0, 1)
        filled = a * cur + (1 - a) * up
    return np.where(valid, values, filled).astype(values.dtype)


# ---- torch versions of the per-frame steps (same arithmetic as the numpy/OpenCV originals) ----
def _sample_depth_t(depth: torch.Tensor, xr: torch.Tensor, yr: torch.Tensor) -> torch.Tensor:
    """:meth:`OraclePrior._sample_depth` on a separable grid: depth [h, w], raw coordinates of
    the columns xr [W] and rows yr [H] -> z [H, W] (0 where invalid)."""
    h, w = depth.shape
    x0 = torch.floor(xr).long().clamp(0, w - 1)
    y0 = torch.floor(yr).long().clamp(0, h - 1)
    x1, y1 = (x0 + 1).clamp_max(w - 1), (y0 + 1).clamp_max(h - 1)
    fx = (xr - x0.float()).clamp(0, 1)[None, :]  # [1, W]
    fy = (yr - y0.float()).clamp(0, 1)[:, None]  # [H, 1]
    r0, r1 = depth[y0], depth[y1]  # [H, w]
    d00, d01, d10, d11 = r0[:, x0], r0[:, x1], r1[:, x0], r1[:, x1]
    lo = torch.minimum(torch.minimum(d00, d01), torch.minimum(d10, d11))
    hi = torch.maximum(torch.maximum(d00, d01), torch.maximum(d10, d11))
    smooth = (lo > 0) & (hi <= lo * 1.03)
    bil = (d00 * (1 - fx) + d01 * fx) * (1 - fy) + (d10 * (1 - fx) + d11 * fx) * fy
    xn = torch.where(fx[0] < 0.5, x0, x1)
    yn = torch.where(fy[:, 0] < 0.5, y0, y1)
    near = depth[yn][:, xn]
    return torch.where(smooth, bil, near)


@functools.lru_cache(maxsize=16)
def _cv_gaussian_kernel(sigma: float) -> np.ndarray:
    """The 1-D kernel cv2.GaussianBlur(float32 image, (0, 0), sigma) uses."""
    ksize = int(np.rint(sigma * 4 * 2 + 1)) | 1
    return cv2.getGaussianKernel(ksize, sigma, cv2.CV_32F).reshape(-1).astype(np.float32)


def _reflect_index(n: int, r: int, device) -> torch.Tensor:
    """Indices of a length-n axis padded by r on both sides with OpenCV's BORDER_REFLECT (edge repeated)."""
    idx = np.concatenate([np.arange(r - 1, -1, -1), np.arange(n), np.arange(n - 1, n - 1 - r, -1)])
    return torch.from_numpy(np.clip(idx, 0, n - 1)).to(device)


def _gaussian_blur_cv(x: torch.Tensor, sigma: float, border: str) -> torch.Tensor:
    """cv2.GaussianBlur(x, (0, 0), sigma) of a float32 image [H, W] as shifted weighted sums
    (no convolution: exact float32 on every device, no TF32). border: "reflect101" (OpenCV's
    default) or "reflect" (BORDER_REFLECT)."""
    k = _cv_gaussian_kernel(float(sigma))
    r = len(k) // 2
    H, W = x.shape
    if border == "reflect101":
        xp = torch.nn.functional.pad(x[None, None], (r, r, 0, 0), mode="reflect")[0, 0]
    else:
        xp = x.index_select(1, _reflect_index(W, r, x.device))
    y = xp[:, 0:W] * float(k[0])
    for i in range(1, len(k)):
        y = y + xp[:, i : i + W] * float(k[i])
    if border == "reflect101":
        yp = torch.nn.functional.pad(y[None, None], (0, 0, r, r), mode="reflect")[0, 0]
    else:
        yp = y.index_select(0, _reflect_index(H, r, x.device))
    out = yp[0:H] * float(k[0])
    for i in range(1, len(k)):
        out = out + yp[i : i + H] * float(k[i])
    return out


def _dilate(x: torch.Tensor, k: int) -> torch.Tensor:
    """cv2.dilate(x, ones((k, k))) of [H, W] (the border does not count)."""
    return torch.nn.functional.max_pool2d(x[None, None], k, stride=1, padding=k // 2)[0, 0]


def _frame_noise(seed: int, fid: int, H: int, W: int, em: "OracleErrorModel") -> tuple[np.ndarray, float, tuple]:
    """The frame's random fields in the original draw order: [4, H, W] float32 (smooth depth noise,
    per-pixel depth noise, confidence field, occlusion noise), the focal factor, and the scene's
    plane waves."""
    rng = np.random.default_rng([seed, fid, 0x0FAC1E])
    noise_s = _smooth_noise(rng, H, W, em.depth_smooth_cells)
    noise_p = rng.standard_normal((H, W)).astype(np.float32)
    focal = 1.0 + em.focal_sigma * float(rng.standard_normal())
    field = _smooth_noise(rng, H, W, 3.0)
    occ = _smooth_noise(rng, H, W, 4.0)
    return np.stack([noise_s, noise_p, field, occ]), focal, _world_waves(int(seed), float(em.depth_world_wavelength))


@functools.lru_cache(maxsize=8)
def _world_waves(seed: int, wavelength: float, n_waves: int = 8) -> tuple[np.ndarray, np.ndarray, float]:
    """Plane waves of :func:`_world_noise`: wave vectors [3, n] (float64), phases [n], amplitude."""
    r = np.random.default_rng([int(seed), 0x3D0A15E])
    d = r.standard_normal((n_waves, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    k = 2 * np.pi / (wavelength * np.exp(0.4 * r.standard_normal(n_waves)))
    phase = r.uniform(0, 2 * np.pi, n_waves)
    return np.ascontiguousarray((d * k[:, None]).T), phase, float(np.sqrt(2.0 / n_waves))


def _world_noise_t(waves: tuple, P: torch.Tensor) -> torch.Tensor:
    """:func:`_world_noise` of world points P [N, 3] float64 on their device -> [N] float32."""
    M, phase, amp = waves
    M, phase = _to_device(M, P.device), _to_device(phase, P.device)
    return (amp * torch.cos(P @ M + phase)).sum(1).float()


def _median_like_numpy(x: torch.Tensor) -> torch.Tensor:
    """np.median of a 1-D tensor (mean of the two middle values for an even count), on its device."""
    n = x.numel()
    hi = torch.kthvalue(x, n // 2 + 1).values
    return hi if n % 2 else (torch.kthvalue(x, n // 2).values + hi) / 2


def _stack(ts: list[torch.Tensor]) -> torch.Tensor:
    """torch.stack, but a view (no copy) for one tensor: cached per-frame data are read-only."""
    return ts[0][None] if len(ts) == 1 else torch.stack(ts)


def _rigid_inv(T: torch.Tensor) -> torch.Tensor:
    """Inverse of rigid transforms [B, 4, 4] (R^T, -R^T t)."""
    Ri = T[:, :3, :3].transpose(1, 2)
    out = torch.zeros_like(T)
    out[:, :3, :3] = Ri
    out[:, :3, 3] = -(Ri @ T[:, :3, 3:])[..., 0]
    out[:, 3, 3] = 1
    return out


def _to_device(a, dev: torch.device) -> torch.Tensor:
    """Host array or CPU tensor -> tensor on ``dev``; to CUDA through pinned memory without a host
    synchronisation."""
    t = a if isinstance(a, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(a))
    if dev.type == "cuda":
        return t.pin_memory().to(dev, non_blocking=True)
    return t.to(dev)


def _so3_exp(w: torch.Tensor) -> torch.Tensor:
    """Rotation vectors [B, 3] -> matrices [B, 3, 3] (Rodrigues)."""
    th = w.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    k = w / th
    K = torch.zeros(w.shape[0], 3, 3, dtype=w.dtype, device=w.device)
    K[:, 0, 1], K[:, 0, 2], K[:, 1, 2] = -k[:, 2], k[:, 1], -k[:, 0]
    K = K - K.transpose(1, 2)
    s, c = torch.sin(th)[..., None], torch.cos(th)[..., None]
    return torch.eye(3, dtype=w.dtype, device=w.device) + s * K + (1 - c) * (K @ K)


# ----------------------------------------------------------------------------------------------
# the prior
# ----------------------------------------------------------------------------------------------
class OraclePrior(Prior):
    """Ground-truth stand-in for the network (see the module docstring).

    dataset: a :class:`~mast3r_slam.datasets.base.Dataset` whose samples have depth and
    ground-truth poses; frames are looked up by ``frame.frame_id``. img_size: the network input
    size used to prepare frames (``dataset.img_size`` of the config). Picklable: the per-frame
    cache is dropped and rebuilt lazily in the receiving process.
    """

    name = "oracle"
    is_stand_in = True
    desc_dim = feats.DESC_DIM

    def __init__(
        self,
        dataset,
        error_model: OracleErrorModel | None = None,
        device: str | torch.device = "cpu",
        seed: int = 0,
        img_size: int = 512,
        cache_size: int = 48,
    ):
        self.dataset = dataset
        self.error_model = error_model if error_model is not None else OracleErrorModel()
        self.device = torch.device(device)
        self.seed = int(seed)
        self.img_size = int(img_size)
        self.cache_size = int(cache_size)
        self._cache: OrderedDict = OrderedDict()
        self._size_cache: dict = {}

    # ---- identity ----------------------------------------------------------------------------
    @property
    def description(self) -> str:
        src = getattr(self.dataset, "name", "dataset")
        return f"oracle: {STAND_IN_NOTE} from the depth and poses of {src}; error model: {self.error_model.summary()}"

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_cache"] = OrderedDict()
        d["_size_cache"] = {}
        d["device"] = str(self.device)
        return d

    def __setstate__(self, d):
        self.__dict__.update(d)
        self.device = torch.device(d["device"])

    # ---- per frame -------------------------------------------------------------------------
    def encode(self, frame: Frame) -> None:
        """The stand-in has no encoder: ``feat`` holds the frame id ([1, 1, 1]), ``pos`` zeros."""
        if frame.feat is None:
            frame.feat = torch.full((1, 1, 1), float(frame.frame_id), device=frame.device)
            frame.pos = torch.zeros((1, 1, 2), dtype=torch.int64, device=frame.device)

    def mono(self, frame: Frame) -> tuple[torch.Tensor, torch.Tensor]:
        p1, _ = self._decode([frame], [frame])
        return p1.X[0], p1.C[0]

    def asymmetric(self, frame_i: Frame, frame_j: Frame) -> tuple[Prediction, Prediction]:
        p1, p2 = self._decode([frame_i], [frame_j])
        return p1[0], p2[0]

    def symmetric(self, frames_i: Sequence[Frame], frames_j: Sequence[Frame]) -> Prediction:
        frames_i, frames_j = list(frames_i), list(frames_j)
        if len(frames_i) != len(frames_j):
            raise ValueError(f"symmetric: {len(frames_i)} frames_i but {len(frames_j)} frames_j")
        B = len(frames_i)
        p1, p2 = self._decode(frames_i + frames_j, frames_j + frames_i)
        # decode (i, j) -> ii, ji ; decode (j, i) -> jj, ij
        X = torch.stack([p1.X[:B], p2.X[:B], p1.X[B:], p2.X[B:]])
        C = torch.stack([p1.C[:B], p2.C[:B], p1.C[B:], p2.C[B:]])
        D = torch.stack([p1.D[:B], p2.D[:B], p1.D[B:], p2.D[B:]])
        Q = torch.stack([p1.Q[:B], p2.Q[:B], p1.Q[B:], p2.Q[B:]])
        return Prediction(X, C, D, Q)

    def retrieval_features(self, frame: Frame) -> torch.Tensor:
        img = frame.uimg.detach().cpu().numpy() if isinstance(frame.uimg, torch.Tensor) else np.asarray(frame.uimg)
        if img.dtype == np.uint8:
            img = img.astype(np.float32) / 255.0
        return torch.from_numpy(feats.retrieval_features(img)).to(self.device)

    def retrieval_codebook(self) -> torch.Tensor:
        return torch.from_numpy(feats.retrieval_codebook()).to(self.device)

    # ---- internals ---------------------------------------------------------------------------
    def frame_data(self, frame: Frame) -> _FrameData:
        """Cached per-frame data (public for tests)."""
        key = (int(frame.frame_id), int(frame.H), int(frame.W))
        fd = self._cache.get(key)
        if fd is not None:
            self._cache.move_to_end(key)
            return fd
        with self._threads():
            fd = self._make_frame_data(frame)
        self._cache[key] = fd
        while len(self._cache) > max(self.cache_size, 2):
            self._cache.popitem(last=False)
        return fd

    @contextlib.contextmanager
    def _threads(self):
        """On CPU, run with one torch thread: the oracle's tensors are small and the frontend and
        backend processes share a few cores (2 threads each oversubscribe and stall badly)."""
        if self.device.type != "cpu" or torch.get_num_threads() == 1:
            yield
            return
        n = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(n)

    def _sample(self, fid: int):
        """The dataset sample of frame ``fid`` (depth, ground-truth pose, timestamp)."""
        get = getattr(self.dataset, "frame_depth", None)  # skips decoding the image where it can
        return get(fid) if callable(get) else self.dataset[fid]

    def _moving_objects(self):
        """The sequence's moving objects (objects.json) or None; loaded once."""
        if not hasattr(self, "_movers"):
            self._movers = MovingObjects.from_dataset(self.dataset)
        return self._movers

    def _network_geometry(self, w: int, h: int, H: int, W: int) -> tuple[int, int, int, int]:
        """(new_w, new_h, left, top) of the resize + crop that maps a w x h image to W x H."""
        key = (w, h, H, W)
        if key in self._size_cache:
            return self._size_cache[key]
        cands = [self.img_size] + [s for k in range(1, 2048) for s in (self.img_size - k, self.img_size + k) if s >= 16]
        for s in cands:
            (nw, nh), (l, t, r, b) = resize_crop_shape(w, h, s)
            if (b - t, r - l) == (H, W):
                if s != self.img_size:
                    log.warning("oracle: frames are %dx%d, which img_size %d does not give; using %d", W, H, self.img_size, s)
                self._size_cache[key] = (nw, nh, l, t)
                return self._size_cache[key]
        raise DatasetError(f"oracle prior: no network image size maps {w}x{h} frames of {self.dataset.path} to {W}x{H}")

    def _make_frame_data(self, frame: Frame) -> _FrameData:
        """Per-frame data, computed on the prior's device (torch) from the dataset sample.

        Same arithmetic as the original numpy version (tests/priors/test_oracle_reference.py
        compares with outputs saved from it): the random fields still come from the frame's
        numpy generator (one [4, H, W] host->device copy), blurs use OpenCV's Gaussian kernels
        and border rules, and float64 is used where numpy promoted to it.
        """
        em = self.error_model
        fid = int(frame.frame_id)
        if not 0 <= fid < len(self.dataset):
            raise DatasetError(f"oracle prior: frame {fid} is outside {self.dataset.path} ({len(self.dataset)} frames)")
        s = self._sample(fid)
        if s.depth is None or s.T_WC_gt is None:
            what = "depth" if s.depth is None else "a ground-truth pose"
            raise DatasetError(
                f"--prior oracle: frame {fid} of {self.dataset.path} has no {what}; the ground-truth prior needs "
                "depth and poses (synthetic:<name> or TUM RGB-D)"
            )
        K_raw = self.dataset.K
        if K_raw is None:
            raise DatasetError(f"--prior oracle: {self.dataset.path} has no intrinsics; the ground-truth prior needs them")
        dev = self.device
        h, w = s.depth.shape
        H, W = frame.H, frame.W
        nw, nh, left, top = self._network_geometry(w, h, H, W)
        sw, sh = w / nw, h / nh
        # true intrinsics of the network image (pixel centres: x_raw = (u + left + 0.5) sw - 0.5)
        fx, fy = float(K_raw[0, 0] / sw), float(K_raw[1, 1] / sh)
        cx, cy = float((K_raw[0, 2] + 0.5) / sw - 0.5 - left), float((K_raw[1, 2] + 0.5) / sh - 0.5 - top)
        u = torch.arange(W, dtype=torch.float32, device=dev)  # [W]
        v = torch.arange(H, dtype=torch.float32, device=dev)  # [H]
        depth = _to_device(np.asarray(s.depth, dtype=np.float32), dev)
        z = _sample_depth_t(depth, (u + left + 0.5) * sw - 0.5, (v + top + 0.5) * sh - 0.5)  # [H, W]
        valid = z > 0
        all_valid = True
        hole: torch.Tensor | float = 0.0
        zf = torch.exp(torch.log(z))  # as the inpainting path (a no-op fill) did
        if not bool(valid.all()):  # holes (real RGB-D): push-pull inpainting on the host, as before
            all_valid = False
            z_np, valid_np = z.cpu().numpy(), valid.cpu().numpy()
            if valid_np.any():
                zf_np = np.exp(_push_pull_fill(np.log(np.where(valid_np, z_np, 1.0)), valid_np))
            else:  # no depth at all (lens covered): a flat wall at 1 m, very low confidence
                zf_np = np.ones_like(z_np)
            zf = _to_device(np.asarray(zf_np, dtype=np.float32), dev)
            hole = _gaussian_blur_cv((~valid).float(), 1.0, "reflect101").clamp(0, 1)
        noise, focal, world = _frame_noise(self.seed, fid, H, W, em)
        noise = _to_device(noise, dev)  # [4, H, W]: smooth depth, pixel depth, confidence field, occlusion
        # depth edges (from the filled depth) and their soft mask
        lz = torch.log(zf)
        dx = (lz[:, 1:] - lz[:, :-1]).abs()
        dy = (lz[1:] - lz[:-1]).abs()
        jump = torch.zeros_like(lz)
        jump[:, 1:] = torch.maximum(jump[:, 1:], dx)
        jump[:, :-1] = torch.maximum(jump[:, :-1], dx)
        jump[1:] = torch.maximum(jump[1:], dy)
        jump[:-1] = torch.maximum(jump[:-1], dy)
        edge = (jump > math.log1p(em.edge_thresh)).float()
        edge_soft = _gaussian_blur_cv(_dilate(edge, 3), 0.8, "reflect101").clamp(0, 1)
        # the frame's own prediction: smoothed across edges, noisy depth, focal error
        lzp = lz
        if em.edge_smooth_px > 0:
            blurred = _gaussian_blur_cv(lz, em.edge_smooth_px, "reflect")
            lzp = torch.where(_dilate(edge, 5) > 0, blurred, lz)
        xn = (u.double() - cx) / fx  # [W] float64 (numpy promoted to float64 here)
        yn = (v.double() - cy) / fy  # [H]
        zf64 = zf.double()
        X_true64 = torch.stack([xn[None, :] * zf64, yn[:, None] * zf64, zf64], -1).reshape(-1, 3)
        T = _to_device(pose7_to_matrix(s.T_WC_gt), dev)
        P_world = X_true64 @ T[:3, :3].T + T[:3, 3]
        noise_w = _world_noise_t(world, P_world).reshape(H, W)
        zp = torch.exp(lzp + em.depth_world_sigma * noise_w + em.depth_smooth_sigma * noise[0] + em.depth_pixel_sigma * noise[1])
        zp64 = zp.double()
        X_pred = torch.stack([xn[None, :] * zp64 / focal, yn[:, None] * zp64 / focal, zp64], -1).reshape(-1, 3).float()
        # confidences
        c = em.conf_max * torch.exp(em.conf_spread * noise[2]) / (1 + (zf / em.conf_far) ** 2)
        c = c * (1 - (1 - em.conf_edge) * edge_soft)
        if not all_valid:
            c = c * (1 - (1 - em.conf_hole) * hole)
        img = frame.uimg.detach().cpu().float() if isinstance(frame.uimg, torch.Tensor) else torch.as_tensor(frame.uimg).float()
        if img.max() > 1.5:  # uimg lives on the host: no device synchronisation
            img = img / 255.0
        D, contrast = feats.local_descriptors(_to_device(img, dev))
        q = em.desc_conf_max * contrast / (contrast + em.desc_conf_contrast)
        q = q * (1 - (1 - em.desc_conf_edge) * edge_soft) + 1e-3
        if em.desc_conf_ambiguity < 1:  # descriptors that do not localise within the search window
            amb = feats.descriptor_ambiguity(D)
            q = q * ((1 - amb) / (1 - em.desc_conf_ambiguity)).clamp(0.05, 1.0)
        obj_label = obj_poses = None
        movers = self._moving_objects()
        if movers is not None and movers.at(s.timestamp) is not None:
            lab = movers.labels(s.timestamp, P_world.cpu().numpy())
            obj_label = torch.from_numpy(lab).to(dev)
            obj_poses = torch.from_numpy(movers.at(s.timestamp)).to(dev)
        zflat = zf.reshape(-1)
        return _FrameData(
            obj_label=obj_label,
            obj_poses=obj_poses,
            H=H,
            W=W,
            X_true=X_true64.float(),
            X_pred=X_pred,
            z_true=zflat,
            c_base=c.reshape(-1),
            q_base=q.reshape(-1),
            D=D.reshape(-1, D.shape[-1]),
            occ_noise=noise[3].reshape(-1),
            K=_to_device(np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], dtype=np.float32), dev),
            T_WC=T,
            median_depth=_median_like_numpy(zflat).double(),
        )

    @staticmethod
    def _sample_depth(depth: np.ndarray, xr: np.ndarray, yr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Depth at raw coordinates: bilinear where the 4 neighbours agree (within 3 %), nearest
        otherwise (no mixing across edges); valid where the used samples are all > 0."""
        h, w = depth.shape
        x0 = np.clip(np.floor(xr).astype(np.int64), 0, w - 1)
        y0 = np.clip(np.floor(yr).astype(np.int64), 0, h - 1)
        x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
        fx = np.clip(xr - x0, 0, 1).astype(np.float32)
        fy = np.clip(yr - y0, 0, 1).astype(np.float32)
        d00, d01, d10, d11 = depth[y0, x0], depth[y0, x1], depth[y1, x0], depth[y1, x1]
        nb = np.stack([d00, d01, d10, d11])
        lo, hi = nb.min(0), nb.max(0)
        smooth = (lo > 0) & (hi <= lo * 1.03)
        bil = (d00 * (1 - fx) + d01 * fx) * (1 - fy) + (d10 * (1 - fx) + d11 * fx) * fy
        xn = np.where(fx < 0.5, x0, x1)
        yn = np.where(fy < 0.5, y0, y1)
        near = depth[yn, xn]
        z = np.where(smooth, bil, near)
        return z, z > 0

    def _decode(self, frames_1: list[Frame], frames_2: list[Frame]) -> tuple[Prediction, Prediction]:
        """Batched decode of pairs (frames_1[b], frames_2[b]): view-1 and view-2 outputs [B, HW, c]."""
        f1 = [self.frame_data(f) for f in frames_1]
        f2 = [self.frame_data(f) for f in frames_2]
        with self._threads():
            return self._decode_batch(frames_1, frames_2, f1, f2)

    def _decode_batch(self, frames_1, frames_2, f1: list[_FrameData], f2: list[_FrameData]) -> tuple[Prediction, Prediction]:
        em = self.error_model
        B = len(f1)
        if B == 0:
            raise ValueError("oracle prior: empty batch")
        H, W = f1[0].H, f1[0].W
        if any((d.H, d.W) != (H, W) for d in f1 + f2):
            raise ValueError("oracle prior: all frames of a batch must have the same size")
        dev = self.device
        X1p = _stack([d.X_pred for d in f1])
        X2p = _stack([d.X_pred for d in f2])
        X1t = _stack([d.X_true for d in f1])
        X2t = _stack([d.X_true for d in f2])
        z1 = _stack([d.z_true for d in f1])
        z2 = _stack([d.z_true for d in f2])
        K1 = _stack([d.K for d in f1])
        K2 = _stack([d.K for d in f2])
        T1 = _stack([d.T_WC for d in f1])
        T2 = _stack([d.T_WC for d in f2])
        T12 = _rigid_inv(T1) @ T2  # camera 2 -> camera 1 (float64; closed-form inverse, no solver sync)
        T21 = _rigid_inv(T12)
        R12, t12 = T12[:, :3, :3].float(), T12[:, :3, 3].float()
        R21, t21 = T21[:, :3, :3].float(), T21[:, :3, 3].float()

        # visibility of view-2 pixels in view 1 and of view-1 pixels in view 2 (ground truth)
        P21 = X2t @ R12.transpose(1, 2) + t12[:, None]  # [B, HW, 3] view-2 points in camera 1
        vis2 = self._visible(P21, K1, z1, H, W)
        P12 = X1t @ R21.transpose(1, 2) + t21[:, None]
        vis1 = self._visible(P12, K2, z2, H, W)
        overlap = vis2.float().mean(1)  # [B]
        a = (overlap / max(em.low_overlap, 1e-6)).clamp(0, 1)
        g = em.min_pair_factor + (1 - em.min_pair_factor) * a  # global factor on c and q
        gain = 1 + em.low_overlap_pose_gain * (1 - a)

        # per-decode random numbers from (seed, id1, id2)
        ids = np.array([[self.seed, int(a_.frame_id), int(b_.frame_id), 0xDEC0DE] for a_, b_ in zip(frames_1, frames_2)])
        n = _to_device(feats.hash_normal(ids, 7), dev)  # [B, 7] float64
        scale = torch.exp(em.scale_sigma * n[:, 0]).float()
        med = _stack([d.median_depth for d in f1])
        baseline = T12[:, :3, 3].norm(dim=-1)  # float64
        cos_a = ((T12[:, 0, 0] + T12[:, 1, 1] + T12[:, 2, 2] - 1) / 2).clamp(-1, 1)
        angle_deg = torch.rad2deg(torch.arccos(cos_a))
        rot_deg = em.rot_sigma_deg + em.rot_rel * angle_deg + em.rot_per_baseline_deg * baseline / med.clamp_min(1e-6)
        trans = em.trans_sigma * med + em.trans_rel * baseline
        rot = torch.deg2rad(rot_deg)[:, None] / math.sqrt(3) * n[:, 1:4] * gain.double()[:, None]
        dt = n[:, 4:7] / math.sqrt(3) * (trans * gain.double())[:, None]
        has_rot = em.rot_sigma_deg > 0 or em.rot_rel > 0 or em.rot_per_baseline_deg > 0
        dR = _so3_exp(rot).float() if has_rot else torch.eye(3, device=dev).expand(B, 3, 3)
        Rp = dR @ R12
        tp = (dR @ t12[..., None])[..., 0] + dt.float()

        labelled = all(d.obj_label is not None for d in f1 + f2)
        if em.moving_objects in ("registered", "masked") and labelled:
            O1 = _stack([d.obj_poses for d in f1])
            O2 = _stack([d.obj_poses for d in f2])
            X2p = register_objects(X2p, _stack([d.obj_label for d in f2]), T1, T2, O1, O2)
        X2 = X2p @ Rp.transpose(1, 2) + tp[:, None]
        if em.occlusion_sigma > 0:
            occ = _stack([d.occ_noise for d in f2])
            X2 = torch.where(vis2[..., None], X2, X2 * torch.exp(em.occlusion_sigma * occ)[..., None])
        X1 = X1p * scale[:, None, None]
        X2 = X2 * scale[:, None, None]

        c1 = _stack([d.c_base for d in f1]) * torch.where(vis1, 1.0, em.conf_occluded_self)
        c2 = _stack([d.c_base for d in f2]) * em.conf_cross * torch.where(vis2, 1.0, em.conf_occluded)
        q1 = _stack([d.q_base for d in f1]) * torch.where(vis1, 1.0, em.desc_conf_occluded)
        q2 = _stack([d.q_base for d in f2]) * torch.where(vis2, 1.0, em.desc_conf_occluded)
        gg = g[:, None].float()
        C1, C2 = (1 + c1 * gg)[..., None], (1 + c2 * gg)[..., None]
        Q1, Q2 = (q1 * gg)[..., None], (q2 * gg)[..., None]
        if em.moving_objects == "masked" and labelled:  # perfect handling (evaluation floor)
            on1 = (_stack([d.obj_label for d in f1]) >= 0)[..., None]
            on2 = (_stack([d.obj_label for d in f2]) >= 0)[..., None]
            C1, Q1 = C1.masked_fill(on1, 1.0), Q1.masked_fill(on1, 0.0)
            C2, Q2 = C2.masked_fill(on2, 1.0), Q2.masked_fill(on2, 0.0)
        D1 = _stack([d.D for d in f1])
        D2 = _stack([d.D for d in f2])
        return Prediction(X1, C1, D1, Q1), Prediction(X2, C2, D2, Q2)

    def _visible(self, P: torch.Tensor, K: torch.Tensor, z_other: torch.Tensor, H: int, W: int) -> torch.Tensor:
        """Points P [B, HW, 3] (in the other camera) that land on a pixel whose depth agrees [B, HW]."""
        z = P[..., 2]
        zs = z.clamp_min(1e-6)
        u = K[:, 0, 0, None] * P[..., 0] / zs + K[:, 0, 2, None]
        v = K[:, 1, 1, None] * P[..., 1] / zs + K[:, 1, 2, None]
        ui, vi = torch.round(u), torch.round(v)
        inside = (z > 1e-6) & (ui >= 0) & (ui <= W - 1) & (vi >= 0) & (vi <= H - 1)
        idx = (vi.clamp(0, H - 1) * W + ui.clamp(0, W - 1)).long()
        z_at = torch.gather(z_other, 1, idx)
        return inside & ((z_at - z).abs() <= self.error_model.visibility_tol * z)


# ----------------------------------------------------------------------------------------------
# factory
# ----------------------------------------------------------------------------------------------
_PRIOR_KEYS = ("seed", "img_size", "cache_size", "exact")


def make_oracle_prior(dataset, cfg_or_overrides: Any = None, device: str | torch.device = "cpu") -> OraclePrior:
    """Build the ground-truth prior for ``dataset``.

    cfg_or_overrides: a :class:`~mast3r_slam.config.Config` (uses ``dataset.img_size``), or a
    mapping of overrides: any :class:`OracleErrorModel` field, ``seed``, ``img_size``,
    ``cache_size`` and ``exact`` (True: no geometric error), or None for the defaults.
    """
    kwargs: dict = {}
    em = OracleErrorModel()
    if cfg_or_overrides is None:
        pass
    elif isinstance(cfg_or_overrides, Mapping):
        fields = {f.name: f for f in dataclasses.fields(OracleErrorModel)}
        ov = dict(cfg_or_overrides)
        if ov.pop("exact", False):
            em = OracleErrorModel.exact()
        changes = {}
        for k, v in ov.items():
            if k == "moving_objects":
                if v not in MOVING_OBJECT_MODES:
                    raise ConfigError(f"oracle prior: 'moving_objects' must be one of {', '.join(MOVING_OBJECT_MODES)}, got {v!r}")
                changes[k] = v
            elif k in fields:
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise ConfigError(f"oracle prior: '{k}' must be a number, got {v!r}")
                changes[k] = float(v)
            elif k in _PRIOR_KEYS:
                if isinstance(v, bool) or not isinstance(v, int):
                    raise ConfigError(f"oracle prior: '{k}' must be an integer, got {v!r}")
                kwargs[k] = v
            else:
                raise ConfigError(f"oracle prior: unknown option '{k}' (valid: {', '.join(list(fields) + list(_PRIOR_KEYS))})")
        em = dataclasses.replace(em, **changes)
    elif hasattr(cfg_or_overrides, "dataset") and hasattr(cfg_or_overrides.dataset, "img_size"):
        kwargs["img_size"] = int(cfg_or_overrides.dataset.img_size)
    else:
        raise ConfigError(f"oracle prior: expected a Config or a mapping of overrides, got {type(cfg_or_overrides).__name__}")
    if len(dataset) == 0:
        raise DatasetError(f"--prior oracle: {dataset.path} has no frames")
    s0 = dataset[0]
    if s0.depth is None or s0.T_WC_gt is None or dataset.K is None:
        what = "depth maps" if s0.depth is None else ("ground-truth poses" if s0.T_WC_gt is None else "intrinsics")
        raise DatasetError(
            f"--prior oracle: {dataset.path} has no {what}; the ground-truth prior needs depth, poses and intrinsics "
            "(use synthetic:<name> or a TUM RGB-D folder, or --prior mast3r)"
        )
    prior = OraclePrior(dataset, em, device=device, **kwargs)
    log.info("prior: %s", prior.description)
    return prior
