"""Building blocks of Transformer models: attention, masks, positions, norms, MLPs, blocks, init and the KV cache.

Nothing here imports training, generation or conversion code; every module is built from
``(config, layer_idx)``. The name tables ``NORMS``, ``MLPS`` and ``POS_ENCODINGS`` are the open registries of
:mod:`llmcore.registry`, filled by the built-ins defined here.
"""

from ..registry import MLPS, NORMS, POS_ENCODINGS
from .attention import Attention, reference_attention, sdpa_attention
from .blocks import CrossDecoderBlock, DecoderBlock, EncoderBlock
from .cache import KVCache
from .init import init_weights, mark_residual
from .layers import MLP, LayerNorm, RMSNorm, SwiGLU, build_mlp, build_norm, dropout
from .linear import Linear
from .masks import (
    attention_inputs,
    causal_mask,
    check_mask_length,
    combine_masks,
    make_attention_mask,
    resolve_causal,
)
from .positional import (
    AbsolutePositions,
    LearnedPositionalEmbedding,
    RotaryEmbedding,
    RotaryPositions,
    SinusoidalPositionalEmbedding,
    apply_rotary,
    build_positions,
)
from .quantized import Int8Linear, quantize_linears
from .utils import eval_mode, num_parameters

__all__ = [
    "Attention", "reference_attention", "sdpa_attention",
    "make_attention_mask", "causal_mask", "combine_masks", "resolve_causal", "check_mask_length", "attention_inputs",
    "DecoderBlock", "EncoderBlock", "CrossDecoderBlock", "KVCache",
    "LayerNorm", "RMSNorm", "MLP", "SwiGLU", "NORMS", "MLPS", "build_norm", "build_mlp", "dropout",
    "AbsolutePositions", "RotaryPositions", "LearnedPositionalEmbedding", "SinusoidalPositionalEmbedding",
    "RotaryEmbedding", "apply_rotary", "build_positions", "POS_ENCODINGS",
    "init_weights", "mark_residual", "eval_mode", "num_parameters", "Int8Linear", "quantize_linears",
    "Linear",
]
