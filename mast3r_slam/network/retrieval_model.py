"""The training-free retrieval head over cached encoder features, and its codebook (spec: network §7.1-7.2).

Per image: prewhiten (float64) -> optional projector MLP (+ residual) -> attention = L2 norm of
each token -> postwhiten (float64) -> keep the ``nfeat`` tokens of largest attention (sorted by
descending attention). Every option is read from the retrieval checkpoint's own ``args``; the
backbone is the already loaded MASt3R encoder (its cached ``frame.feat`` is the input).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError
from .checkpoint import HINT, codebook_path_for, load_torch_file, safe_pickle_load


class Whitener(nn.Module):
    """y = (x - m) @ p in float64 (autocast off), cast back to the input dtype; no normalisation."""

    def __init__(self, dim: int):
        super().__init__()
        self.m = nn.Parameter(torch.zeros(1, dim, dtype=torch.float64), requires_grad=False)
        self.p = nn.Parameter(torch.eye(dim, dtype=torch.float64), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            y = (x.to(torch.float64) - self.m) @ self.p
        return y.to(x.dtype)


def _projector(in_dim: int, hdims: list[int]) -> nn.Module:
    """[Linear, LayerNorm(eps 1e-5), GELU] per hidden dim except the last, then Linear (indices 0, 3, 6...)."""
    if not hdims:
        return nn.Identity()
    layers: list[nn.Module] = []
    d = in_dim
    for h in hdims[:-1]:
        layers += [nn.Linear(d, h), nn.LayerNorm(h), nn.GELU()]
        d = h
    layers.append(nn.Linear(d, hdims[-1]))
    return nn.Sequential(*layers)


class RetrievalModel(nn.Module):
    def __init__(
        self,
        in_dim: int = 1024,
        *,
        prewhiten: bool = True,
        hdims: list[int] | tuple[int, ...] = (),
        residual: bool = False,
        postwhiten: bool = False,
        nfeat: float = 300,
    ):
        super().__init__()
        hdims = list(hdims)
        if residual and hdims and hdims[-1] != in_dim:
            raise CheckpointError(f"retrieval: residual projector needs the last hdim ({hdims[-1]}) == {in_dim}")
        self.in_dim = in_dim
        self.out_dim = hdims[-1] if hdims else in_dim
        self.prewhiten = Whitener(in_dim) if prewhiten else nn.Identity()
        self.projector = _projector(in_dim, hdims)
        self.residual = bool(residual and hdims)
        self.postwhiten = Whitener(self.out_dim) if postwhiten else nn.Identity()
        self.nfeat = nfeat
        self.register_buffer("codebook", None, persistent=False)  # [K, out_dim] float32 centroids

    def num_features(self, n_tokens: int) -> int:
        if self.nfeat > 0:
            return int(min(self.nfeat, n_tokens))
        return max(1, min(n_tokens, int(-self.nfeat * n_tokens)))  # negative: a fraction of the tokens

    @torch.no_grad()
    def forward(self, feat: torch.Tensor, return_indices: bool = False):
        """feat [B, N, in_dim] encoder tokens -> local features [B, k, out_dim] (and token indices [B, k])."""
        feat = feat.float()
        z = self.prewhiten(feat)
        if self.residual:
            z = z + self.projector(z)
        else:
            z = self.projector(z)
        attn = z.norm(dim=-1)  # [B, N], before postwhitening
        w = self.postwhiten(z)
        k = self.num_features(w.shape[1])
        idx = attn.topk(k, dim=1).indices  # sorted by descending attention
        out = torch.gather(w, 1, idx[..., None].expand(-1, -1, w.shape[-1]))
        return (out, idx) if return_indices else out


def _parse_hdims(h) -> list[int]:
    if h is None or h == "" or h == []:
        return []
    if isinstance(h, str):
        return [int(x) for x in h.split("_") if x]
    return [int(x) for x in h]


def load_codebook(path, nclusters=None, dim: int | None = None) -> torch.Tensor:
    """Centroids [K, D] float32 from the ASMK codebook pickle (restricted unpickler)."""
    path = Path(path)
    obj = safe_pickle_load(path, "retrieval codebook")
    if not isinstance(obj, dict) or not isinstance(obj.get("state"), dict) or "centroids" not in obj["state"]:
        raise CheckpointError(f"{path}: expected an ASMK codebook dict with state['centroids']; {HINT}")
    if obj.get("type", "Codebook") != "Codebook":
        raise CheckpointError(f"{path}: expected type 'Codebook', found {obj.get('type')!r}")
    if nclusters is not None and obj.get("params") != {"size": nclusters}:
        raise CheckpointError(
            f"{path}: codebook params {obj.get('params')!r} do not match the retrieval checkpoint's nclusters={nclusters!r}"
        )
    c = obj["state"]["centroids"]
    if not isinstance(c, np.ndarray) or c.ndim != 2 or not np.issubdtype(c.dtype, np.floating):
        raise CheckpointError(f"{path}: centroids must be a 2-D float array, found {type(c).__name__} {getattr(c, 'shape', '')}")
    if dim is not None and c.shape[1] != dim:
        raise CheckpointError(f"{path}: centroids have dimension {c.shape[1]}, the retrieval features have {dim}")
    return torch.from_numpy(np.ascontiguousarray(c, dtype=np.float32))


def load_retrieval_model(
    path,
    device="cpu",
    *,
    codebook_path=None,
    with_codebook: bool = True,
    trust_pickle: bool = False,
) -> RetrievalModel:
    """Retrieval head from the trainingfree ``.pth`` (options from its ``args``) plus its codebook.

    The codebook defaults to the original's naming rule: same folder, last '_' token of the stem
    replaced by ``codebook.pkl``.
    """
    path = Path(path)
    ckpt = load_torch_file(path, "retrieval checkpoint", trust_pickle=trust_pickle)
    args = ckpt["args"]
    get = (lambda k, d=None: args.get(k, d)) if isinstance(args, dict) else (lambda k, d=None: getattr(args, k, d))
    if get("featweights", "l2norm") != "l2norm":
        raise CheckpointError(f"{path}: unsupported featweights={get('featweights')!r} (only 'l2norm')")
    if get("nfeat") is None:
        raise CheckpointError(f"{path}: args has no 'nfeat' (is this the retrieval checkpoint?)")
    sd = {k: v for k, v in ckpt["model"].items() if not k.startswith("backbone.")}
    hdims = _parse_hdims(get("hdims"))
    if "prewhiten.m" in sd:
        in_dim = sd["prewhiten.m"].shape[-1]
    elif "projector.0.weight" in sd:
        in_dim = sd["projector.0.weight"].shape[1]
    else:
        in_dim = 1024
    try:
        model = RetrievalModel(
            in_dim,
            prewhiten=get("prewhiten") is not None,
            hdims=hdims,
            residual=bool(get("residual", False)),
            postwhiten=get("postwhiten") is not None,
            nfeat=get("nfeat"),
        )
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    extra = sorted(set(sd) - set(own))
    if missing or extra:
        raise CheckpointError(f"{path}: retrieval state_dict mismatch (missing {missing[:3]}, unexpected {extra[:3]})")
    for k, v in own.items():
        if tuple(sd[k].shape) != tuple(v.shape):
            raise CheckpointError(f"{path}: {k} has shape {tuple(sd[k].shape)}, expected {tuple(v.shape)}")
    model.load_state_dict(sd, strict=True)
    if with_codebook:
        cb = Path(codebook_path) if codebook_path is not None else codebook_path_for(path)
        model.codebook = load_codebook(cb, get("nclusters"), model.out_dim)
    return model.to(device).requires_grad_(False)
