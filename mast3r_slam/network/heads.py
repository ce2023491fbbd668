"""The catmlp+dpt head and its post-processing (spec: network §4.7-4.8).

One head per view: a DPT branch (3D points + confidence) over the encoder output and decoder
layers ``arch.hooks``, and a local-feature MLP over [encoder output, last decoder layer] whose
output is pixel-shuffled to full resolution (descriptor + descriptor confidence).

Precision: the heads compute in ``Mast3rHead.compute_dtype`` (fp32 by default, like the original,
which runs them outside autocast). With fp16/bf16 (``Mast3rModel.configure(head_dtype=...)``) the
DPT convolutions, the bilinear upsampling and the local-feature MLP run in half precision on
half-precision weights; the DPT's last 1x1 convolution (xyz + conf) writes fp32 outputs
(:class:`F32OutConv`), and the post-processing (norms, exp/expm1, normalisation) always runs in
fp32.
The weights may be *stored* in another dtype than the compute dtype (e.g. half storage, fp32
compute); the ``F32*`` layers below then cast them to the input's dtype on the fly.

On the GPU, the half-precision x2 upsamplings run as two interpolation matrix products
(:func:`_up2_matmul`), conv + bias + ReLU pairs as one cuDNN call (:func:`conv_relu`), and the
local-feature output is shuffled, normalised and exponentiated by one Triton kernel
(:mod:`.fused_local`); each falls back to plain PyTorch where it is unavailable.

The DPT's kernel-equals-stride transposed convolutions (4x4/4 and 2x2/2 upsampling of the token
maps) run as one matrix product plus a pixel shuffle (``ConvTranspose2d`` kernels are slow for
these shapes); the sums are the same up to rounding order.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .arch import Mast3rArch
from .fused_local import fused_local_postprocess

#: local-feature post-processing by the fused Triton kernel on the GPU (falls back to PyTorch by itself)
FUSED_LOCAL = True


class F32Linear(nn.Linear):
    def forward(self, x):
        b = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.weight.to(x.dtype), b)


class F32Conv2d(nn.Conv2d):
    def forward(self, x):
        b = None if self.bias is None else self.bias.to(x.dtype)
        return self._conv_forward(x, self.weight.to(x.dtype), b)


class F32ConvTranspose2d(nn.ConvTranspose2d):
    #: run kernel == stride (non-overlapping) transposed convolutions as a matmul + pixel shuffle
    use_matmul = True

    def _is_patchwise(self) -> bool:
        k, s = self.kernel_size, self.stride
        return (k == s and self.padding == (0, 0) and self.output_padding == (0, 0) and self.groups == 1
                and self.dilation == (1, 1))

    def forward(self, x):
        b = None if self.bias is None else self.bias.to(x.dtype)
        w = self.weight.to(x.dtype)
        if self.use_matmul and self._is_patchwise():
            return _patchwise_conv_transpose(x, w, b, self.stride)
        return F.conv_transpose2d(x, w, b, self.stride, self.padding, self.output_padding, self.groups, self.dilation)


def _patchwise_conv_transpose(x: torch.Tensor, w: torch.Tensor, b, stride) -> torch.Tensor:
    """conv_transpose2d with kernel == stride, no padding: every input pixel writes its own s x s patch.

    x [B, C, h, w] (any memory format), w [C, O, sh, sw] -> [B, O, h*sh, w*sw] in x's memory format.
    out[b, o, i*sh+p, j*sw+q] = bias[o] + sum_c x[b, c, i, j] w[c, o, p, q].
    """
    B, C, h, wd = x.shape
    O, sh, sw = w.shape[1], stride[0], stride[1]
    cl = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    xt = x.permute(0, 2, 3, 1).reshape(B * h * wd, C)  # a view when x is channels-last
    if cl:  # columns ordered (p, q, o): the result is already NHWC within each patch row
        wm = w.permute(0, 2, 3, 1).reshape(C, sh * sw * O)
        y = xt @ wm if b is None else torch.addmm(b.repeat(sh * sw), xt, wm)  # [B h w, sh sw O]
        y = y.view(B, h, wd, sh, sw, O).permute(0, 1, 3, 2, 4, 5).reshape(B, h * sh, wd * sw, O)
        return y.permute(0, 3, 1, 2)  # NCHW view of an NHWC tensor (channels-last)
    wm = w.reshape(C, O * sh * sw)  # columns ordered (o, p, q)
    y = xt @ wm if b is None else torch.addmm(b.repeat_interleave(sh * sw), xt, wm)  # [B h w, O sh sw]
    return y.view(B, h, wd, O, sh, sw).permute(0, 3, 1, 4, 2, 5).reshape(B, O, h * sh, wd * sw)


_MM_OUT_DTYPE: dict[tuple, bool] = {}


def _mm_out_dtype_ok(x: torch.Tensor) -> bool:
    """Whether ``torch.mm(..., out_dtype=torch.float32)`` (half inputs, fp32 output) runs on x's device."""
    key = (x.device.type, x.device.index, x.dtype)
    ok = _MM_OUT_DTYPE.get(key)
    if ok is None:
        if x.device.type != "cuda" or torch.cuda.is_current_stream_capturing():
            return False  # the probe runs outside graph capture (warm-up runs come first)
        try:
            a = torch.ones(16, 16, device=x.device, dtype=x.dtype)
            ok = bool(torch.mm(a, a, out_dtype=torch.float32).dtype == torch.float32)
        except Exception:  # noqa: BLE001 - older torch / unsupported dtype: fall back to an fp32 copy
            ok = False
        _MM_OUT_DTYPE[key] = ok
    return ok


class F32OutConv(F32Conv2d):
    """The DPT's last 1x1 convolution (-> xyz + conf). Its outputs are always fp32.

    In half-precision heads the input is half, but the raw outputs go through expm1 / exp, which
    turn a half-precision rounding of the output (2^-11 relative, ~2e-3 absolute at |r| = 5) into
    a relative error of the same size in pts3d / conf; so this product is accumulated and stored
    in fp32 (one matmul with fp32 output where torch has it, else from an fp32 copy of the input).
    Returns [B, O, H, W] (an NCHW view of NHWC memory for half inputs).
    """

    def forward(self, x):
        if x.dtype == torch.float32:
            return super().forward(x)
        B, C, H, W = x.shape
        O = self.out_channels
        w = self.weight.reshape(O, C)
        xt = x.permute(0, 2, 3, 1).reshape(B * H * W, C)  # a view when x is channels-last
        if _mm_out_dtype_ok(x):
            y = torch.mm(xt, w.to(x.dtype).t(), out_dtype=torch.float32)
        else:
            y = xt.float() @ w.float().t()
        if self.bias is not None:
            y = y + self.bias.float()
        return y.view(B, H, W, O).permute(0, 3, 1, 2)


#: half-precision x2 upsampling as two matrix products ("matmul") or F.interpolate ("interpolate")
UP2_IMPL = "matmul"
_INTERP: dict[tuple, torch.Tensor] = {}


def _interp_matrix(n: int, device, dtype) -> torch.Tensor:
    """[2n, n] matrix of bilinear x2 interpolation with align_corners=True along one axis.

    Output i samples the input at s = i (n - 1) / (2n - 1) (computed in fp32 like PyTorch's kernel):
    weight 1 - f on floor(s) and f on floor(s) + 1 (clamped), f = s - floor(s). Cached per
    (n, device, dtype); the first call per size happens in a warm-up run, before any graph capture.
    """
    key = (n, str(device), dtype)
    A = _INTERP.get(key)
    if A is None:
        scale = torch.tensor((n - 1) / (2 * n - 1) if n > 1 else 0.0, dtype=torch.float32)
        src = torch.arange(2 * n, dtype=torch.float32) * scale
        i0 = src.floor().long().clamp(max=n - 1)
        i1 = (i0 + 1).clamp(max=n - 1)
        f = (src - i0.float()).double()
        A = torch.zeros(2 * n, n, dtype=torch.float64)
        rows = torch.arange(2 * n)
        A.index_put_((rows, i0), 1 - f, accumulate=True)
        A.index_put_((rows, i1), f, accumulate=True)
        A = _INTERP[key] = A.to(device=device, dtype=dtype)
    return A


def _up2_matmul(x: torch.Tensor) -> torch.Tensor:
    """Bilinear x2 (align_corners=True) of x [B, C, h, w] as an interpolation matrix product per axis.

    Half-precision tensor-core GEMMs (fp32 accumulation) at about the memory traffic of one read and
    one write, where PyTorch's channels-last upsampling kernel runs far below bandwidth. Keeps x's
    memory format (channels-last in, channels-last out).
    """
    B, C, h, w = x.shape
    Ah = _interp_matrix(h, x.device, x.dtype)  # [2h, h]
    Aw = _interp_matrix(w, x.device, x.dtype)  # [2w, w]
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        xn = x.permute(0, 2, 3, 1)  # [B, h, w, C] contiguous
        y = torch.matmul(Aw, xn.reshape(B * h, w, C))  # [B h, 2w, C] (A broadcast over the batch)
        z = torch.matmul(Ah, y.view(B, h, 2 * w * C))  # [B, 2h, 2w C]
        return z.view(B, 2 * h, 2 * w, C).permute(0, 3, 1, 2)
    y = torch.mm(x.contiguous().view(B * C * h, w), Aw.t())  # [B C h, 2w]
    z = torch.matmul(Ah, y.view(B * C, h, 2 * w))  # [B C, 2h, 2w]
    return z.view(B, C, 2 * h, 2 * w)


def _up2(x: torch.Tensor) -> torch.Tensor:
    if x.dtype != torch.float32 and UP2_IMPL == "matmul":
        return _up2_matmul(x)
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


#: fuse conv + bias + ReLU into one cuDNN call in half-precision heads (checked once per device/layout)
FUSE_CONV_RELU = True
_CONV_RELU_OK: dict[tuple, bool] = {}


def _conv_relu_ok(x: torch.Tensor, conv: nn.Conv2d) -> bool:
    cl = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    key = (str(x.device), x.dtype, cl)
    ok = _CONV_RELU_OK.get(key)
    if ok is None:
        if x.device.type != "cuda" or torch.cuda.is_current_stream_capturing():
            return False
        try:  # probe on a small input: the fused op must exist and agree with conv + relu
            g = torch.Generator(device="cpu").manual_seed(0)
            xi = torch.randn(1, 8, 6, 10, generator=g).to(x.device, x.dtype)
            wi = (torch.randn(16, 8, 3, 3, generator=g) * 0.2).to(x.device, x.dtype)
            bi = torch.randn(16, generator=g).to(x.device, x.dtype)
            if cl:
                xi, wi = xi.contiguous(memory_format=torch.channels_last), wi.contiguous(memory_format=torch.channels_last)
            ref = F.relu(F.conv2d(xi, wi, bi, 1, 1)).float()
            got = torch.cudnn_convolution_relu(xi, wi, bi, (1, 1), (1, 1), (1, 1), 1).float()
            ok = bool(got.shape == ref.shape and torch.allclose(got, ref, rtol=2e-2, atol=2e-2))
        except Exception:  # noqa: BLE001 - op missing / unsupported: plain conv + relu
            ok = False
        _CONV_RELU_OK[key] = ok
    return ok and conv.groups == 1 and conv.padding_mode == "zeros" and isinstance(conv.padding, tuple)


def conv_relu(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """relu(conv(x)): one fused cuDNN call (bias and ReLU in the epilogue) for half inputs on a GPU."""
    if FUSE_CONV_RELU and x.dtype != torch.float32 and x.is_cuda and _conv_relu_ok(x, conv):
        w = conv.weight.to(x.dtype)
        b = conv.bias.to(x.dtype) if conv.bias is not None else torch.zeros(w.shape[0], device=x.device, dtype=x.dtype)
        return torch.cudnn_convolution_relu(x, w, b, conv.stride, conv.padding, conv.dilation, conv.groups)
    return F.relu(conv(x))


class Upsample2(nn.Module):
    """Bilinear x2 upsampling with align_corners=True (a module so Sequential indices match)."""

    def forward(self, x):
        return _up2(x)


class ResidualConvUnit(nn.Module):
    """z + conv2(relu(conv1(relu(z)))), 3x3 convs with bias."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv1 = F32Conv2d(ch, ch, 3, padding=1, bias=True)
        self.conv2 = F32Conv2d(ch, ch, 3, padding=1, bias=True)

    def forward(self, z):
        return self.conv2(conv_relu(self.conv1, F.relu(z))) + z


class FusionBlock(nn.Module):
    """DPT refinenet: (a [+ RCU1(b)]) -> RCU2 -> bilinear x2 -> 1x1 conv.

    The deepest block (``with_skip=False``) only ever gets one input; its unused ``resConfUnit1``
    weights in the checkpoint are dropped at load time.
    """

    def __init__(self, ch: int, with_skip: bool = True):
        super().__init__()
        if with_skip:
            self.resConfUnit1 = ResidualConvUnit(ch)
        self.resConfUnit2 = ResidualConvUnit(ch)
        self.out_conv = F32Conv2d(ch, ch, 1, bias=True)

    def forward(self, a, b=None):
        out = a if b is None else a + self.resConfUnit1(b)
        return self.out_conv(_up2(self.resConfUnit2(out)))


class DPTScratch(nn.Module):
    def __init__(self, layer_dims, feature_dim: int):
        super().__init__()
        self.layer_rn = nn.ModuleList(F32Conv2d(c, feature_dim, 3, padding=1, bias=False) for c in layer_dims)
        self.refinenet1 = FusionBlock(feature_dim)
        self.refinenet2 = FusionBlock(feature_dim)
        self.refinenet3 = FusionBlock(feature_dim)
        self.refinenet4 = FusionBlock(feature_dim, with_skip=False)


class DPTHead(nn.Module):
    """DPT branch: 4 hooked token maps -> multi-scale fusion -> [B, 4, H, W] (xyz + conf, raw)."""

    def __init__(self, arch: Mast3rArch):
        super().__init__()
        self.hooks = arch.hooks
        dims = arch.dpt_layer_dims
        tok = (arch.enc_embed_dim, arch.dec_embed_dim, arch.dec_embed_dim, arch.dec_embed_dim)
        self.act_postprocess = nn.ModuleList([
            nn.Sequential(F32Conv2d(tok[0], dims[0], 1), F32ConvTranspose2d(dims[0], dims[0], 4, stride=4)),
            nn.Sequential(F32Conv2d(tok[1], dims[1], 1), F32ConvTranspose2d(dims[1], dims[1], 2, stride=2)),
            nn.Sequential(F32Conv2d(tok[2], dims[2], 1)),
            nn.Sequential(F32Conv2d(tok[3], dims[3], 1), F32Conv2d(dims[3], dims[3], 3, stride=2, padding=1)),
        ])
        fd, ld = arch.dpt_feature_dim, arch.dpt_last_dim
        self.channels_last = False  # NHWC feature maps (see Mast3rModel.set_channels_last)
        self.scratch = DPTScratch(dims, fd)
        self.head = nn.Sequential(
            F32Conv2d(fd, ld, 3, padding=1), Upsample2(), F32Conv2d(ld, ld, 3, padding=1), nn.ReLU(), F32OutConv(ld, 4, 1)
        )

    def forward(self, layers: list[torch.Tensor], hw: tuple[int, int]) -> torch.Tensor:
        """layers: 4 fp32 token maps [B, N, C_k] (hooks order); hw = token grid (h, w)."""
        h, w = hw
        maps = []
        for k, t in enumerate(layers):
            if self.channels_last:  # [B, N, C] is already NHWC: a strided view, no copy
                x = t.view(t.shape[0], h, w, t.shape[2]).permute(0, 3, 1, 2)
            else:
                x = t.transpose(1, 2).reshape(t.shape[0], t.shape[2], h, w)
            maps.append(self.scratch.layer_rn[k](self.act_postprocess[k](x)))
        s = self.scratch
        p4 = s.refinenet4(maps[3])[:, :, : maps[2].shape[2], : maps[2].shape[3]]
        p3 = s.refinenet3(p4, maps[2])
        p2 = s.refinenet2(p3, maps[1])
        p1 = s.refinenet1(p2, maps[0])
        hd = self.head  # conv, up x2, conv + ReLU (fused on the GPU in half precision), 1x1 conv (fp32 out)
        return hd[4](conv_relu(hd[2], hd[1](hd[0](p1))))


class Mast3rHead(nn.Module):
    """catmlp+dpt head for one view: returns the post-processed outputs (fp32)."""

    def __init__(self, arch: Mast3rArch):
        super().__init__()
        self.arch = arch
        self.compute_dtype = torch.float32  # fp32 (original), fp16 or bf16; post-processing is fp32 always
        self.dpt = DPTHead(arch)
        c = arch.enc_embed_dim + arch.dec_embed_dim
        self.head_local_features = _LocalMlp(c, 4 * c, arch.local_feat_dim * arch.patch_size**2)

    def forward(self, tokens: list[torch.Tensor], shape: tuple[int, int]) -> dict[str, torch.Tensor]:
        """tokens: [encoder output, *decoder hooks] each [B, N, C]; shape = image (H, W)."""
        H, W = shape
        p = self.arch.patch_size
        h, w = H // p, W // p
        tokens = [t.to(self.compute_dtype) for t in tokens]
        raw_pts = self.dpt(tokens, (h, w))  # [B, 4, H, W] compute dtype
        cat = torch.cat((tokens[0], tokens[-1]), dim=-1)  # [B, N, C_enc + C_dec]
        loc = self.head_local_features(cat)  # [B, N, 25 * p^2]
        d = self.arch.desc_dim
        fused = fused_local_postprocess(loc, h, w, p, d) if FUSED_LOCAL else None
        if fused is None:  # PyTorch: one reordering copy, then the post-processing
            return postprocess(raw_pts, shuffle_local(loc, h, w, p), d)
        out = postprocess_pts(raw_pts)
        out["desc"], out["desc_conf"] = fused
        return out


class _LocalMlp(nn.Module):
    def __init__(self, dim, hidden, out):
        super().__init__()
        self.fc1 = F32Linear(dim, hidden)
        self.fc2 = F32Linear(hidden, out)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


def shuffle_local(loc: torch.Tensor, h: int, w: int, p: int) -> torch.Tensor:
    """Pixel shuffle of the local-feature MLP output, straight to fp32 channels-last, in one copy.

    loc [B, h*w, c*p*p] (channel index k*p*p + i*p + j, as F.pixel_shuffle reads it) ->
    [B, h*p, w*p, c] fp32: pixel (y*p + i, x*p + j) of token (y, x) gets channels k.
    """
    B, N, K = loc.shape
    c = K // (p * p)
    out = torch.empty((B, h * p, w * p, c), device=loc.device, dtype=torch.float32)
    out.view(B, h, p, w, p, c).copy_(loc.view(B, h, w, c, p, p).permute(0, 1, 4, 2, 5, 3))
    return out


def postprocess(raw_pts: torch.Tensor, raw_local: torch.Tensor, desc_dim: int) -> dict[str, torch.Tensor]:
    """raw_pts [B, 4, H, W] (xyz, conf), raw_local [B, H, W, desc_dim + 1] -> output dict (channels last).

    pts3d = r / max(|r|, 1e-8) * expm1(|r|); conf = 1 + exp(c); desc = d / |d| (no epsilon);
    desc_conf = exp(q). Computed in fp32 whatever the dtype of the raw outputs.
    """
    raw_local = raw_local.float()
    out = postprocess_pts(raw_pts)
    desc = raw_local[..., :desc_dim]
    out["desc"] = (desc / desc.norm(dim=-1, keepdim=True)).contiguous()
    out["desc_conf"] = raw_local[..., desc_dim].exp().contiguous()
    return out


def postprocess_pts(raw_pts: torch.Tensor) -> dict[str, torch.Tensor]:
    """raw_pts [B, 4, H, W] -> {pts3d [B, H, W, 3], conf [B, H, W]} in fp32 (see :func:`postprocess`)."""
    raw_pts = raw_pts.float()
    xyz = raw_pts[:, :3].permute(0, 2, 3, 1)  # [B, H, W, 3]
    d = xyz.norm(dim=-1, keepdim=True)
    pts3d = xyz / d.clip(min=1e-8) * torch.expm1(d)
    conf = 1.0 + raw_pts[:, 3].exp()
    return {"pts3d": pts3d.contiguous(), "conf": conf.contiguous()}
