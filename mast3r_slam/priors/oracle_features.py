"""Image-only features of the ground-truth prior: matching descriptors, retrieval features, codebook.

Nothing here sees depth or poses, so the stand-in's matching and place recognition work from
image content alone, as the network's do.

* :func:`local_descriptors` - per-pixel 24-d unit descriptors: contrast-normalised intensity
  patches at three scales (5x5 samples, 1, 2 and 4 px apart) plus opponent-colour samples,
  projected by a fixed random matrix, smoothed (2 px) and L2-normalised; also the local contrast
  used for Q. The smoothing gives each match a broad similarity peak, which the coarse-to-fine
  descriptor refinement of matching needs (it samples a 5 px grid first).
* :func:`retrieval_features` - ViT-patch-like local features for place recognition: a dense
  grid of 16 px patches on a 128 px wide copy of the image, each described by gradient-
  orientation histograms, a coarse intensity layout and colour, projected to ``RETRIEVAL_DIM``
  by a fixed orthogonal matrix; the ``RETRIEVAL_TOPK`` most contrasted patches are kept.
* :func:`retrieval_codebook` - deterministic k-means centroids of such features computed on
  procedurally generated images (cached per process).
* :func:`hash_normal` - counter-based Gaussian numbers from integer keys (vectorised), so that
  per-pair noise depends only on (seed, frame ids) and no Python loop over pairs is needed.
"""
from __future__ import annotations

import functools

import cv2
import numpy as np

DESC_DIM = 24
RETRIEVAL_DIM = 64
RETRIEVAL_TOPK = 200
RETRIEVAL_WIDTH = 128
RETRIEVAL_PATCH = 16
RETRIEVAL_STRIDE = 4
CODEBOOK_SIZE = 256

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


# ----------------------------------------------------------------------------------------------
# counter-based random numbers
# ----------------------------------------------------------------------------------------------
def _splitmix(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = (x + np.uint64(0x9E3779B97F4A7C15)) & _M64
        z = x
        z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _M64
        z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _M64
        return z ^ (z >> np.uint64(31))


def hash_uniform(keys: np.ndarray, n: int) -> np.ndarray:
    """Uniform numbers in (0, 1) from integer keys [B, m] -> [B, n] (float64)."""
    keys = np.asarray(keys, dtype=np.int64).astype(np.uint64)
    h = np.full(keys.shape[0], 0x243F6A8885A308D3, dtype=np.uint64)
    for k in range(keys.shape[1]):
        h = _splitmix(h ^ keys[:, k])
    ctr = np.arange(1, n + 1, dtype=np.uint64)[None]
    with np.errstate(over="ignore"):
        z = _splitmix((h[:, None] + ctr * np.uint64(0xD1B54A32D192ED03)) & _M64)
    return ((z >> np.uint64(11)).astype(np.float64) + 0.5) / float(2**53)


def hash_normal(keys: np.ndarray, n: int) -> np.ndarray:
    """Standard normal numbers from integer keys [B, m] -> [B, n] (Box-Muller, float64)."""
    m = (n + 1) // 2
    u = hash_uniform(keys, 2 * m)
    r = np.sqrt(-2 * np.log(u[:, :m]))
    th = 2 * np.pi * u[:, m:]
    return np.concatenate([r * np.cos(th), r * np.sin(th)], 1)[:, :n]


# ----------------------------------------------------------------------------------------------
# per-pixel matching descriptors
# ----------------------------------------------------------------------------------------------
def _gray(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img, np.float32)
    return img[..., 0] * 0.299 + img[..., 1] * 0.587 + img[..., 2] * 0.114


def _shifts(a: np.ndarray, radius: int, step: int) -> np.ndarray:
    """Stack of shifted copies (reflect border) [H, W, (2r+1)^2] at offsets step*{-r..r}^2."""
    p = radius * step
    H, W = a.shape
    pad = cv2.copyMakeBorder(a, p, p, p, p, cv2.BORDER_REFLECT_101)
    out = [pad[p + dy * step : p + dy * step + H, p + dx * step : p + dx * step + W] for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)]
    return np.stack(out, -1)


#: intensity scales of the descriptors: (Gaussian blur sigma px, sample spacing px, weight)
DESC_SCALES = ((0.8, 1, 1.0), (1.6, 2, 1.0), (3.2, 4, 1.0))
DESC_COLOR_WEIGHT = 4.0
DESC_SMOOTH = 2.0  # Gaussian smoothing (px) of the descriptor field


@functools.lru_cache(maxsize=4)
def _desc_projection(dim: int, n_scales: int) -> tuple[list, np.ndarray]:
    """Fixed random projections: one per 5x5 intensity scale, one for 2 x 3x3 colour samples."""
    rng = np.random.default_rng(2024_24)
    n_in = 25 * n_scales + 18
    M = (rng.standard_normal((n_in, dim)) / np.sqrt(n_in)).astype(np.float32)
    return [M[25 * k : 25 * (k + 1)] for k in range(n_scales)], M[25 * n_scales :]


def local_descriptors(img, dim: int = DESC_DIM):
    """Unit descriptors [H, W, dim] and local contrast [H, W] of an RGB image in [0, 1].

    ``img``: [H, W, 3] numpy array or torch tensor (any device); returns torch tensors on the
    same device (float32). Each descriptor is ``normalise(sum_s M_s (p_s - mean p_s) /
    (std p_s + 0.01) + 4 M_c c)`` for contrast-normalised 5x5 intensity patches p_s (Gaussian
    blur 0.8 / 1.6 px, samples 1 / 2 px apart) and 3x3 opponent-colour samples c (3 px apart),
    evaluated as dilated convolutions (no per-pixel loops, no patch tensors), then smoothed by a
    ``DESC_SMOOTH`` px Gaussian and renormalised.
    """
    import torch
    import torch.nn.functional as tF

    t = torch.as_tensor(np.asarray(img, np.float32) if not isinstance(img, torch.Tensor) else img).float()
    dev = t.device
    rgb = t.permute(2, 0, 1)[None]  # [1, 3, H, W]
    g = (rgb[:, 0:1] * 0.299 + rgb[:, 1:2] * 0.587 + rgb[:, 2:3] * 0.114)
    Ms, Mc = _desc_projection(dim, len(DESC_SCALES))
    Mc = torch.from_numpy(Mc).to(dev)
    out = torch.zeros((1, dim) + g.shape[2:], device=dev)
    contrast = None
    for (sigma, step, weight), M in zip(DESC_SCALES, Ms):
        M = torch.from_numpy(M).to(dev) * weight
        gs = _blur(g, sigma)
        pad = 2 * step
        gp = tF.pad(gs, (pad, pad, pad, pad), mode="reflect")
        ones = torch.full((1, 1, 5, 5), 1 / 25, device=dev)
        mu = tF.conv2d(gp, ones, dilation=step)
        ex2 = tF.conv2d(gp * gp, ones, dilation=step)
        sd = (ex2 - mu * mu).clamp_min(0).sqrt()
        if contrast is None:
            contrast = sd
        proj = tF.conv2d(gp, M.T.reshape(dim, 1, 5, 5), dilation=step)  # sum_k M[k] p_k
        proj -= mu * M.sum(0)[None, :, None, None]
        out += proj.div_(sd + 0.01)
    opp = torch.cat([rgb[:, 0:1] - rgb[:, 1:2], 0.5 * (rgb[:, 0:1] + rgb[:, 1:2]) - rgb[:, 2:3]], 1)
    opp = tF.pad(_blur(opp, 2.0), (3, 3, 3, 3), mode="reflect")
    out += DESC_COLOR_WEIGHT * tF.conv2d(opp, Mc.T.reshape(dim, 2, 3, 3), dilation=3)
    out = out / (out.norm(dim=1, keepdim=True) + 1e-12)
    if DESC_SMOOTH > 0:  # a smooth similarity peak, so that coarse-to-fine refinement finds it
        out = _blur(out, DESC_SMOOTH)
        out = out / (out.norm(dim=1, keepdim=True) + 1e-12)
    return out[0].permute(1, 2, 0).contiguous(), contrast[0, 0]


def descriptor_ambiguity(D, radius: int = 15, step: int = 3):
    """Largest cosine between each pixel's descriptor and those 4..``radius`` px away [H, W].

    Offsets on a grid of ``step`` px (excluding the 3x3 centre), as the descriptor refinement of
    matching searches; pixels outside the image count as 0. Values near 1 mean the descriptor
    does not localise (flat or repetitive texture): the prior lowers Q there, as a learned
    descriptor confidence would.
    """
    import torch.nn.functional as tF

    H, W, _ = D.shape
    Dp = tF.pad(D.permute(2, 0, 1), (radius, radius, radius, radius))  # zeros outside
    amb = D.new_full((H, W), -1.0)
    for dy in range(-radius, radius + 1, step):
        for dx in range(-radius, radius + 1, step):
            if abs(dx) < step and abs(dy) < step:
                continue
            sh = Dp[:, radius + dy : radius + dy + H, radius + dx : radius + dx + W]
            amb = amb.maximum((sh.permute(1, 2, 0) * D).sum(-1))
    return amb


def _blur(x, sigma: float):
    """Separable Gaussian blur with reflect border of [1, C, H, W]."""
    import torch
    import torch.nn.functional as tF

    r = max(int(np.ceil(3 * sigma)), 1)
    k = torch.exp(-torch.arange(-r, r + 1, dtype=torch.float32, device=x.device) ** 2 / (2 * sigma * sigma))
    k = k / k.sum()
    C = x.shape[1]
    x = tF.pad(x, (r, r, 0, 0), mode="reflect")
    x = tF.conv2d(x, k.reshape(1, 1, 1, -1).expand(C, 1, 1, -1), groups=C)
    x = tF.pad(x, (0, 0, r, r), mode="reflect")
    return tF.conv2d(x, k.reshape(1, 1, -1, 1).expand(C, 1, -1, 1), groups=C)


# ----------------------------------------------------------------------------------------------
# retrieval features
# ----------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def _retrieval_projection(n_in: int, dim: int) -> np.ndarray:
    rng = np.random.default_rng(4096_64)
    q, _ = np.linalg.qr(rng.standard_normal((max(n_in, dim), max(n_in, dim))))
    return q[:n_in, :dim].astype(np.float32)


def _patch_features(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All dense-grid patch features [P, RETRIEVAL_DIM] (unit) and their attention [P]."""
    img = np.asarray(img, np.float32)
    h, w = img.shape[:2]
    W = RETRIEVAL_WIDTH
    H = max(int(round(h * W / w)), RETRIEVAL_PATCH)
    small = cv2.resize(img, (W, H), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), 0.7)
    g = _gray(small)
    gx = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3) / 8
    gy = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3) / 8
    mag = np.sqrt(gx * gx + gy * gy)
    ang = (np.arctan2(gy, gx) % (2 * np.pi)) / (2 * np.pi) * 8
    b0 = np.floor(ang).astype(np.int64) % 8
    fr = ang - np.floor(ang)
    bins = np.zeros((H, W, 8), np.float32)
    np.put_along_axis(bins, b0[..., None], (mag * (1 - fr))[..., None], -1)
    b1 = np.take_along_axis(bins, ((b0 + 1) % 8)[..., None], -1) + (mag * fr)[..., None]
    np.put_along_axis(bins, ((b0 + 1) % 8)[..., None], b1, -1)
    opp = np.stack([small[..., 0] - small[..., 1], 0.5 * (small[..., 0] + small[..., 1]) - small[..., 2]], -1)
    P, S = RETRIEVAL_PATCH, RETRIEVAL_STRIDE
    ys = np.arange(0, H - P + 1, S)
    xs = np.arange(0, W - P + 1, S)

    def cells(a: np.ndarray, n: int) -> np.ndarray:
        """Mean of ``a`` over an n x n grid of cells of every patch -> [Py, Px, n*n, C]."""
        c = P // n
        a3 = a if a.ndim == 3 else a[..., None]
        box = cv2.boxFilter(a3, -1, (c, c), normalize=True, borderType=cv2.BORDER_REPLICATE)
        box = box if box.ndim == 3 else box[..., None]
        off = np.arange(n) * c + c // 2  # cell centres within the patch
        yy = (ys[:, None] + off[None])  # [Py, n]
        xx = (xs[:, None] + off[None])  # [Px, n]
        v = box[yy[:, None, :, None], xx[None, :, None, :]]  # [Py, Px, n, n, C]
        return v.reshape(len(ys), len(xs), n * n, -1)

    lay = cells(g, 4)[..., 0]  # [Py, Px, 16] coarse intensity layout
    lay_mu = lay.mean(-1, keepdims=True)
    lay_sd = lay.std(-1, keepdims=True)
    hog = cells(bins, 2).reshape(len(ys), len(xs), -1)  # [Py, Px, 32]
    hog_n = np.linalg.norm(hog, axis=-1, keepdims=True)
    col = cells(opp, 2).reshape(len(ys), len(xs), -1)  # [Py, Px, 8]
    f = np.concatenate([(lay - lay_mu) / (lay_sd + 0.02), 3.0 * hog / (hog_n + 0.05), 6.0 * col], -1)
    f = f.reshape(-1, f.shape[-1])
    att = (lay_sd[..., 0] + hog_n[..., 0]).reshape(-1)
    z = f @ _retrieval_projection(f.shape[1], RETRIEVAL_DIM)
    z /= np.linalg.norm(z, axis=1, keepdims=True) + 1e-12
    return z.astype(np.float32), att.astype(np.float32)


def retrieval_features(img: np.ndarray, topk: int = RETRIEVAL_TOPK) -> np.ndarray:
    """Local retrieval features [k, RETRIEVAL_DIM] of an RGB image in [0, 1], most salient first."""
    z, att = _patch_features(img)
    k = min(topk, len(z))
    order = np.argsort(-att, kind="stable")[:k]
    return z[order]


@functools.lru_cache(maxsize=1)
def retrieval_codebook(size: int = CODEBOOK_SIZE) -> np.ndarray:
    """Deterministic visual-word centroids [size, RETRIEVAL_DIM]: k-means (12 Lloyd iterations
    from a seeded random start) of the features of 16 procedurally generated 128x96 images."""
    from ..synthetic import textures as tex

    rng = np.random.default_rng(77_000)
    feats = []
    kinds = ["poster", "stone", "planks", "fabric", "tiles", "wallpaper", "cardboard", "plaster"]
    for i in range(16):
        img = tex.make_texture(kinds[i % len(kinds)], rng, 96, 128)
        if i % 3 == 0:  # composite: a poster over another texture
            tex.poster_into(rng, img, int(rng.integers(0, 48)), int(rng.integers(0, 64)), 48, 64)
        feats.append(_patch_features(img)[0])
    X = np.concatenate(feats).astype(np.float32)
    C = X[rng.choice(len(X), size=size, replace=False)]
    for _ in range(12):
        a = np.argmin((C * C).sum(1)[None] - 2 * X @ C.T, axis=1)
        onehot = np.zeros((len(X), size), np.float32)
        onehot[np.arange(len(X)), a] = 1.0
        cnt = onehot.sum(0)
        sums = onehot.T @ X
        C = np.where(cnt[:, None] > 0, sums / np.maximum(cnt, 1)[:, None], C)
    return C.astype(np.float32)
