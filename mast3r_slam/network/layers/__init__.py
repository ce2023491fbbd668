"""Building blocks of the MASt3R network, one concept per module."""
from .attention import ATTENTION_IMPLS, CrossAttention, SelfAttention, attention, set_attention_impl
from .blocks import Block, DecoderBlock
from .mlp import Mlp
from .patch_embed import PatchEmbed, patch_positions
from .rope import RoPE2D, apply_rope

__all__ = [
    "ATTENTION_IMPLS", "CrossAttention", "SelfAttention", "attention", "set_attention_impl",
    "Block", "DecoderBlock", "Mlp", "PatchEmbed", "patch_positions", "RoPE2D", "apply_rope",
]
