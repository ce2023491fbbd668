"""Moving-object handling: find pixels that move on their own and keep them out of SLAM.

The original assumes a static world. Here every tracked frame is checked against its keyframe
with the pose just solved, by a free-space test in both directions:

* each frame point, moved into the keyframe (``T_kf X_f``) and projected there, is compared with
  the depth the keyframe saw around that pixel; a point clearly *in front of* everything the
  keyframe saw occupies space the keyframe saw through, so it was not there at the keyframe's
  time: it moved in -> the frame pixel is dynamic (the frame's mask);
* each keyframe point moved into the frame and projected there, likewise against the frame's
  depth: a keyframe point in front of what the frame sees has gone -> one vote against the
  keyframe pixel (``keyframe_votes`` votes take it out of the map for good).

A static scene never violates free space: a point hidden by parallax lies *behind* what the
other view saw, and is not judged. Depth edges and small pose errors are absorbed by comparing
with the minimum depth of a small window (``edge_frac`` of the width) and a margin
(``rel_thresh``). Masks are cleaned of specks and thin lines, spread over depth-continuous
surfaces (an object flagged where it did not overlap itself is flagged whole; ``grow_frac``) and
grown by ``dilate_px``. Uncalibrated pointmaps are projected with pinhole intrinsics fitted to
them (principal point at the centre).

How the masks are used (docs/DYNAMIC.md): tracking solves again without the flagged pixels,
keyframe fusion leaves flagged keyframe pixels alone, the global optimisation zeroes the
confidence of the keyframes' dynamic pixels, and the exported map leaves them out. Per-frame
masks are written to ``dynamic_masks/`` and shown in the viewer.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .config import DynamicConfig
from .frame import Frame
from .geometry import pixel_grid
from .lie import Sim3

VOTES = "dyn_votes"  # Frame.extras key: int16 [HW] votes of a keyframe's pixels
MASK = "dyn_mask"  # Frame.extras key: bool [HW] dynamic pixels (frame: moving now; keyframe: left out of the map)


@dataclass
class Judgement:
    kf_hit: torch.Tensor  # [HW] bool, keyframe pixels whose content has gone (this frame's evidence)
    frame_mask: torch.Tensor  # [HW] bool, frame pixels that are dynamic (cleaned, grown, dilated)
    judged_f: torch.Tensor  # [HW] bool, frame pixels that could be judged
    judged_k: torch.Tensor  # [HW] bool, keyframe pixels that could be judged


def dilate(mask: torch.Tensor, H: int, W: int, px: int) -> torch.Tensor:
    """Grow a flat [HW] bool mask by ``px`` pixels (square neighbourhood)."""
    if px <= 0:
        return mask
    m = mask.reshape(1, 1, H, W).float()
    return (F.max_pool2d(m, 2 * px + 1, stride=1, padding=px) > 0).reshape(-1)


def grow(mask: torch.Tensor, z: torch.Tensor, H: int, W: int, iters: int, tol: float) -> torch.Tensor:
    """Spread a flat [HW] mask over depth-continuous surfaces by up to ``iters`` pixels.

    Moving objects are depth-continuous surfaces bounded by depth edges: pixels flagged on part of
    an object (where it did not overlap itself between the two times) spread over the rest of it.
    Depth edges (relative jump > ``tol`` between neighbours: the pixel on each side) stop the
    spread: each step is a 3 x 3 max-pool gated by the edge map (two launches, no host
    synchronisation), which cannot cross the barrier, not even diagonally at corners."""
    if iters <= 0:
        return mask
    f = max(1, W // 128)  # large images: spread on a grid of f x f blocks (fewer, cheaper steps)
    if f > 1 and H % f == 0 and W % f == 0:
        h, w = H // f, W // f
        zs = z.reshape(H, W)[f // 2 :: f, f // 2 :: f].reshape(-1)
        ms = F.max_pool2d(mask.reshape(1, 1, H, W).float(), f, stride=f).reshape(-1) > 0
        grown = grow(ms, zs, h, w, max(1, iters // f), tol).reshape(1, 1, h, w).float()
        up = F.interpolate(grown, scale_factor=f, mode="nearest").reshape(-1) > 0
        return (up & ~depth_edges(z, H, W, tol, 0)) | mask
    gate = ~depth_edges(z, H, W, tol, 0).reshape(1, 1, H, W)
    m = mask.reshape(1, 1, H, W).float()
    for _ in range(iters):
        m = F.max_pool2d(m, 3, stride=1, padding=1) * gate
    return (m.reshape(-1) > 0) | mask


def erode(mask: torch.Tensor, H: int, W: int, px: int) -> torch.Tensor:
    """Shrink a flat [HW] bool mask by ``px`` pixels (outside the image counts as unmasked)."""
    if px <= 0:
        return mask
    inv = F.pad((~mask).reshape(1, 1, H, W).float(), (px, px, px, px), value=1.0)
    return ~(F.max_pool2d(inv, 2 * px + 1, stride=1) > 0).reshape(-1)


def clean(mask: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """Close one-pixel holes, then remove specks and lines thinner than 3 pixels (opening):
    moving objects are blobs; what a static scene produces (occlusion edges, noise) is thin."""
    m = erode(dilate(mask, H, W, 1), H, W, 1)
    return dilate(erode(m, H, W, 1), H, W, 1)


def grow_iters(cfg: DynamicConfig, W: int) -> int:
    return int(round(cfg.grow_frac * W))


def edge_window(cfg: DynamicConfig, W: int) -> int:
    """Radius in pixels of the minimum-depth window and of the depth-edge band (``edge_frac``)."""
    return max(1, int(round(cfg.edge_frac * W)))


def pinhole(X: torch.Tensor, H: int, W: int, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Pinhole intrinsics [fx, fy, cx, cy] that best explain a pointmap [HW, 3] (uncalibrated mode).

    The principal point is the image centre; one focal length by least squares over the pixels
    (u - cx = f x/z, v - cy = f y/z)."""
    uv = pixel_grid(H, W, device=X.device, dtype=X.dtype)
    cx, cy = (W - 1) / 2, (H - 1) / 2
    z = X[:, 2]
    ok = (z > 1e-6) & torch.isfinite(X).all(-1)
    if valid is not None:
        ok = ok & valid
    a = torch.where(ok, X[:, 0] / z.clamp_min(1e-6), 0.0)
    b = torch.where(ok, X[:, 1] / z.clamp_min(1e-6), 0.0)
    du, dv = (uv[:, 0] - cx) * ok, (uv[:, 1] - cy) * ok
    f = (du * a + dv * b).sum() / (a * a + b * b).sum().clamp_min(1e-12)
    # (full_like rather than new_tensor: no host-to-device copy, so it can be captured in a CUDA graph)
    return torch.stack([f, f, torch.full_like(f, cx), torch.full_like(f, cy)])


def intrinsics_of(K: torch.Tensor | None, X: torch.Tensor, H: int, W: int, valid: torch.Tensor | None = None) -> torch.Tensor:
    """[fx, fy, cx, cy] from K [3, 3] (calibrated) or fitted to the pointmap X."""
    if K is not None:
        K = K.reshape(3, 3).to(X.dtype)
        return torch.stack([K[0, 0], K[1, 1], K[0, 2], K[1, 2]])
    return pinhole(X, H, W, valid)


def depth_edges(z: torch.Tensor, H: int, W: int, tol: float, px: int) -> torch.Tensor:
    """[HW] bool: pixels within ``px`` of a relative depth jump > ``tol`` between 4-neighbours.

    Pointmaps blur depth edges (a network does, and the stand-in imitates it): the pixels there
    have depths between the two surfaces and fail any free-space test, so they are not judged."""
    lz = torch.log(z.reshape(H, W).clamp_min(1e-6))
    t = math.log1p(tol)
    e = torch.zeros(H, W, dtype=torch.bool, device=z.device)
    jx = (lz[:, 1:] - lz[:, :-1]).abs() > t
    jy = (lz[1:] - lz[:-1]).abs() > t
    e[:, 1:] |= jx
    e[:, :-1] |= jx
    e[1:] |= jy
    e[:-1] |= jy
    return dilate(e.reshape(-1), H, W, px)


def free_space_violations(
    P: torch.Tensor, z_map: torch.Tensor, k: torch.Tensor, H: int, W: int, rel: float, radius: int, border: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Points P [N, 3] (in a view's camera) that lie clearly in front of everything that view saw.

    Each point is projected with k = [fx, fy, cx, cy]; the view's depth z_map [HW] is min-pooled over
    a (2 radius + 1)^2 window (so that depth edges and small projection errors do not count). A point
    nearer than (1 - rel) times that minimum occupies space the view saw through: it was not there
    when the view was taken (a static point would have been seen, or would be hidden behind what
    was seen). Points behind the surface (occluded) or outside the image are not judged.
    Returns (violation [N] bool, judged [N] bool, depth ratio z / z_seen [N])."""
    z = P[:, 2]
    zs = z.clamp_min(1e-6)
    u = k[0] * P[:, 0] / zs + k[2]
    v = k[1] * P[:, 1] / zs + k[3]
    b = float(border)
    judged = (z > 1e-6) & torch.isfinite(P).all(-1) & (u >= b) & (u <= W - 1 - b) & (v >= b) & (v <= H - 1 - b)
    zm = torch.where(z_map > 0, z_map, torch.full_like(z_map, float("inf"))).reshape(1, 1, H, W)
    zmin = -F.max_pool2d(-zm, 2 * radius + 1, stride=1, padding=radius).reshape(-1) if radius > 0 else zm.reshape(-1)
    idx = v.round().long().clamp(0, H - 1) * W + u.round().long().clamp(0, W - 1)
    z_seen = zmin[idx]
    judged = judged & torch.isfinite(z_seen)
    ratio = z / z_seen.clamp_min(1e-6)
    return judged & (ratio < 1.0 - rel), judged, ratio


def plausible(viol: torch.Tensor, judged: torch.Tensor, max_frac: float) -> torch.Tensor:
    """``viol``, or nothing where more than ``max_frac`` of the judged pixels violate free space:
    then the two views are not registered (a wrong pose or scale), which says nothing about motion.
    (Tensor arithmetic only: no host synchronisation, capturable in a CUDA graph.)"""
    ok = viol.sum() <= max_frac * judged.sum()
    return viol & ok


def judge(
    cfg: DynamicConfig,
    T_CkCf: torch.Tensor,
    X_f: torch.Tensor,
    X_k: torch.Tensor,
    k_f: torch.Tensor,
    k_k: torch.Tensor,
    usable_f: torch.Tensor,
    usable_k: torch.Tensor,
    H: int,
    W: int,
) -> Judgement:
    """Free-space test between a frame and its keyframe with the tracked pose.

    T_CkCf [1, 8] keyframe <- frame; X_f [HW, 3] the frame's pointmap (frame camera); X_k [HW, 3] the
    keyframe's (keyframe camera); k_f, k_k [4] their intrinsics [fx, fy, cx, cy]; usable_* [HW] bool
    (confident, finite). Frame points in front of what the keyframe saw have arrived (frame mask);
    keyframe points in front of what the frame sees have gone (keyframe hits, votes)."""
    T = T_CkCf.reshape(1, 8)
    radius = edge_window(cfg, W)
    Y = Sim3.act(T, X_f)  # frame points in the keyframe camera
    viol_f, judged_f, _ = free_space_violations(Y, X_k[:, 2], k_k, H, W, cfg.rel_thresh, radius, cfg.border_px)
    Z = Sim3.act(Sim3.inv(T), X_k)  # keyframe points in the frame camera
    viol_k, judged_k, _ = free_space_violations(Z, X_f[:, 2], k_f, H, W, cfg.rel_thresh, radius, cfg.border_px)
    usable_f = usable_f & ~depth_edges(X_f[:, 2], H, W, cfg.edge_depth_tol, radius)
    usable_k = usable_k & ~depth_edges(X_k[:, 2], H, W, cfg.edge_depth_tol, radius)
    frame_hit = plausible(viol_f & usable_f, judged_f & usable_f, cfg.max_moving_frac)
    kf_hit = plausible(viol_k & usable_k, judged_k & usable_k, cfg.max_moving_frac)
    frame_mask = clean(frame_hit, H, W)
    frame_mask = grow(frame_mask, X_f[:, 2], H, W, grow_iters(cfg, W), cfg.grow_depth_tol)
    frame_mask = dilate(frame_mask, H, W, cfg.dilate_px)
    return Judgement(kf_hit=kf_hit, frame_mask=frame_mask, judged_f=judged_f & usable_f, judged_k=judged_k & usable_k)


def fill_surfaces(mask: torch.Tensor, band: torch.Tensor, H: int, W: int, frac: float) -> torch.Tensor:
    """Flag whole every depth-continuous surface of which more than ``frac`` is already flagged.

    ``grow`` spreads a mask a bounded distance (it must not run along the floor from an object's
    feet); a surface bounded by depth edges all round (a head, a torso) that is mostly flagged is
    an object part, and its unflagged rest (where it overlapped itself between the two times) moved
    with it. Surfaces are the 4-connected components of the pixels outside ``band`` (the depth-edge
    pixels); labelled with OpenCV on the host (end of run only)."""
    if frac <= 0 or frac >= 1 or not bool(mask.any()):
        return mask
    import cv2
    import numpy as np

    inside = (~band).reshape(H, W).cpu().numpy().astype(np.uint8)
    n, labels = cv2.connectedComponents(inside, connectivity=4)
    lab = torch.from_numpy(labels.reshape(-1).astype(np.int64)).to(mask.device)
    size = torch.bincount(lab, minlength=n)
    hit = torch.bincount(lab, weights=mask.double(), minlength=n)
    full = hit > frac * size
    full[0] = False  # label 0: the band itself
    return mask | full[lab]


def outline(mask: torch.Tensor, band: torch.Tensor, H: int, W: int, px: int) -> torch.Tensor:
    """Extend a mask over the depth-edge pixels ``band`` it touches, up to ``px`` steps.

    Pointmaps blur depth edges: the pixels along an object's outline have depths between the
    object and what is behind it, they are never judged (``depth_edges``), and points there smear
    the object's silhouette into the map. Those connected to the object's mask go with it."""
    for _ in range(px):
        mask = mask | (dilate(mask, H, W, 1) & band)
    return mask


def keyframe_mask(keyframe: Frame) -> torch.Tensor | None:
    """The keyframe's current dynamic mask [HW] bool (None: nothing flagged yet)."""
    return keyframe.extras.get(MASK)


def keyframe_votes(cfg: DynamicConfig, keyframe: Frame, H: int, W: int, device) -> torch.Tensor:
    """The keyframe's votes [HW] int16 (created on first use, from a stored mask if there is one)."""
    votes = keyframe.extras.get(VOTES)
    if votes is None:
        votes = torch.zeros(H * W, dtype=torch.int16, device=device)
        old = keyframe.extras.get(MASK)
        if old is not None:  # a mask without votes (keyframe read back from the store)
            votes = torch.where(old.reshape(-1).to(device), torch.full_like(votes, cfg.keyframe_votes), votes)
    return votes


def update_votes(cfg: DynamicConfig, votes: torch.Tensor, kf_hit: torch.Tensor, H: int, W: int, z: torch.Tensor | None = None):
    """(votes, mask): this frame's evidence added to a keyframe's votes, and its mask from them."""
    votes = votes + dilate(kf_hit, H, W, cfg.dilate_px).to(torch.int16)
    m = clean(votes >= cfg.keyframe_votes, H, W)
    if z is not None:
        m = grow(m, z, H, W, grow_iters(cfg, W), cfg.grow_depth_tol)
    return votes, m


def add_votes(cfg: DynamicConfig, keyframe: Frame, kf_hit: torch.Tensor, H: int, W: int, z: torch.Tensor | None = None) -> None:
    """Count this frame's evidence against the keyframe's pixels and update its mask."""
    votes = keyframe_votes(cfg, keyframe, H, W, kf_hit.device)
    keyframe.extras[VOTES], keyframe.extras[MASK] = update_votes(cfg, votes, kf_hit, H, W, z)


def track_step(
    T_CkCf: torch.Tensor,
    X_f: torch.Tensor,
    X_k: torch.Tensor,
    Xf: torch.Tensor,
    Xk: torch.Tensor,
    p: torch.Tensor,
    sqrt_w: torch.Tensor,
    usable_f: torch.Tensor,
    usable_k: torch.Tensor,
    votes: torch.Tensor,
    kf_dyn: torch.Tensor,
    *K: torch.Tensor,
    cfg: DynamicConfig,
    H: int,
    W: int,
):
    """The whole per-frame check as one fixed-shape function (the tracker captures it in a CUDA
    graph: it is ~500 small kernels whose launch cost, not their GPU time, dominates).

    T_CkCf [1, 8] solved pose keyframe <- frame; X_f, X_k [HW, 3] the frame's and the keyframe's
    pointmaps; Xf, Xk [HW, 3] the matched points of the solve (Xf[i] matches keyframe pixel i) and p
    [HW, 2] the frame pixel of each match; sqrt_w [HW, 1] the solve's weights; usable_* [HW] bool;
    votes [HW] int16 and kf_dyn [HW] bool the keyframe's votes and mask so far; K: the intrinsics
    [3, 3] in calibrated mode (then frame and keyframe share them), none otherwise.
    Returns (frame mask [HW], weights for the second solve [HW, 1] (this frame's moving matches and
    3D-disagreeing matches removed), keyframe pixels fusion must leave alone [HW], new votes, new
    keyframe mask)."""
    Kc = K[0] if K else None
    k_f = intrinsics_of(Kc, X_f, H, W, usable_f)
    k_k = intrinsics_of(Kc, X_k, H, W, usable_k)
    J = judge(cfg, T_CkCf, X_f, X_k, k_f, k_k, usable_f, usable_k, H, W)
    pix = p.round().long()
    pix_idx = pix[:, 1].clamp(0, H - 1) * W + pix[:, 0].clamp(0, W - 1)
    excluded = J.kf_hit | J.frame_mask[pix_idx]  # keyframe pixels that moved or whose match moved
    # and, for the second solve only, matches whose two points disagree in 3D by more than
    # rel_thresh of the range with the solved pose: an object that a two-view network registered
    # onto itself moves sideways without violating free space, yet biases the pose
    # (only where free space shows motion in this pair: in a static scene, 3D disagreement is depth
    # noise and parallax, and the second solve then repeats the first)
    resid = (Sim3.act(T_CkCf, Xf) - Xk).norm(dim=-1)
    moved = J.frame_mask.any() | J.kf_hit.any() | kf_dyn.any()
    excluded = excluded | ((resid > cfg.rel_thresh * Xk.norm(dim=-1)) & moved)
    sqrt_w2 = sqrt_w * (~excluded).reshape(-1, 1)
    votes, kf_mask = update_votes(cfg, votes, J.kf_hit, H, W, X_k[:, 2])
    return J.frame_mask, sqrt_w2, J.kf_hit | kf_dyn, votes, kf_mask


def init_keyframe(cfg: DynamicConfig, frame: Frame) -> None:
    """A frame becoming a keyframe keeps its own dynamic pixels out of the map from the start."""
    m = frame.extras.get(MASK)
    if m is None:
        return
    frame.extras[VOTES] = m.reshape(-1).to(torch.int16) * cfg.keyframe_votes


def cross_check(cfg: DynamicConfig, keyframes: list[Frame], offsets: tuple[int, ...] = (-2, -1, 1, 2)) -> int:
    """Map clean-up at the end of a run: test each keyframe against its neighbouring keyframes.

    Keyframes are farther apart in time than a frame and its keyframe, so an object that moved
    too little while its keyframe was being tracked has usually moved by then. With the final
    poses, every keyframe's points are projected into each neighbour (``offsets`` in keyframe
    order); points in front of what ``cross_check_votes`` neighbours saw have gone and join the
    keyframe's dynamic mask (cleaned and grown like the tracking masks). The test is relative to
    the bulk of the view (median depth ratio, when below 1): keyframes far apart can disagree in
    scale after the optimisation, and that says nothing about motion; a pair where most pixels
    'moved' is ignored (``plausible``). Each mask then takes whole the surfaces it mostly covers
    (``fill_surfaces``) and the blurred depth-edge pixels along its outline (``outline``).
    Returns the number of pixels added. Runs once per run, one projection of all pixels per
    (keyframe, neighbour).
    """
    n = len(keyframes)
    if n < 2 or not cfg.enabled or cfg.cross_check_votes <= 0:
        return 0
    H, W = keyframes[0].img_shape
    dev = keyframes[0].X_canon.device
    radius = edge_window(cfg, W)
    # per keyframe, once: intrinsics, judgeable pixels (away from depth edges), pose
    k = [intrinsics_of(f.K, f.X_canon, H, W, f.C_avg()[:, 0] > 1.0) for f in keyframes]
    usable = [~depth_edges(f.X_canon[:, 2], H, W, cfg.edge_depth_tol, radius) for f in keyframes]
    T = [f.T_WC.reshape(1, 8).to(dev) for f in keyframes]
    added = 0
    for i, f in enumerate(keyframes):
        hits = torch.zeros(H * W, dtype=torch.int16, device=dev)
        for j in (i + o for o in offsets if 0 <= i + o < n):
            P = Sim3.act(Sim3.mul(Sim3.inv(T[j]), T[i]), f.X_canon)
            _, judged, ratio = free_space_violations(P, keyframes[j].X_canon[:, 2], k[j], H, W, cfg.rel_thresh, radius, cfg.border_px)
            judged = judged & usable[i]
            # keyframes far apart can disagree in scale after the final optimisation: a view whose
            # bulk lies nearer than the neighbour saw it is compared relative to that bulk
            bulk = torch.where(judged, ratio, torch.full_like(ratio, float("nan"))).nanmedian().nan_to_num(1.0).clamp(max=1.0)
            viol = judged & (ratio < (1.0 - cfg.rel_thresh) * bulk)
            hits += plausible(viol, judged, cfg.max_moving_frac).to(torch.int16)
        z = f.X_canon[:, 2]
        m = clean(hits >= cfg.cross_check_votes, H, W)
        m = dilate(grow(m, z, H, W, grow_iters(cfg, W), cfg.grow_depth_tol), H, W, cfg.dilate_px)
        old = f.extras.get(MASK)
        new = m if old is None else (m | old.reshape(-1).to(dev))
        band = ~usable[i]
        new = outline(fill_surfaces(new, band, H, W, cfg.fill_frac), band, H, W, cfg.outline_steps * radius)
        added += int(new.sum()) - (0 if old is None else int(old.sum()))
        f.extras[MASK] = new
    return added
