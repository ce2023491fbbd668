"""Architecture constants of the MASt3R network and the parser of the checkpoint's constructor string.

The official checkpoint stores the Python expression that built it (``ckpt['args'].model``, e.g.
``AsymmetricMASt3R(pos_embed='RoPE100', ..., enc_depth=24, ...)``). We never evaluate it: it is
parsed with :mod:`ast`, its class name and fixed options are checked against the one network this
package implements (spec: network §2.1), and only the sizes are read from it.
"""
from __future__ import annotations

import ast
import math
from dataclasses import dataclass, replace

from ..errors import CheckpointError

#: class names a MASt3R checkpoint may name (the catmlp+dpt "metric" model)
MAST3R_CLASSES = ("AsymmetricMASt3R",)
#: class names that identify a DUSt3R (or plain CroCo) checkpoint: a common wrong file
DUST3R_CLASSES = ("AsymmetricCroCo3DStereo", "CroCoNet", "CroCoDownstreamBinocular")


@dataclass(frozen=True)
class Mast3rArch:
    """Sizes and options of the network. Defaults are the official ViT-L / ViT-B model."""

    enc_embed_dim: int = 1024
    enc_depth: int = 24
    enc_num_heads: int = 16
    dec_embed_dim: int = 768
    dec_depth: int = 12
    dec_num_heads: int = 12
    patch_size: int = 16
    mlp_ratio: float = 4.0
    rope_base: float = 100.0
    desc_dim: int = 24
    norm_eps: float = 1e-6
    # DPT head sizes (dust3r defaults, not part of the constructor string)
    dpt_layer_dims: tuple[int, int, int, int] = (96, 192, 384, 768)
    dpt_feature_dim: int = 256
    dpt_last_dim: int = 128

    def __post_init__(self):
        for dim, heads, what in (
            (self.enc_embed_dim, self.enc_num_heads, "enc"),
            (self.dec_embed_dim, self.dec_num_heads, "dec"),
        ):
            if dim % heads != 0 or (dim // heads) % 4 != 0:
                raise CheckpointError(
                    f"network: {what}_embed_dim={dim} must split into {what}_num_heads={heads} heads "
                    "whose size is a multiple of 4 (2D RoPE)"
                )
        if self.dec_depth < 4:
            raise CheckpointError(f"network: dec_depth={self.dec_depth} is too small for the DPT head (needs >= 4)")

    @property
    def hooks(self) -> tuple[int, int, int, int]:
        """Decoder layers read by the DPT head (0 = encoder output): [0, D/2, 3D/4, D]."""
        d = self.dec_depth
        return (0, d * 2 // 4, d * 3 // 4, d)

    @property
    def local_feat_dim(self) -> int:
        """Channels per pixel of the local-feature MLP: descriptor + its confidence."""
        return self.desc_dim + 1


#: the official MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric network
VITL = Mast3rArch()
#: the fixtures' fast variant: official network with a 2-block encoder
SMALL = replace(VITL, enc_depth=2)
#: a toy network for CPU smoke tests and the benchmark's ``--small`` path (random weights)
TINY = Mast3rArch(
    enc_embed_dim=128, enc_depth=2, enc_num_heads=2, dec_embed_dim=128, dec_depth=4, dec_num_heads=2,
    dpt_layer_dims=(16, 32, 64, 128), dpt_feature_dim=32, dpt_last_dim=16,
)

# Options the checkpoint may state; the value must be the one this package implements.
_FIXED = {
    "head_type": "catmlp+dpt",
    "depth_mode": ("exp", -math.inf, math.inf),
    "conf_mode": ("exp", 1, math.inf),
    "desc_conf_mode": ("exp", 0, math.inf),
    "two_confs": True,
    "desc_mode": "norm",
    "norm_im2_in_dec": True,
}
_SIZES = ("enc_embed_dim", "enc_depth", "enc_num_heads", "dec_embed_dim", "dec_depth", "dec_num_heads")
_IGNORED = {"img_size", "freeze", "mask_ratio", "landscape_only", "patch_embed_cls", "pos_embed",
            "output_mode", "patch_size", "mlp_ratio"}


def _literal(node: ast.AST):
    """Evaluate a literal node; the name ``inf`` (as the original's namespace defines it) is allowed."""
    if isinstance(node, ast.Name) and node.id == "inf":
        return math.inf
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _literal(node.operand)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.Tuple):
        return tuple(_literal(e) for e in node.elts)
    if isinstance(node, ast.List):
        return [_literal(e) for e in node.elts]
    if isinstance(node, ast.Constant):
        return node.value
    raise ValueError(ast.dump(node))


def parse_constructor(text: str, source: str = "checkpoint") -> tuple[str, dict]:
    """Parse ``Class(key=literal, ...)`` without evaluating it: (class name, keyword arguments)."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
        call = tree.body
        if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name) or call.args:
            raise ValueError("not a call with keyword arguments")
        kwargs = {kw.arg: _literal(kw.value) for kw in call.keywords}
    except (SyntaxError, ValueError) as e:
        raise CheckpointError(
            f"{source}: args.model is not a constructor call of literal keyword arguments ({e}): {text[:120]!r}"
        ) from None
    return call.func.id, kwargs


def _same(a, b) -> bool:
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def arch_from_constructor(text: str, source: str = "checkpoint") -> Mast3rArch:
    """Check that ``text`` builds the MASt3R catmlp+dpt metric network and read its sizes."""
    name, kw = parse_constructor(text, source)
    if name in DUST3R_CLASSES:
        raise CheckpointError(
            f"{source}: this is a DUSt3R/CroCo checkpoint ({name}), not MASt3R; get the MASt3R files with "
            "`bash scripts/download_checkpoints.sh`"
        )
    if name not in MAST3R_CLASSES:
        raise CheckpointError(f"{source}: expected a {'/'.join(MAST3R_CLASSES)} checkpoint, found class {name}")
    for key, want in _FIXED.items():
        if key in kw and not _same(kw[key], want):
            raise CheckpointError(f"{source}: unsupported {key}={kw[key]!r} (this package implements {want!r})")
    pe = kw.get("pos_embed", "RoPE100")
    if not (isinstance(pe, str) and pe.startswith("RoPE")):
        raise CheckpointError(f"{source}: unsupported pos_embed={pe!r} (expected 'RoPE<base>')")
    try:
        base = float(pe[4:])
    except ValueError:
        raise CheckpointError(f"{source}: unsupported pos_embed={pe!r} (expected 'RoPE<base>')") from None
    pcls = kw.get("patch_embed_cls", "PatchEmbedDust3R")
    if pcls not in ("ManyAR_PatchEmbed", "PatchEmbedDust3R"):
        raise CheckpointError(f"{source}: unsupported patch_embed_cls={pcls!r}")
    om = kw.get("output_mode", "pts3d+desc24")
    if not (isinstance(om, str) and om.startswith("pts3d+desc") and om[10:].isdigit()):
        raise CheckpointError(f"{source}: unsupported output_mode={om!r} (expected 'pts3d+desc<N>')")
    unknown = sorted(set(kw) - set(_FIXED) - set(_SIZES) - _IGNORED)
    if unknown:
        raise CheckpointError(f"{source}: unknown constructor arguments {unknown} in args.model")
    sizes = {k: int(kw[k]) for k in _SIZES if k in kw}
    extra = {}
    if "patch_size" in kw:
        extra["patch_size"] = int(kw["patch_size"])
    if "mlp_ratio" in kw:
        extra["mlp_ratio"] = float(kw["mlp_ratio"])
    return replace(VITL, rope_base=base, desc_dim=int(om[10:]), **sizes, **extra)


def constructor_string(arch: Mast3rArch) -> str:
    """The constructor string the original would store for ``arch`` (for synthetic checkpoints)."""
    return (
        "AsymmetricMASt3R(pos_embed='RoPE%g', patch_embed_cls='ManyAR_PatchEmbed', img_size=(512, 512), "
        "head_type='catmlp+dpt', output_mode='pts3d+desc%d', depth_mode=('exp', -inf, inf), "
        "conf_mode=('exp', 1, inf), enc_embed_dim=%d, enc_depth=%d, enc_num_heads=%d, dec_embed_dim=%d, "
        "dec_depth=%d, dec_num_heads=%d, two_confs=True, desc_conf_mode=('exp', 0, inf))"
        % (arch.rope_base, arch.desc_dim, arch.enc_embed_dim, arch.enc_depth, arch.enc_num_heads,
           arch.dec_embed_dim, arch.dec_depth, arch.dec_num_heads)
    )
