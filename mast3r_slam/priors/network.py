"""The MASt3R network as SLAM's prior (spec: SLAM §3.1 and §6.1, network §5).

Encoder features are computed once per frame and cached on it (``frame.feat`` [1, N, 1024] fp32,
``frame.pos`` [1, N, 2] int64); decoding reuses them. ``symmetric`` decodes B pairs in both
orders in ONE batched decoder call (2B directed pairs), where the original loops over pairs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from ..errors import CheckpointError
from ..frame import Frame
from .base import Prediction, Prior


def _flat(res: dict, b: slice | int | None = None) -> Prediction:
    """Head output dict ([B, H, W, c] / [B, H, W]) -> Prediction with [B, HW, c] (or [HW, c] for int b)."""
    X, C, D, Q = res["pts3d"], res["conf"], res["desc"], res["desc_conf"]
    B = X.shape[0]
    p = Prediction(X.reshape(B, -1, 3), C.reshape(B, -1, 1), D.reshape(B, -1, D.shape[-1]), Q.reshape(B, -1, 1))
    return p if b is None else p[b]


class Mast3rPrior(Prior):
    """Prior backed by :class:`mast3r_slam.network.Mast3rModel` (+ optional retrieval head)."""

    name = "mast3r"
    is_stand_in = False

    def __init__(self, model, retrieval=None, *, dtype=None, head_dtype=None, cuda_graphs: bool = False):
        """model: a loaded Mast3rModel; retrieval: a RetrievalModel with its codebook (or None).

        dtype: trunk precision to set on the model (fp32 / fp16 / bf16; None keeps the model's);
        head_dtype: compute precision of the heads (fp32 / fp16 / bf16; None keeps the model's);
        cuda_graphs: capture encode / decode per shape (CUDA only; symmetric decodes of B pairs
        replay the graphs of batch 1, 2, 4, 8, see Mast3rModel.enable_cuda_graphs).
        """
        self.model = model
        if dtype is not None or head_dtype is not None:
            model.configure(dtype=dtype, head_dtype=head_dtype)
        if cuda_graphs:
            model.enable_cuda_graphs(True)
        self.retrieval = retrieval
        if retrieval is not None:
            retrieval.to(model.device)
        self.desc_dim = model.arch.desc_dim

    @property
    def description(self) -> str:
        dt = str(self.model.trunk_dtype).replace("torch.", "")
        hdt = str(self.model.head_dtype).replace("torch.", "")
        graphs = ", CUDA graphs" if self.model._enc_graphs is not None else ""
        return f"mast3r (MASt3R ViT-L network, trunk {dt}, heads {hdt}{graphs})"

    # ------------------------------------------------------------------ per frame
    def encode(self, frame: Frame) -> None:
        if frame.feat is None:
            frame.feat, frame.pos = self.model.encode(frame.img)

    def _decode(self, frames1: Sequence[Frame], frames2: Sequence[Frame]):
        for f in (*frames1, *frames2):
            self.encode(f)
        shapes1 = {tuple(f.img_shape) for f in frames1}
        shapes2 = {tuple(f.img_shape) for f in frames2}
        if len(shapes1) != 1 or len(shapes2) != 1:
            raise ValueError(
                f"Mast3rPrior: the frames of each side of a batched decode must share one image size, got "
                f"{sorted(shapes1)} and {sorted(shapes2)}"
            )
        cat = lambda fr, a: torch.cat([getattr(f, a) for f in fr])  # noqa: E731
        return self.model.decode(cat(frames1, "feat"), cat(frames1, "pos"), cat(frames2, "feat"), cat(frames2, "pos"),
                                 shapes1.pop(), shapes2.pop())

    def mono(self, frame: Frame) -> tuple[torch.Tensor, torch.Tensor]:
        res1, _ = self._decode([frame], [frame])
        p = _flat(res1, 0)
        return p.X, p.C  # [HW, 3], [HW, 1]

    def asymmetric(self, frame_i: Frame, frame_j: Frame) -> tuple[Prediction, Prediction]:
        res1, res2 = self._decode([frame_i], [frame_j])
        return _flat(res1, 0), _flat(res2, 0)  # (res_ii, res_ji), each [HW, c]

    def symmetric(self, frames_i: Sequence[Frame], frames_j: Sequence[Frame]) -> Prediction:
        B = len(frames_i)
        if B != len(frames_j) or B == 0:
            raise ValueError(f"Mast3rPrior.symmetric: need as many frames_i as frames_j (>0), got {B} and {len(frames_j)}")
        # one call for the 2B directed pairs: (i_b, j_b) for b < B, then (j_b, i_b)
        res1, res2 = self._decode([*frames_i, *frames_j], [*frames_j, *frames_i])
        r1, r2 = _flat(res1), _flat(res2)  # [2B, HW, c]
        stack = lambda a: torch.stack([a(r1)[:B], a(r2)[:B], a(r1)[B:], a(r2)[B:]])  # noqa: E731  [ii, ji, jj, ij]
        return Prediction(stack(lambda p: p.X), stack(lambda p: p.C), stack(lambda p: p.D), stack(lambda p: p.Q))

    # ------------------------------------------------------------------ retrieval
    def _need_retrieval(self):
        if self.retrieval is None:
            raise CheckpointError("Mast3rPrior: no retrieval model loaded (make_mast3r_prior(..., retrieval=True) needs the "
                                  "retrieval .pth and codebook .pkl; `bash scripts/download_checkpoints.sh`)")
        return self.retrieval

    def retrieval_features(self, frame: Frame) -> torch.Tensor:
        self.encode(frame)
        return self._need_retrieval()(frame.feat)[0]  # [k, D]

    def retrieval_codebook(self) -> torch.Tensor:
        cb = self._need_retrieval().codebook
        if cb is None:
            raise CheckpointError("Mast3rPrior: the retrieval model was loaded without its codebook")
        return cb  # [K, D]


def make_mast3r_prior(
    checkpoint_dir="checkpoints",
    device="cuda",
    *,
    dtype=None,
    head_dtype=None,
    retrieval: bool = True,
    cuda_graphs: bool = False,
    attention: str = "sdpa",
    tf32: bool = True,
    channels_last: bool | None = None,
    compile_model: bool = False,
) -> Mast3rPrior:
    """Load the official files from ``checkpoint_dir`` and wrap them as a :class:`Mast3rPrior`.

    dtype: trunk precision (default fp32 like the original; fp16/bf16 for speed on the GPU);
    head_dtype: compute precision of the heads (default fp32 like the original; fp16/bf16 run the
    DPT convolutions and the local-feature MLP in half precision, post-processing stays fp32);
    cuda_graphs: capture encode/decode per shape; channels_last: NHWC DPT heads (default: on
    when the heads compute in half precision on a GPU); compile_model: torch.compile (slow start).
    """
    from ..network import checkpoint as ck
    from ..network import as_dtype, load_mast3r, load_retrieval_model

    main, ret, cb = ck.default_paths(checkpoint_dir)
    needed = [main] + ([ret, cb] if retrieval else [])
    missing = [p.name for p in needed if not p.is_file()]
    if missing:
        raise CheckpointError(
            f"{Path(checkpoint_dir)}: missing MASt3R file(s) {', '.join(missing)}; {ck.HINT}"
        )
    if channels_last is None:
        half_heads = head_dtype is not None and as_dtype(head_dtype) != torch.float32
        channels_last = half_heads and torch.device(device).type == "cuda"
    model = load_mast3r(main, device, dtype=dtype, head_dtype=head_dtype, attention=attention, tf32=tf32,
                        channels_last=channels_last)
    if compile_model:
        model.enable_compile()
    if cuda_graphs:
        model.enable_cuda_graphs(True)
    rmodel = load_retrieval_model(ret, device, codebook_path=cb) if retrieval else None
    return Mast3rPrior(model, rmodel)
