"""Two-stream ViT decoder with cross-attention (spec: network §4.6).

Both streams read the previous layer's outputs of both streams (parallel update). The shared
``embed`` (decoder_embed) maps encoder tokens to the decoder width, the shared ``norm`` is applied
to the last layer only. The decoder returns the tokens that the heads read: the layers listed in
``arch.hooks[1:]`` (the last one normalised), per view.

Paired execution: the two streams have separate weights but identical shapes, so when both views
have the same number of tokens the decoder runs them *together* - each layer's weights of the
two streams are stacked into ``[2, ...]`` tensors and every matmul is one batched ``baddbmm``,
every attention one SDPA call over 2B sequences. That halves the number of kernels per layer (the
decoder is launch-bound at batch 1). The per-stream parameters stay the module parameters (state
dict and loading unchanged); :meth:`Decoder.stack_streams` turns them into views of the stacked
tensors, so no memory is duplicated. Views are re-made automatically after the weights move or
change dtype (never during CUDA-graph capture). ``paired = False`` runs the streams one by one.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .arch import Mast3rArch
from .layers import DecoderBlock, RoPE2D, apply_rope, attention


def _set_param(module: nn.Module, dotted: str, value: torch.Tensor) -> None:
    *path, name = dotted.split(".")
    for p in path:
        module = getattr(module, p)
    setattr(module, name, nn.Parameter(value, requires_grad=False))


class Decoder(nn.Module):
    def __init__(self, arch: Mast3rArch):
        super().__init__()
        self.arch = arch
        d = arch.dec_embed_dim
        self.embed = nn.Linear(arch.enc_embed_dim, d, bias=True)
        self.blocks1 = nn.ModuleList(
            DecoderBlock(d, arch.dec_num_heads, arch.mlp_ratio, arch.norm_eps) for _ in range(arch.dec_depth)
        )
        self.blocks2 = nn.ModuleList(
            DecoderBlock(d, arch.dec_num_heads, arch.mlp_ratio, arch.norm_eps) for _ in range(arch.dec_depth)
        )
        self.norm = nn.LayerNorm(d, eps=arch.norm_eps)
        self.rope = RoPE2D(d // arch.dec_num_heads, arch.rope_base)
        self.paired = True
        self._stacks: list[dict[str, torch.Tensor]] | None = None
        self._stack_key: tuple | None = None

    # ------------------------------------------------------------------ stacked weights
    def _param_key(self) -> tuple:
        if not hasattr(self, "_leaves"):  # modules owning the blocks' parameters (fixed at construction)
            self._leaves = [m for b in (*self.blocks1, *self.blocks2) for m in b.modules() if m._parameters]
        return tuple(p.data_ptr() for m in self._leaves for p in m._parameters.values())

    @torch.no_grad()
    def stack_streams(self) -> None:
        """Stack each layer's two streams into [2, ...] tensors; the parameters become views of them."""
        if any(p.device.type == "meta" for p in self.parameters()):
            self._stacks = None
            return
        stacks = []
        for b1, b2 in zip(self.blocks1, self.blocks2):
            p2 = dict(b2.named_parameters())
            st = {}
            for name, p in list(b1.named_parameters()):
                s = torch.stack([p.detach(), p2[name].detach()])
                _set_param(b1, name, s[0])
                _set_param(b2, name, s[1])
                st[name] = s
            stacks.append(st)
        self._stacks = stacks
        self._stack_key = self._param_key()

    def _views_valid(self) -> bool:
        """True when every per-stream parameter still is its slice of the stacked tensor."""
        for b1, b2, st in zip(self.blocks1, self.blocks2, self._stacks):
            p2 = dict(b2.named_parameters())
            for name, p in b1.named_parameters():
                s = st.get(name)
                if s is None or p.data_ptr() != s[0].data_ptr() or p2[name].data_ptr() != s[1].data_ptr():
                    return False
        return True

    def _ensure_stacked(self) -> None:
        if self._stacks is not None:
            key = self._param_key()
            if key == self._stack_key:
                return
            if self._views_valid():  # storage moved in place (e.g. share_memory_): views still hold
                self._stack_key = key
                return
        if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
            raise RuntimeError("Decoder: stacked stream weights are stale during CUDA-graph capture")
        self.stack_streams()

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        feat1: torch.Tensor,  # [B, N1, C_enc]
        pos1: torch.Tensor,  # [B, N1, 2]
        feat2: torch.Tensor,  # [B, N2, C_enc]
        pos2: torch.Tensor,  # [B, N2, 2]
        max_pos: int,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Returns, per view, the fp32 tokens [B, N, C_dec] of the hooked layers (last one normed)."""
        dt = self.embed.weight.dtype
        rope1 = self.rope.tables(pos1, max_pos, dt)
        rope2 = self.rope.tables(pos2, max_pos, dt)
        if self.paired and feat1.shape == feat2.shape:
            return self._forward_paired(feat1, feat2, rope1, rope2, dt)
        x1 = self.embed(feat1.to(dt)).float()
        x2 = self.embed(feat2.to(dt)).float()
        hooks = set(self.arch.hooks[1:-1])
        out1, out2 = [], []
        for i, (b1, b2) in enumerate(zip(self.blocks1, self.blocks2), start=1):
            x1, x2 = b1(x1, x2, rope1, rope2), b2(x2, x1, rope2, rope1)
            if i in hooks:
                out1.append(x1)
                out2.append(x2)
        out1.append(self.norm(x1))
        out2.append(self.norm(x2))
        return out1, out2

    def _forward_paired(self, feat1, feat2, rope1, rope2, dt):
        self._ensure_stacked()
        X = self.embed(torch.stack([feat1, feat2]).to(dt)).float()  # [2, B, N, C]
        own = (torch.stack([rope1[0], rope2[0]]), torch.stack([rope1[1], rope2[1]]))  # [2, B, 1, N, Dh]
        other = (own[0].flip(0), own[1].flip(0))
        hooks = set(self.arch.hooks[1:-1])
        impl = self.blocks1[0].attn.impl
        outs = []
        for i, st in enumerate(self._stacks, start=1):
            X = _paired_block(st, X, own, other, self.arch.dec_num_heads, self.arch.norm_eps, impl)
            if i in hooks:
                outs.append(X)
        outs.append(self.norm(X))
        return [t[0] for t in outs], [t[1] for t in outs]


def _paired_block(st: dict, X: torch.Tensor, own, other, nh: int, eps: float, impl: str) -> torch.Tensor:
    """One DecoderBlock for both streams at once. X [2, B, N, C] fp32 (stream s = view s+1)."""
    S, B, N, C = X.shape
    dh = C // nh
    dt = st["attn.qkv.weight"].dtype

    def ln(x, name, swap: bool = False):
        """Per-stream LayerNorm (fp32) -> compute dtype, [2, B*N, C]; ``swap``: stream s normalises x[1 - s]."""
        w, b = st[name + ".weight"], st[name + ".bias"]
        if dt == torch.float32:  # the reference formulation (fp32 parity)
            if swap:
                x = torch.cat((x[1:], x[:1])) if S == 2 else x.flip(0)
            return torch.addcmul(b[:, None, None], F.layer_norm(x, (C,), eps=eps), w[:, None, None]).view(S, B * N, C)
        # half: affine fused into each stream's layer_norm, written straight into the half tensor
        # (one pass less than norm + addcmul + cast, and no swapped copy of x)
        out = torch.empty((S, B, N, C), device=x.device, dtype=dt)
        for s in range(S):
            out[s].copy_(F.layer_norm(x[S - 1 - s] if swap else x[s], (C,), w[s], b[s], eps))
        return out.view(S, B * N, C)

    def lin(x, name):  # [2, M, Cin] -> [2, M, Cout]
        return torch.baddbmm(st[name + ".bias"][:, None], x, st[name + ".weight"].transpose(1, 2))

    def heads(x):  # [2, B*N, C] -> [2, B, nh, N, dh]
        return x.view(S, B, N, nh, dh).transpose(2, 3)

    def attend(q, k, v):  # [2, B, nh, N, dh] each -> [2, B*N, C]
        a = attention(q.reshape(S * B, nh, N, dh), k.reshape(S * B, nh, N, dh), v.reshape(S * B, nh, N, dh), impl)
        return a.reshape(S, B, nh, N, dh).transpose(2, 3).reshape(S, B * N, C)

    Y = X  # this layer's input of both streams (stream s cross-attends to the other one's, Y[1 - s])
    # self-attention
    qkv = lin(ln(X, "norm1"), "attn.qkv").view(S, B, N, 3, nh, dh).permute(3, 0, 1, 4, 2, 5)  # [3, 2, B, nh, N, dh]
    qk = apply_rope(qkv[:2], *own)
    X = X + lin(attend(qk[0], qk[1], qkv[2]), "attn.proj").view(S, B, N, C)
    # cross-attention to the other stream (normalised by this stream's norm_y)
    yn = ln(Y, "norm_y", swap=True)
    q = apply_rope(heads(lin(ln(X, "norm2"), "cross_attn.projq")), *own)
    k = apply_rope(heads(lin(yn, "cross_attn.projk")), *other)
    v = heads(lin(yn, "cross_attn.projv"))
    X = X + lin(attend(q, k, v), "cross_attn.proj").view(S, B, N, C)
    # MLP
    h = lin(F.gelu(lin(ln(X, "norm3"), "mlp.fc1")), "mlp.fc2")
    return X + h.view(S, B, N, C)
