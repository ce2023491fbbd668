"""Moving-object handling: find pixels that move on their own and keep them out of SLAM.

The original assumes a static world. Here every tracked frame is checked against its keyframe
with the pose just solved: for a keyframe pixel q matched to frame pixel p, the frame's point
moved into the keyframe, ``Y = T_kf X_f(p)``, and the keyframe's point ``X_k(q)`` lie on (nearly)
the same ray; in a static scene their ranges agree up to the prediction's depth error. When they
are farther apart than ``rel_thresh`` times the range, something moved:

* the frame sees something *nearer* than the keyframe did (``|Y| < |X_k|``): an object has come
  into frame pixel p -> p is dynamic in the frame;
* the frame sees something *farther* (``|Y| > |X_k|``): what the keyframe saw at q has gone ->
  q is dynamic in the keyframe (one vote; ``keyframe_votes`` votes mark it for good).

Matches that sit on the frame's border (clamped matches, out of view) are not judged. A lateral
disagreement (the points differ by more than ``rel_thresh`` of the range, but not in range) marks
both pixels: an object that a two-view network registered onto itself moved between the two
times. Masks are grown by ``dilate_px``.

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
from .lie import Sim3

VOTES = "dyn_votes"  # Frame.extras key: int16 [HW] votes of a keyframe's pixels
MASK = "dyn_mask"  # Frame.extras key: bool [HW] dynamic pixels (frame: moving now; keyframe: left out of the map)


@dataclass
class Judgement:
    kf_hit: torch.Tensor  # [HW] bool, keyframe pixels whose content has gone (judged this frame)
    frame_hit_q: torch.Tensor  # [HW] bool, keyframe pixels whose matched frame pixel shows a newcomer
    frame_mask: torch.Tensor  # [HW] bool, frame pixels that are dynamic (scattered, dilated)
    judged: torch.Tensor  # [HW] bool, keyframe pixels that could be judged


def dilate(mask: torch.Tensor, H: int, W: int, px: int) -> torch.Tensor:
    """Grow a flat [HW] bool mask by ``px`` pixels (square neighbourhood)."""
    if px <= 0:
        return mask
    m = mask.reshape(1, 1, H, W).float()
    return (F.max_pool2d(m, 2 * px + 1, stride=1, padding=px) > 0).reshape(-1)


def grow(mask: torch.Tensor, z: torch.Tensor, H: int, W: int, iters: int, tol: float) -> torch.Tensor:
    """Grow a flat [HW] mask into 4-neighbours of similar depth (|log z - log z'| < tol), ``iters`` steps.

    Moving objects are depth-continuous surfaces bounded by depth edges: pixels flagged on part of
    an object (where it did not overlap itself between the two times) spread over the rest of it."""
    if iters <= 0 or not bool(mask.any()):
        return mask
    lz = torch.log(z.reshape(H, W).clamp_min(1e-6))
    m = mask.reshape(H, W).clone()
    # similarity to the right / lower neighbour, computed once
    sim_x = (lz[:, 1:] - lz[:, :-1]).abs() < tol  # [H, W-1]
    sim_y = (lz[1:] - lz[:-1]).abs() < tol  # [H-1, W]
    for _ in range(iters):
        n = m.clone()
        n[:, 1:] |= m[:, :-1] & sim_x
        n[:, :-1] |= m[:, 1:] & sim_x
        n[1:] |= m[:-1] & sim_y
        n[:-1] |= m[1:] & sim_y
        m = n
    return m.reshape(-1)


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


def judge(
    cfg: DynamicConfig,
    T_CkCf: torch.Tensor,
    Xf_match: torch.Tensor,
    Xk: torch.Tensor,
    p_match: torch.Tensor,
    usable: torch.Tensor,
    H: int,
    W: int,
    z_frame: torch.Tensor | None = None,
) -> Judgement:
    """Compare the keyframe's points with the frame's matched points moved by the tracked pose.

    T_CkCf [1, 8] keyframe <- frame; Xf_match [HW, 3] frame points at each keyframe pixel's match
    (frame camera); Xk [HW, 3] keyframe points (keyframe camera); p_match [HW, 2] (u, v) match in
    the frame (float or integer); usable [HW] bool (finite, confident predictions).
    """
    Y = Sim3.act(T_CkCf.reshape(1, 8), Xf_match)
    rk = Xk.norm(dim=-1)
    ry = Y.norm(dim=-1)
    b = float(cfg.border_px)
    u, v = p_match[:, 0].float(), p_match[:, 1].float()
    inside = (u >= b) & (u <= W - 1 - b) & (v >= b) & (v <= H - 1 - b)
    judged = usable & inside & (rk > 0) & (ry > 0)
    moved = judged & ((Y - Xk).norm(dim=-1) > cfg.rel_thresh * rk)
    log_ratio = torch.log(ry.clamp_min(1e-12) / rk.clamp_min(1e-12))
    half = 0.5 * math.log1p(cfg.rel_thresh)
    kf_hit = moved & (log_ratio > -half)  # the keyframe's content is not where it was (gone / moved)
    frame_hit_q = moved & (log_ratio < half)  # the frame's content is not where the keyframe's was
    # scatter to the frame pixels matched by the flagged keyframe pixels
    pu = p_match[:, 0].round().long().clamp(0, W - 1)
    pv = p_match[:, 1].round().long().clamp(0, H - 1)
    frame_mask = torch.zeros(H * W, dtype=torch.bool, device=Xk.device)
    frame_mask[(pv * W + pu)[frame_hit_q]] = True
    frame_mask = clean(frame_mask, H, W)
    if z_frame is not None:
        frame_mask = grow(frame_mask, z_frame, H, W, grow_iters(cfg, W), cfg.grow_depth_tol)
    frame_mask = dilate(frame_mask, H, W, cfg.dilate_px)
    return Judgement(kf_hit=kf_hit, frame_hit_q=frame_hit_q, frame_mask=frame_mask, judged=judged)


def keyframe_mask(keyframe: Frame) -> torch.Tensor | None:
    """The keyframe's current dynamic mask [HW] bool (None: nothing flagged yet)."""
    return keyframe.extras.get(MASK)


def add_votes(cfg: DynamicConfig, keyframe: Frame, kf_hit: torch.Tensor, H: int, W: int, z: torch.Tensor | None = None) -> None:
    """Count this frame's evidence against the keyframe's pixels and update its mask."""
    votes = keyframe.extras.get(VOTES)
    if votes is None:
        votes = torch.zeros(H * W, dtype=torch.int16, device=kf_hit.device)
        old = keyframe.extras.get(MASK)
        if old is not None:  # a mask without votes (keyframe read back from the store)
            votes = torch.where(old.reshape(-1), torch.full_like(votes, cfg.keyframe_votes), votes)
    votes = votes + dilate(kf_hit, H, W, cfg.dilate_px).to(torch.int16)
    keyframe.extras[VOTES] = votes
    m = clean(votes >= cfg.keyframe_votes, H, W)
    if z is not None:
        m = grow(m, z, H, W, grow_iters(cfg, W), cfg.grow_depth_tol)
    keyframe.extras[MASK] = m


def init_keyframe(cfg: DynamicConfig, frame: Frame) -> None:
    """A frame becoming a keyframe keeps its own dynamic pixels out of the map from the start."""
    m = frame.extras.get(MASK)
    if m is None:
        return
    frame.extras[VOTES] = m.reshape(-1).to(torch.int16) * cfg.keyframe_votes
