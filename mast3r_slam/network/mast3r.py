"""The MASt3R network: shared ViT encoder, two-stream decoder, one catmlp+dpt head per view.

Public methods (what SLAM and outside checks use):

* :meth:`Mast3rModel.encode` ``img [B, 3, H, W] -> (feat [B, N, C_enc] fp32, pos [B, N, 2] int64)``;
* :meth:`Mast3rModel.decode` ``(feat1, pos1, feat2, pos2, (H1, W1), (H2, W2)) -> (res1, res2)``,
  each a dict of fp32 ``pts3d [B, H, W, 3]``, ``conf [B, H, W]``, ``desc [B, H, W, d]``,
  ``desc_conf [B, H, W]``; ``res2`` is view 2 expressed in view 1's camera frame.

Speed options (all off by default except fused attention): :meth:`configure` moves the weights to a
device and stores the trunk (encoder + decoder) in fp16/bf16 (LayerNorms and the residual stream
stay fp32) and sets the heads' compute precision (``head_dtype``: fp32 like the original, or
fp16/bf16 with fp32 post-processing), :meth:`set_attention` picks SDPA or explicit math,
:meth:`set_channels_last` runs the DPT heads on NHWC maps, :meth:`enable_cuda_graphs` captures
encode and decode per input shape (decode batches split into captured chunk sizes),
:meth:`enable_compile` wraps the trunk in ``torch.compile``. ``tf32`` (default on) allows TF32
matmuls/convolutions on the GPU, as the original runs (croco enables it on import);
``cudnn_benchmark`` (default: on for half-precision heads) autotunes the head convolutions, both
only during the model's calls.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from .arch import VITL, Mast3rArch
from .cuda_graphs import CudaGraphRunner
from .decoder import Decoder
from .encoder import Encoder
from .heads import Mast3rHead
from .layers import set_attention_impl

_DTYPES = {
    "fp32": torch.float32, "float32": torch.float32,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
}


def as_dtype(dtype) -> torch.dtype:
    """torch dtype from a dtype or one of 'fp32', 'fp16', 'bf16' (and long names)."""
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"network dtype must be float32, float16 or bfloat16, got {dtype}")
        return dtype
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"network dtype must be one of {sorted(_DTYPES)}, got {dtype!r}") from None


@contextlib.contextmanager
def _backend_flags(tf32: bool, cudnn_benchmark: bool):
    """TF32 for matmuls / cuDNN convolutions and cuDNN autotuning, during the model's calls only."""
    m, c = torch.backends.cuda.matmul, torch.backends.cudnn
    old = (m.allow_tf32, c.allow_tf32, c.benchmark)
    m.allow_tf32, c.allow_tf32, c.benchmark = tf32, tf32, cudnn_benchmark
    try:
        yield
    finally:
        m.allow_tf32, c.allow_tf32, c.benchmark = old


def plan_chunks(n: int, sizes: tuple[int, ...]) -> list[tuple[int, int, int]]:
    """Split a batch of ``n`` into chunks run at the captured batch ``sizes`` (ascending).

    Greedy: the largest size <= what is left, else (a remainder smaller than every size) the
    smallest size, padded. Returns ``(start, stop, size)`` triples; ``stop - start <= size``.
    With sizes (1, 2, 4, 8): 6 -> 4 + 2, 11 -> 8 + 2 + 1, 16 -> 8 + 8 (no padding ever).
    """
    if n <= 0 or not sizes:
        raise ValueError(f"plan_chunks: need n > 0 and at least one size, got n={n}, sizes={sizes}")
    sizes = sorted(set(int(x) for x in sizes))
    out, start = [], 0
    while start < n:
        left = n - start
        fit = [x for x in sizes if x <= left]
        size = fit[-1] if fit else sizes[0]
        stop = min(n, start + size)
        out.append((start, stop, size))
        start = stop
    return out


class Mast3rModel(nn.Module):
    def __init__(self, arch: Mast3rArch = VITL):
        super().__init__()
        self.arch = arch
        self.encoder = Encoder(arch)
        self.decoder = Decoder(arch)
        self.head1 = Mast3rHead(arch)
        self.head2 = Mast3rHead(arch)
        self.tf32 = True
        # cuDNN autotuning of the head convolutions (GPU; once per new shape). None = on for half-precision
        # heads only: with fp32 heads the trials of large-workspace algorithms raised the peak GPU memory
        # of a batch-8 decode to ~40 GB on an H100 (half heads: < 6 GB)
        self.cudnn_benchmark: bool | None = None
        self.graph_batch_sizes: tuple[int, ...] = (1, 2, 4, 8)  # decode batches captured as CUDA graphs
        self._encode_fn = self._encode_impl
        self._decode_fn = self._decode_impl
        self._enc_graphs: CudaGraphRunner | None = None
        self._dec_graphs: CudaGraphRunner | None = None

    # ------------------------------------------------------------------ configuration
    @property
    def device(self) -> torch.device:
        return self.encoder.patch_embed.proj.weight.device

    @property
    def trunk_dtype(self) -> torch.dtype:
        return self.encoder.patch_embed.proj.weight.dtype

    def _drop_graphs(self) -> None:
        for g in (self._enc_graphs, self._dec_graphs):
            if g is not None:
                g.clear()

    def _apply(self, fn, *args, **kwargs):  # .to() / .cuda() / .half() invalidate graphs and stacked weights
        self._drop_graphs()
        out = super()._apply(fn, *args, **kwargs)
        self.decoder._ensure_stacked()
        return out

    def _cudnn_benchmark(self) -> bool:
        if self.cudnn_benchmark is None:
            return self.head_dtype != torch.float32
        return bool(self.cudnn_benchmark)

    @property
    def head_dtype(self) -> torch.dtype:
        """Compute precision of the heads (fp32 = the original; post-processing is fp32 always)."""
        return self.head1.compute_dtype

    @torch.no_grad()
    def configure(self, device=None, dtype=None, head_weight_dtype=None, head_dtype=None) -> "Mast3rModel":
        """Move weights to ``device`` and set the precisions, one tensor at a time (low peak memory).

        ``dtype``: fp32 / fp16 / bf16 for the encoder and decoder matmuls and convolutions (their
        LayerNorms stay fp32). ``head_dtype``: compute precision of the heads' DPT convolutions and
        local-feature MLP (fp32 = the original, or fp16 / bf16; the post-processing stays fp32);
        None keeps the current one (fp32 on a new model). ``head_weight_dtype``: storage of the head
        weights; default = ``head_dtype`` when the heads compute in half precision, else ``dtype``
        (half storage with fp32 compute casts the weights on the fly), so all weights take 1.37 GB
        in half precision.
        """
        self._drop_graphs()
        device = torch.device(device) if device is not None else self.device
        dtype = as_dtype(dtype) if dtype is not None else self.trunk_dtype
        hdt = as_dtype(head_dtype) if head_dtype is not None else self.head_dtype
        for head in (self.head1, self.head2):
            head.compute_dtype = hdt
        if head_weight_dtype is not None:
            head_dt = as_dtype(head_weight_dtype)
        else:
            head_dt = hdt if hdt != torch.float32 else dtype
        for part, dt in ((self.encoder, dtype), (self.decoder, dtype), (self.head1, head_dt), (self.head2, head_dt)):
            for mod in part.modules():
                target = torch.float32 if isinstance(mod, nn.LayerNorm) else dt
                for name, p in list(mod.named_parameters(recurse=False)):
                    if p.device != device or p.dtype != target:
                        new = nn.Parameter(p.detach().to(device=device, dtype=target), requires_grad=False)
                        setattr(mod, name, new)
        self.decoder.stack_streams()
        return self

    @torch.no_grad()
    def set_channels_last(self, enabled: bool = True) -> "Mast3rModel":
        """Run the DPT heads on NHWC (channels-last) feature maps and weights (often faster with cuDNN)."""
        fmt = torch.channels_last if enabled else torch.contiguous_format
        for head in (self.head1, self.head2):
            head.dpt.channels_last = enabled
            for mod in head.dpt.modules():
                w = getattr(mod, "weight", None)
                if isinstance(w, nn.Parameter) and w.ndim == 4:
                    mod.weight = nn.Parameter(w.detach().contiguous(memory_format=fmt), requires_grad=False)
        self._drop_graphs()
        return self

    def set_attention(self, impl: str) -> "Mast3rModel":
        """'sdpa' (fused, default) or 'math' (the original's explicit softmax, for parity debugging)."""
        set_attention_impl(self, impl)
        self._drop_graphs()
        return self

    def enable_cuda_graphs(self, enabled: bool = True, batch_sizes=None) -> "Mast3rModel":
        """Capture encode / decode as CUDA graphs per input shape (CUDA only; first call per shape captures).

        Decodes of B pairs are split into chunks of the captured ``batch_sizes`` (default
        ``self.graph_batch_sizes`` = 1, 2, 4, 8; see :func:`plan_chunks`), so any B replays at
        most a few graphs and only len(batch_sizes) graphs are captured per image size.
        """
        if enabled and self.device.type != "cuda":
            raise ValueError("enable_cuda_graphs: the model is not on a CUDA device")
        if batch_sizes is not None:
            sizes = tuple(sorted(set(int(x) for x in batch_sizes)))
            if not sizes or sizes[0] < 1:
                raise ValueError(f"enable_cuda_graphs: batch_sizes must be positive integers, got {batch_sizes!r}")
            self.graph_batch_sizes = sizes
        self._enc_graphs = CudaGraphRunner(self._encode_fn) if enabled else None
        self._dec_graphs = CudaGraphRunner(self._decode_fn) if enabled else None
        return self

    def enable_compile(self, **kwargs) -> "Mast3rModel":
        """Wrap the encode/decode functions in ``torch.compile(**kwargs)`` (off by default)."""
        self._encode_fn = torch.compile(self._encode_impl, **kwargs)
        self._decode_fn = torch.compile(self._decode_impl, **kwargs)
        if self._enc_graphs is not None:
            self.enable_cuda_graphs(True)
        return self

    # ------------------------------------------------------------------ forward
    def _encode_impl(self, img: torch.Tensor):
        return self.encoder(img)

    def _decode_impl(self, feat1, pos1, feat2, pos2, shape1, shape2, return_tokens: bool = False):
        p = self.arch.patch_size
        max_pos = max(shape1[0], shape1[1], shape2[0], shape2[1]) // p
        dec1, dec2 = self.decoder(feat1, pos1, feat2, pos2, max_pos)
        res1 = self.head1([feat1, *dec1], shape1)
        res2 = self.head2([feat2, *dec2], shape2)
        if return_tokens:
            return res1, res2, dec1, dec2
        return res1, res2

    def _check_img(self, img: torch.Tensor) -> None:
        p = self.arch.patch_size
        if img.ndim != 4 or img.shape[1] != 3 or img.shape[2] % p or img.shape[3] % p:
            raise ValueError(f"encode: expected images [B, 3, H, W] with H, W multiples of {p}, got {tuple(img.shape)}")

    @torch.no_grad()
    def encode(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """img [B, 3, H, W] normalised to [-1, 1] -> (feat [B, N, C_enc] fp32, pos [B, N, 2] int64)."""
        self._check_img(img)
        img = img.to(self.device, torch.float32)
        with _backend_flags(self.tf32, self._cudnn_benchmark()):
            if self._enc_graphs is not None:
                return self._enc_graphs(tuple(img.shape), img)
            return self._encode_fn(img)

    def _check_tokens(self, feat, pos, shape, which: str):
        p = self.arch.patch_size
        H, W = int(shape[0]), int(shape[1])
        n = (H // p) * (W // p)
        if H % p or W % p or feat.ndim != 3 or feat.shape[1] != n or feat.shape[2] != self.arch.enc_embed_dim:
            raise ValueError(
                f"decode: feat{which} {tuple(feat.shape)} does not match shape{which}=({H}, {W}) "
                f"(expected [B, {n}, {self.arch.enc_embed_dim}])"
            )
        if tuple(pos.shape) != (feat.shape[0], n, 2):
            raise ValueError(f"decode: pos{which} {tuple(pos.shape)} should be [{feat.shape[0]}, {n}, 2]")
        return H, W

    @torch.no_grad()
    def decode(self, feat1, pos1, feat2, pos2, shape1, shape2, *, return_tokens: bool = False):
        """Decoder + heads for B pairs (view 1, view 2).

        feat1 [B, N1, C_enc], pos1 [B, N1, 2] (from :meth:`encode`), shape1 = (H1, W1); same for view 2.
        Returns (res1, res2) dicts (see module docstring); with ``return_tokens`` also the per-view
        lists of hooked decoder tokens [B, N, C_dec] (the last entry is the normalised last layer).
        """
        shape1 = self._check_tokens(feat1, pos1, shape1, "1")
        shape2 = self._check_tokens(feat2, pos2, shape2, "2")
        if feat1.shape[0] != feat2.shape[0]:
            raise ValueError(f"decode: batch sizes differ ({feat1.shape[0]} vs {feat2.shape[0]})")
        dev = self.device
        feat1, feat2 = feat1.to(dev, torch.float32), feat2.to(dev, torch.float32)
        pos1, pos2 = pos1.to(dev), pos2.to(dev)
        with _backend_flags(self.tf32, self._cudnn_benchmark()):
            if self._dec_graphs is not None and not return_tokens:
                return self._decode_graphed(feat1, pos1, feat2, pos2, shape1, shape2)
            return self._decode_fn(feat1, pos1, feat2, pos2, shape1, shape2, return_tokens)

    def _decode_graphed(self, feat1, pos1, feat2, pos2, shape1, shape2):
        """Replay the decode graphs of the chunk sizes of :func:`plan_chunks` (one graph when B is a size)."""
        B = feat1.shape[0]
        chunks = plan_chunks(B, self.graph_batch_sizes)
        kw = {"shape1": shape1, "shape2": shape2}

        def key(size):
            return (size, feat1.shape[1:], feat2.shape[1:], shape1, shape2)

        if len(chunks) == 1 and chunks[0][2] == B:
            return self._dec_graphs(key(B), feat1, pos1, feat2, pos2, **kw)
        out = None
        for start, stop, size in chunks:
            n = stop - start
            static = self._dec_graphs.run(key(size), (feat1[start:stop], pos1[start:stop], feat2[start:stop],
                                                      pos2[start:stop]), kw, batch=size, clone=False)
            if out is None:  # outputs of the whole batch, filled chunk by chunk (no clone + cat)
                out = tuple({k: v.new_empty((B, *v.shape[1:])) for k, v in r.items()} for r in static)
            for r_out, r_st in zip(out, static):
                for k, v in r_st.items():
                    r_out[k][start:stop].copy_(v[:n])
        return out

    @torch.no_grad()
    def forward(self, img1: torch.Tensor, img2: torch.Tensor):
        """Full pair inference (encode both views, decode): (res1, res2)."""
        f1, p1 = self.encode(img1)
        f2, p2 = self.encode(img2)
        return self.decode(f1, p1, f2, p2, tuple(img1.shape[-2:]), tuple(img2.shape[-2:]))
