"""The per-run results folder.

Layout of ``<out_dir>/`` (see docs/DATASETS.md)::

    config.yaml                   resolved configuration of the run
    trajectory.txt                every frame, TUM format, SE(3) part of the Sim(3) T_WC
    trajectory_keyframes.txt      keyframes only (the original's output; evaluation protocol)
    map.ply                       binary PLY: x y z float, red green blue uchar, confidence float
    scene.glb                     glTF 2.0: coloured points + keyframe camera frustums
    keyframes/<timestamp>.png     keyframe image at network resolution (RGB)
    keyframes/<timestamp>.npz     depth [H,W], confidence [H,W], pointmap [H,W,3] (camera frame),
                                  T_WC [8] Sim(3), K [3,3] (NaN when uncalibrated), timestamp, rgb,
                                  dynamic [H,W] bool (pixels left out of the map as moving)
    dynamic_masks/<timestamp>.png a tracked frame's moving pixels (255); frames without a file had none
    metrics.json                  run statistics (frames, keyframes, fps, ATE, prior, ...)

:class:`ResultsWriter` writes each part independently (so the pipeline can write at the end,
on Ctrl-C and when a worker dies) and every file atomically (temporary file + rename): a file
is either the previous complete version or the new complete version. The map export is
vectorised over keyframes of equal size (one batched Sim(3) action).
"""
from __future__ import annotations

import io
import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..lie import Sim3
from .atomic import atomic_open, atomic_write_bytes, atomic_write_text
from .glb import frustum_vertices, glb_bytes
from .ply import ply_bytes
from .trajectory import write_tum

log = logging.getLogger(__name__)

#: files and folders owned by a results folder (removed by ``clean``)
OUTPUT_NAMES = (
    "config.yaml",
    "trajectory.txt",
    "trajectory_keyframes.txt",
    "map.ply",
    "scene.glb",
    "metrics.json",
    "keyframes",
    "dynamic_masks",
)
DEFAULT_C_THRESH = 1.5  # the original viewer's default confidence threshold, also used headless
DEFAULT_MAX_GLB_POINTS = 2_000_000


def _np(a, dtype=None) -> np.ndarray | None:
    if a is None:
        return None
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    a = np.asarray(a)
    return a.astype(dtype) if dtype is not None else a


@dataclass
class MapKeyframe:
    """What the results writer needs of one keyframe (numpy arrays or tensors, any device)."""

    timestamp: str
    T_WC: Any  # [8] (or [1, 8]) Sim(3) camera-to-world [t, q_xyzw, s]
    X_canon: Any  # [H, W, 3] or [H*W, 3] canonical pointmap in the keyframe's camera frame
    C_avg: Any  # [H, W], [H*W] or [H*W, 1] average confidence C / N
    rgb: Any  # [H, W, 3] uint8 (or float in [0, 1])
    K: Any = None  # [3, 3] intrinsics at network resolution (calibrated mode), else None
    dyn_mask: Any = None  # [H, W] or [H*W] bool: moving pixels, left out of the map (None: none)

    @classmethod
    def from_frame(cls, frame) -> "MapKeyframe":
        """From a :class:`mast3r_slam.frame.Frame` with its fused pointmap."""
        return cls(
            timestamp=str(frame.timestamp if frame.timestamp != "" else frame.frame_id),
            T_WC=frame.T_WC,
            X_canon=frame.X_canon,
            C_avg=frame.C_avg(),
            rgb=frame.uimg,
            K=frame.K,
            dyn_mask=frame.extras.get("dyn_mask"),
        )

    def pose(self) -> np.ndarray:
        """T_WC as a float64 [8] Sim(3) (an SE(3) [7] gets scale 1)."""
        T = _np(self.T_WC, np.float64).reshape(-1)
        if T.size == 7:
            T = np.concatenate([T, [1.0]])
        if T.size != 8:
            raise ValueError(f"MapKeyframe {self.timestamp}: T_WC must be a Sim(3) [8] (or SE(3) [7]), got {T.size} values")
        return T

    def arrays(self) -> dict[str, np.ndarray]:
        """Normalised numpy arrays: rgb [H,W,3] uint8, X [H,W,3] f32, C [H,W] f32, T [8] f64, K [3,3] or None."""
        rgb = _np(self.rgb)
        if rgb.dtype != np.uint8:
            rgb = np.clip(rgb.astype(np.float32) * 255.0, 0, 255).astype(np.uint8)  # truncation, as the original
        H, W = rgb.shape[:2]
        X = _np(self.X_canon, np.float32).reshape(H, W, 3)
        C = _np(self.C_avg, np.float32).reshape(H, W)
        T = self.pose()
        K = None if self.K is None else _np(self.K, np.float64).reshape(3, 3)
        dyn = np.zeros((H, W), bool) if self.dyn_mask is None else _np(self.dyn_mask).reshape(H, W).astype(bool)
        return {"rgb": rgb, "X": X, "C": C, "T": T, "K": K, "dyn": dyn}


def safe_name(timestamp: str) -> str:
    """A file name for a timestamp (characters other than letters, digits, '.', '_', '-' -> '_')."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", str(timestamp)) or "_"


def _constrain_to_rays(X: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """X [B, H, W, 3], K [B, 3, 3] -> z K^-1 [u, v, 1] at each pixel (calibrated maps)."""
    B, H, W, _ = X.shape
    v, u = torch.meshgrid(torch.arange(H, dtype=X.dtype), torch.arange(W, dtype=X.dtype), indexing="ij")
    fx, fy = K[:, 0, 0].view(B, 1, 1), K[:, 1, 1].view(B, 1, 1)
    cx, cy = K[:, 0, 2].view(B, 1, 1), K[:, 1, 2].view(B, 1, 1)
    z = X[..., 2]
    return torch.stack([(u - cx) / fx * z, (v - cy) / fy * z, z], dim=-1)


def map_points(
    keyframes: Sequence[MapKeyframe], c_thresh: float = DEFAULT_C_THRESH, batch: int = 32
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World points of all keyframes with average confidence > ``c_thresh`` (moving pixels left out).

    Each canonical pointmap (constrained to its pixel rays when the keyframe has K) is mapped by
    its full Sim(3) T_WC. Returns (xyz [P, 3] float32, rgb [P, 3] uint8, confidence [P] float32),
    keyframes in order, pixels row-major. Vectorised over batches of up to ``batch`` keyframes
    of equal size (bounded memory for long runs).
    """
    out_xyz, out_rgb, out_c = [], [], []
    i = 0
    while i < len(keyframes):  # runs of keyframes with the same size and K presence -> one batch
        first = keyframes[i].arrays()
        group = [first]
        key = (first["X"].shape, first["K"] is None)
        j = i + 1
        while j < len(keyframes) and j - i < batch:
            a = keyframes[j].arrays()
            if (a["X"].shape, a["K"] is None) != key:
                break
            group.append(a)
            j += 1
        X = torch.from_numpy(np.stack([a["X"] for a in group]))  # [B, H, W, 3]
        if not key[1]:
            X = _constrain_to_rays(X, torch.from_numpy(np.stack([a["K"] for a in group])).float())
        T = torch.from_numpy(np.stack([a["T"] for a in group])).float()  # [B, 8]
        Xw = Sim3.act(T[:, None, None, :], X)  # [B, H, W, 3]
        C = np.stack([a["C"] for a in group])
        keep = (C > c_thresh) & ~np.stack([a["dyn"] for a in group])
        out_xyz.append(Xw.numpy()[keep])
        out_rgb.append(np.stack([a["rgb"] for a in group])[keep])
        out_c.append(C[keep])
        i = j
    if not out_xyz:
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8), np.zeros(0, np.float32)
    return (
        np.concatenate(out_xyz).astype(np.float32),
        np.concatenate(out_rgb).astype(np.uint8),
        np.concatenate(out_c).astype(np.float32),
    )


def _poses7(T_WC) -> np.ndarray:
    """[N, 8] Sim(3) or [N, 7] SE(3) -> [N, 7] t + q_xyzw (scale dropped)."""
    T = _np(T_WC, np.float64)
    if T.size == 0:
        return np.zeros((0, 7))
    if T.ndim == 1:
        T = T[None]
    T = T.reshape(len(T), -1)
    if T.shape[1] not in (7, 8):
        raise ValueError(f"poses must be [N, 8] Sim(3) or [N, 7] SE(3), got {T.shape}")
    return T[:, :7]


class ResultsWriter:
    """Writes one run's results folder; every method is independent and atomic per file."""

    def __init__(self, out_dir: str | Path, clean: bool = True):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if clean:
            self.clean()

    def path(self, name: str) -> Path:
        return self.out_dir / name

    def clean(self) -> None:
        """Remove the outputs of a previous run (only the files this writer owns)."""
        for name in OUTPUT_NAMES:
            p = self.out_dir / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()

    # ---- parts -------------------------------------------------------------------------------
    def write_config(self, cfg) -> Path:
        """``config.yaml`` from a Config (``to_dict``), a dataclass or a dict."""
        import dataclasses

        import yaml

        if hasattr(cfg, "to_dict"):
            data = cfg.to_dict()
        elif dataclasses.is_dataclass(cfg):
            data = dataclasses.asdict(cfg)
        else:
            data = dict(cfg)
        p = self.path("config.yaml")
        atomic_write_text(p, yaml.safe_dump(data, sort_keys=False))
        return p

    def write_trajectory(self, timestamps: Sequence, T_WC, name: str = "trajectory.txt") -> Path:  # T_WC [N, 8|7]
        """TUM trajectory (SE(3) part); timestamps are written exactly as given."""
        p = self.path(name)
        write_tum(p, list(timestamps), _poses7(T_WC))
        return p

    def write_keyframe_trajectory(self, timestamps: Sequence, T_WC) -> Path:  # T_WC [K, 8|7]
        return self.write_trajectory(timestamps, T_WC, "trajectory_keyframes.txt")

    def write_ply(self, keyframes: Sequence[MapKeyframe], c_thresh: float = DEFAULT_C_THRESH) -> Path:
        """``map.ply``: confidence-filtered coloured points of all keyframes."""
        xyz, rgb, conf = map_points(keyframes, c_thresh)
        p = self.path("map.ply")
        atomic_write_bytes(p, ply_bytes(xyz, rgb, conf))
        return p

    def write_glb(
        self,
        keyframes: Sequence[MapKeyframe],
        c_thresh: float = DEFAULT_C_THRESH,
        max_points: int = DEFAULT_MAX_GLB_POINTS,
        frustum_size: float | None = None,
    ) -> Path:
        """``scene.glb``: the point map (evenly thinned to ``max_points``) and keyframe frustums."""
        xyz, rgb, _ = map_points(keyframes, c_thresh)
        if len(xyz) > max_points:
            sel = np.linspace(0, len(xyz) - 1, max_points).astype(np.int64)
            xyz, rgb = xyz[sel], rgb[sel]
        frustums = None
        if keyframes:
            T = np.stack([kf.pose() for kf in keyframes])
            H, W = _np(keyframes[0].rgb).shape[:2]
            if frustum_size is None:
                ext = np.ptp(xyz, axis=0).max() if len(xyz) else np.ptp(T[:, :3], axis=0).max()
                frustum_size = float(0.05 * ext) if ext > 0 else 0.05
            Ks = [None if kf.K is None else _np(kf.K, np.float64).reshape(3, 3) for kf in keyframes]
            K = np.stack(Ks) if all(k is not None for k in Ks) else None
            frustums = frustum_vertices(T, K, (W, H), frustum_size)
        p = self.path("scene.glb")
        atomic_write_bytes(p, glb_bytes(xyz, rgb, frustums))
        return p

    def write_keyframes(self, keyframes: Sequence[MapKeyframe]) -> Path:
        """``keyframes/<timestamp>.png`` and ``.npz`` for every keyframe."""
        from PIL import Image

        folder = self.path("keyframes")
        folder.mkdir(parents=True, exist_ok=True)
        for kf in keyframes:
            a = kf.arrays()
            stem = safe_name(kf.timestamp)
            buf = io.BytesIO()
            Image.fromarray(a["rgb"]).save(buf, format="PNG")
            atomic_write_bytes(folder / f"{stem}.png", buf.getvalue())
            X = a["X"]
            if a["K"] is not None:
                X = _constrain_to_rays(torch.from_numpy(X)[None], torch.from_numpy(a["K"])[None].float())[0].numpy()
            buf = io.BytesIO()
            np.savez_compressed(
                buf,
                timestamp=np.array(str(kf.timestamp)),
                depth=X[..., 2].astype(np.float32),
                confidence=a["C"],
                pointmap=X.astype(np.float32),
                T_WC=a["T"],
                K=a["K"] if a["K"] is not None else np.full((3, 3), np.nan),
                rgb=a["rgb"],
                dynamic=a["dyn"],
            )
            atomic_write_bytes(folder / f"{stem}.npz", buf.getvalue())
        return folder

    def write_dynamic_mask(self, timestamp: str, mask: np.ndarray) -> Path | None:
        """``dynamic_masks/<timestamp>.png``: one frame's moving pixels (255) at network resolution.

        Only frames with moving pixels get a file (a frame without one had none), written
        directly (no temporary file: a mask is small and this runs every frame)."""
        mask = np.asarray(mask, bool)
        if not mask.any():
            return None
        import cv2

        folder = self.path("dynamic_masks")
        if not folder.is_dir():
            folder.mkdir(parents=True, exist_ok=True)
        p = folder / f"{safe_name(timestamp)}.png"
        cv2.imwrite(str(p), mask.astype(np.uint8) * 255, [cv2.IMWRITE_PNG_COMPRESSION, 1])
        return p

    def write_metrics(self, metrics: dict, merge: bool = True) -> Path:
        """``metrics.json``; with ``merge`` the keys are added to an existing file's."""
        p = self.path("metrics.json")
        data = {}
        if merge and p.is_file():
            try:
                data = json.loads(p.read_text())
            except (OSError, json.JSONDecodeError):
                data = {}
        data.update(metrics)
        with atomic_open(p, "w") as f:
            json.dump(_jsonable(data), f, indent=2, sort_keys=False)
            f.write("\n")
        return p

    # ---- everything --------------------------------------------------------------------------
    def write_all(
        self,
        *,
        frame_timestamps: Sequence | None = None,
        frame_T_WC=None,  # [N, 8]
        keyframes: Sequence[MapKeyframe] | None = None,
        metrics: dict | None = None,
        config=None,
        c_thresh: float = DEFAULT_C_THRESH,
    ) -> list[Path]:
        """Write every part that has data. A failing part does not stop the others; the first
        error is re-raised after all parts were attempted."""
        jobs: list[tuple[str, Callable[[], Path]]] = []
        if config is not None:
            jobs.append(("config", lambda: self.write_config(config)))
        if frame_timestamps is not None and frame_T_WC is not None:
            jobs.append(("trajectory", lambda: self.write_trajectory(frame_timestamps, frame_T_WC)))
        if keyframes is not None:
            kf_T = np.stack([k.pose() for k in keyframes]) if keyframes else np.zeros((0, 8))
            jobs.append(("keyframe trajectory", lambda: self.write_keyframe_trajectory([k.timestamp for k in keyframes], kf_T)))
            jobs.append(("map.ply", lambda: self.write_ply(keyframes, c_thresh)))
            jobs.append(("scene.glb", lambda: self.write_glb(keyframes, c_thresh)))
            jobs.append(("keyframes", lambda: self.write_keyframes(keyframes)))
        if metrics is not None:
            jobs.append(("metrics", lambda: self.write_metrics(metrics)))
        written, first_error = [], None
        for what, job in jobs:
            try:
                written.append(job())
            except Exception as e:  # keep writing the other parts
                log.error("writing %s failed: %s", what, e)
                first_error = first_error or e
        if first_error is not None:
            raise first_error
        return written


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, torch.Tensor):
        return _jsonable(x.detach().cpu().tolist())
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x
