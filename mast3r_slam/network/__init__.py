"""The MASt3R network (ViT-L encoder, ViT-B two-stream decoder, catmlp+dpt heads) and its loaders.

Module map: ``arch`` (sizes, constructor-string parser), ``layers/`` (rope, attention, mlp,
blocks, patch_embed), ``encoder``, ``decoder``, ``heads`` (DPT + local-feature MLP +
post-processing), ``mast3r`` (the model), ``checkpoint`` (safe loading of the official files),
``retrieval_model`` (retrieval head + codebook), ``cuda_graphs``, ``synthetic`` (test weights).
See docs/NETWORK.md.
"""
from .arch import SMALL, TINY, VITL, Mast3rArch, arch_from_constructor
from .checkpoint import (
    CODEBOOK_NAME,
    MAIN_NAME,
    RETRIEVAL_NAME,
    build_mast3r,
    default_paths,
    load_mast3r,
    load_torch_file,
    safe_pickle_load,
)
from .mast3r import Mast3rModel, as_dtype
from .retrieval_model import RetrievalModel, load_codebook, load_retrieval_model

__all__ = [
    "Mast3rArch", "VITL", "SMALL", "TINY", "arch_from_constructor",
    "Mast3rModel", "as_dtype", "load_mast3r", "build_mast3r", "load_torch_file", "safe_pickle_load",
    "default_paths", "MAIN_NAME", "RETRIEVAL_NAME", "CODEBOOK_NAME",
    "RetrievalModel", "load_retrieval_model", "load_codebook",
]
