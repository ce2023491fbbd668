"""Keyframe store and shared run state, in file-backed shared memory.

Every process (frontend, backend, viewer) maps the same files, so keyframes are shared without a
server process (the original went through a ``multiprocessing.Manager`` for every access) and
without a fixed capacity: the store grows by chunks of ``chunk`` keyframes, each chunk one file
that any process maps on first use. Files live in a private temporary folder (``/dev/shm`` when
it has room, else the system temp dir; ``MAST3R_SLAM_SHM_DIR`` overrides) removed at the end.

Data live on the CPU; each process copies what it needs to its own device (the backend keeps a
per-keyframe cache keyed by the keyframe's data version). Every keyframe has a *data version*
bumped on each write of its pointmap/confidence (the viewer uploads textures only when it
changed) while poses are read separately (they change after every global optimisation).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..frame import Frame, Mode

_ALIGN = 64


def _default_root() -> Path:
    env = os.environ.get("MAST3R_SLAM_SHM_DIR")
    if env:
        return Path(env)
    shm = Path("/dev/shm")
    try:
        if shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > (2 << 30):
            return shm
    except OSError:
        pass
    return Path(tempfile.gettempdir())


@dataclass(frozen=True)
class FieldSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str  # numpy dtype name

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


class _Layout:
    """Byte layout of ``n`` records of a list of fields (field-major, 64-byte aligned)."""

    def __init__(self, fields: list[FieldSpec], n: int):
        self.fields = fields
        self.n = n
        self.offsets = {}
        off = 0
        for f in fields:
            self.offsets[f.name] = off
            off += -(-f.nbytes * n // _ALIGN) * _ALIGN
        self.size = max(off, _ALIGN)

    def views(self, buf: np.ndarray) -> dict[str, np.ndarray]:
        out = {}
        for f in self.fields:
            off = self.offsets[f.name]
            out[f.name] = buf[off : off + f.nbytes * self.n].view(f.dtype).reshape((self.n,) + f.shape)
        return out


def _map_file(path: Path, size: int, create: bool) -> np.memmap:
    if create:
        with open(path, "wb") as fh:
            fh.truncate(size)
    return np.memmap(path, dtype=np.uint8, mode="r+", shape=(size,))


class SharedHeader:
    """Small shared record of counters and run state (mode, pause, step, thresholds, stats)."""

    FIELDS = [
        FieldSpec("n_keyframes", (), "int64"),
        FieldSpec("mode", (), "int64"),
        FieldSpec("paused", (), "int64"),
        FieldSpec("step_requests", (), "int64"),
        FieldSpec("terminate", (), "int64"),
        FieldSpec("conf_threshold", (), "float64"),
        FieldSpec("frame_index", (), "int64"),
        FieldSpec("n_frames", (), "int64"),
        FieldSpec("fps", (), "float64"),
        FieldSpec("n_edges", (), "int64"),
        FieldSpec("current_version", (), "int64"),
        FieldSpec("edges_version", (), "int64"),
        FieldSpec("reloc_pending", (), "int64"),
        FieldSpec("reloc_result_kf", (), "int64"),
        FieldSpec("backend_busy", (), "int64"),
    ]


class KeyframeStore:
    """Growable shared keyframe store.

    Create it in the main process with :meth:`create`; pass it (it pickles to its folder + lock)
    to worker processes, which map the same files. All accessors take the shared lock.
    """

    def __init__(self, root: Path, H: int, W: int, feat_shape, feat_dtype: str, pos_shape, chunk: int, lock, max_edges: int = 4096):
        self.root = Path(root)
        self.H, self.W = H, W
        self.HW = H * W
        self.feat_shape = tuple(feat_shape)
        self.feat_dtype = feat_dtype
        self.pos_shape = tuple(pos_shape)
        self.chunk = chunk
        self.lock = lock
        self.max_edges = max_edges
        self.fields = [
            FieldSpec("frame_id", (), "int64"),
            FieldSpec("T_WC", (8,), "float32"),
            FieldSpec("X", (self.HW, 3), "float32"),
            FieldSpec("C", (self.HW, 1), "float32"),
            FieldSpec("N", (), "int64"),
            FieldSpec("N_updates", (), "int64"),
            FieldSpec("score", (), "float64"),
            FieldSpec("uimg", (H, W, 3), "uint8"),
            FieldSpec("feat", self.feat_shape, self.feat_dtype),
            FieldSpec("pos", self.pos_shape, "int64"),
            FieldSpec("K", (3, 3), "float32"),
            FieldSpec("has_K", (), "int64"),
            FieldSpec("version", (), "int64"),
            FieldSpec("dyn_mask", (self.HW,), "uint8"),
        ]
        self._layout = _Layout(self.fields, chunk)
        self._chunks: list[dict[str, np.ndarray]] = []
        self._maps: list[np.memmap] = []
        self._owner = False
        self._hdr_layout = _Layout(SharedHeader.FIELDS, 1)
        # current frame mirror (what the viewer shows) and edges (for the viewer)
        self._cur_fields = [f for f in self.fields if f.name in ("frame_id", "T_WC", "X", "C", "N", "uimg", "dyn_mask")]
        self._cur_layout = _Layout(self._cur_fields, 1)
        self._edge_layout = _Layout([FieldSpec("ii", (), "int64"), FieldSpec("jj", (), "int64"), FieldSpec("loop", (), "uint8")], max_edges)
        self._hdr = self._cur = self._edges = None

    # ------------------------------------------------------------------------------------------
    # creation / pickling
    # ------------------------------------------------------------------------------------------
    @classmethod
    def create(cls, H: int, W: int, feat: torch.Tensor | None, pos: torch.Tensor | None, *, chunk: int = 32, ctx=None, root: Path | None = None, max_edges: int = 4096) -> "KeyframeStore":
        import multiprocessing as mp

        ctx = ctx or mp.get_context("spawn")
        base = Path(root) if root is not None else _default_root()
        folder = base / f"mast3r_slam_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        folder.mkdir(parents=True)
        feat_shape = tuple(feat.shape) if feat is not None else (1,)
        feat_dtype = str(feat.dtype).replace("torch.", "") if feat is not None else "float32"
        if feat_dtype == "bfloat16":
            feat_dtype = "float16"  # stored as float16 (numpy has no bfloat16)
        pos_shape = tuple(pos.shape) if pos is not None else (1,)
        store = cls(folder, H, W, feat_shape, feat_dtype, pos_shape, chunk, ctx.RLock(), max_edges)
        store._owner = True
        store._open_aux(create=True)
        hdr = store._hdr
        hdr["mode"][0] = int(Mode.INIT)
        hdr["conf_threshold"][0] = 1.5
        hdr["reloc_result_kf"][0] = -1
        hdr["n_frames"][0] = -1
        return store

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_chunks"], d["_maps"] = [], []
        d["_hdr"] = d["_cur"] = d["_edges"] = None
        d["_owner"] = False
        return d

    def __setstate__(self, d):
        self.__dict__.update(d)
        self._open_aux(create=False)

    def _open_aux(self, create: bool) -> None:
        self._hdr_map = _map_file(self.root / "header.bin", self._hdr_layout.size, create)
        self._hdr = {k: v.reshape(-1) for k, v in self._hdr_layout.views(self._hdr_map).items()}
        self._cur_map = _map_file(self.root / "current.bin", self._cur_layout.size, create)
        self._cur = {k: v[0:1].reshape(v.shape[1:]) for k, v in self._cur_layout.views(self._cur_map).items()}
        self._edge_map = _map_file(self.root / "edges.bin", self._edge_layout.size, create)
        self._edges = self._edge_layout.views(self._edge_map)

    def close(self, remove: bool | None = None) -> None:
        """Unmap; the creating process also removes the folder."""
        self._chunks, self._maps = [], []
        self._hdr = self._cur = self._edges = None
        if (self._owner if remove is None else remove) and self.root.exists():
            shutil.rmtree(self.root, ignore_errors=True)

    # ------------------------------------------------------------------------------------------
    # chunks
    # ------------------------------------------------------------------------------------------
    def _chunk_path(self, k: int) -> Path:
        return self.root / f"kf_{k:05d}.bin"

    def _ensure(self, idx: int, create: bool = False) -> dict[str, np.ndarray]:
        k = idx // self.chunk
        while len(self._chunks) <= k:
            j = len(self._chunks)
            path = self._chunk_path(j)
            mm = _map_file(path, self._layout.size, create=create and not path.exists())
            self._maps.append(mm)
            self._chunks.append(self._layout.views(mm))
        return self._chunks[k]

    def _rec(self, idx: int, create: bool = False) -> dict[str, np.ndarray]:
        c = self._ensure(idx, create)
        j = idx % self.chunk
        return {k: v[j : j + 1].reshape(v.shape[1:]) for k, v in c.items()}  # views (0-d for scalars)

    @property
    def capacity(self) -> int:
        """Number of slots mapped so far in this process (grows on demand; there is no cap)."""
        return len(self._chunks) * self.chunk

    # ------------------------------------------------------------------------------------------
    # header / state
    # ------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self._hdr["n_keyframes"][0])

    def get(self, name: str):
        v = self._hdr[name][0]
        return float(v) if self._hdr[name].dtype == np.float64 else int(v)

    def set(self, name: str, value) -> None:
        self._hdr[name][0] = value

    def add(self, name: str, delta: int = 1) -> int:
        with self.lock:
            self._hdr[name][0] += delta
            return int(self._hdr[name][0])

    @property
    def mode(self) -> Mode:
        return Mode(int(self._hdr["mode"][0]))

    @mode.setter
    def mode(self, m: Mode) -> None:
        self._hdr["mode"][0] = int(m)

    # ------------------------------------------------------------------------------------------
    # keyframes
    # ------------------------------------------------------------------------------------------
    def _write(self, rec: dict[str, np.ndarray], frame: Frame, with_images: bool = True) -> None:
        if with_images:  # a full write (append): identity, pose, images, features
            rec["frame_id"][...] = frame.frame_id
            rec["T_WC"][...] = frame.T_WC.detach().reshape(8).cpu().numpy()
        rec["X"][...] = frame.X_canon.detach().reshape(self.HW, 3).cpu().numpy()
        rec["C"][...] = frame.C.detach().reshape(self.HW, 1).cpu().numpy()
        rec["N"][...] = frame.N
        rec["N_updates"][...] = frame.N_updates
        rec["score"][...] = np.nan if frame.score is None else frame.score
        if with_images:
            rec["uimg"][...] = np.clip(frame.uimg.cpu().numpy() * 255.0 + 0.5, 0, 255).astype(np.uint8)
            if frame.feat is not None:
                rec["feat"][...] = frame.feat.detach().reshape(self.feat_shape).float().cpu().numpy().astype(self.feat_dtype)
            if frame.pos is not None:
                rec["pos"][...] = frame.pos.detach().reshape(self.pos_shape).cpu().numpy()
            if frame.K is not None:
                rec["K"][...] = frame.K.detach().cpu().numpy()
                rec["has_K"][...] = 1
        dyn = frame.extras.get("dyn_mask")
        rec["dyn_mask"][...] = 0 if dyn is None else dyn.reshape(-1).cpu().numpy().astype(np.uint8)
        rec["version"][...] += 1

    def append(self, frame: Frame) -> int:
        """Add a keyframe; returns its index."""
        with self.lock:
            idx = len(self)
            self._write(self._rec(idx, create=True), frame)
            self._hdr["n_keyframes"][0] = idx + 1
            return idx

    def __setitem__(self, idx: int, frame: Frame) -> None:
        """Write back a keyframe's fused pointmap, confidence and counters.

        The pose is NOT written (the backend owns keyframe poses; see :meth:`set_poses`)."""
        with self.lock:
            self._write(self._rec(idx, create=True), frame, with_images=False)

    def pop_last(self) -> None:
        with self.lock:
            self._hdr["n_keyframes"][0] = max(len(self) - 1, 0)

    def frame(self, idx: int, device: str | torch.device = "cpu", with_feat: bool = True) -> Frame:
        """A copy of keyframe ``idx`` as a Frame on ``device``."""
        with self.lock:
            if not 0 <= idx < len(self):
                raise IndexError(f"keyframe {idx} out of range ({len(self)} keyframes)")
            r = self._rec(idx)
            uimg8 = torch.from_numpy(r["uimg"].copy())
            X = torch.from_numpy(r["X"].copy())
            C = torch.from_numpy(r["C"].copy())
            T = torch.from_numpy(r["T_WC"].copy()).reshape(1, 8)
            feat = torch.from_numpy(r["feat"].copy()) if with_feat else None
            pos = torch.from_numpy(r["pos"].copy()) if with_feat else None
            K = torch.from_numpy(r["K"].copy()) if int(r["has_K"]) else None
            score = float(r["score"])
            fid, N, Nu = int(r["frame_id"]), int(r["N"]), int(r["N_updates"])
            dyn = torch.from_numpy(r["dyn_mask"].copy()).bool()
        uimg = uimg8.float() / 255.0
        img = ((uimg.permute(2, 0, 1) - 0.5) / 0.5)[None]
        f = Frame(
            frame_id=fid,
            img=img.to(device),
            uimg=uimg,
            img_shape=(self.H, self.W),
            T_WC=T.to(device),
            K=None if K is None else K.to(device),
            X_canon=X.to(device),
            C=C.to(device),
            N=N,
            N_updates=Nu,
            feat=None if feat is None else feat.to(device),
            pos=None if pos is None else pos.to(device),
            score=None if np.isnan(score) else score,
        )
        if dyn.any():
            f.extras["dyn_mask"] = dyn.to(device)
        return f

    def read(self, idx: int, names: tuple[str, ...]) -> dict[str, np.ndarray]:
        """Copies of some fields of keyframe ``idx`` (numpy)."""
        with self.lock:
            r = self._rec(idx)
            return {n: r[n].copy() for n in names}

    def _column(self, name: str) -> np.ndarray:
        """Field ``name`` of all keyframes [n, ...] (a copy; vectorised over chunks). Call under the lock."""
        n = len(self)
        if n == 0:
            spec = next(f for f in self.fields if f.name == name)
            return np.zeros((0,) + spec.shape, dtype=spec.dtype)
        self._ensure(n - 1)
        return np.concatenate([c[name] for c in self._chunks[: (n - 1) // self.chunk + 1]])[:n].copy()

    def versions(self) -> np.ndarray:
        """Data version of every keyframe [n] int64 (bumped on each pointmap write)."""
        with self.lock:
            return self._column("version")

    def frame_ids(self) -> np.ndarray:
        with self.lock:
            return self._column("frame_id")

    def poses(self, idx=None) -> torch.Tensor:
        """T_WC of keyframes [n, 8] (all, or the given indices)."""
        with self.lock:
            T = self._column("T_WC")
        if idx is not None:
            T = T[np.asarray(idx, dtype=np.int64)]
        return torch.from_numpy(T)

    def set_poses(self, idx, T_WC: torch.Tensor) -> None:
        """Bulk pose update (after global optimisation). Does not bump data versions."""
        T = T_WC.detach().reshape(-1, 8).cpu().numpy()
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        with self.lock:
            for c in np.unique(idx // self.chunk):
                sel = idx // self.chunk == c
                self._ensure(int(c) * self.chunk)["T_WC"][idx[sel] % self.chunk] = T[sel]

    # ------------------------------------------------------------------------------------------
    # current frame (for the viewer) and edges
    # ------------------------------------------------------------------------------------------
    def set_current(self, frame: Frame) -> None:
        with self.lock:
            c = self._cur
            c["frame_id"][...] = frame.frame_id
            c["T_WC"][...] = frame.T_WC.detach().reshape(8).cpu().numpy()
            if frame.X_canon is not None:
                c["X"][...] = frame.X_canon.detach().reshape(self.HW, 3).cpu().numpy()
                c["C"][...] = frame.C.detach().reshape(self.HW, 1).cpu().numpy()
                c["N"][...] = max(frame.N, 1)
            c["uimg"][...] = np.clip(frame.uimg.cpu().numpy() * 255.0 + 0.5, 0, 255).astype(np.uint8)
            dyn = frame.extras.get("dyn_mask")
            c["dyn_mask"][...] = 0 if dyn is None else dyn.reshape(-1).cpu().numpy().astype(np.uint8)
            self._hdr["current_version"][0] += 1

    def current(self) -> dict[str, np.ndarray] | None:
        with self.lock:
            if int(self._hdr["current_version"][0]) == 0:
                return None
            return {k: v.copy() for k, v in self._cur.items()}

    def set_edges(self, ii, jj, loop) -> None:
        ii = np.asarray(ii, dtype=np.int64)
        n = min(len(ii), self.max_edges)
        with self.lock:
            self._edges["ii"][:n] = ii[:n]
            self._edges["jj"][:n] = np.asarray(jj, dtype=np.int64)[:n]
            self._edges["loop"][:n] = np.asarray(loop, dtype=np.uint8)[:n]
            self._hdr["n_edges"][0] = len(ii)
            self._hdr["edges_version"][0] += 1

    def edges(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        with self.lock:
            n = min(int(self._hdr["n_edges"][0]), self.max_edges)
            return self._edges["ii"][:n].copy(), self._edges["jj"][:n].copy(), self._edges["loop"][:n].astype(bool)
