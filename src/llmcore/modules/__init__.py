"""Building blocks of Transformer models: attention, positions, norms, MLPs, blocks and the KV cache.

Nothing here imports training, generation or conversion code; every module is built from
``(config, layer_idx)``.
"""

from .attention import Attention, make_attention_mask, reference_attention
from .blocks import CrossDecoderBlock, DecoderBlock, EncoderBlock
from .cache import KVCache
from .layers import MLP, MLPS, NORMS, LayerNorm, RMSNorm, SwiGLU, build_mlp, build_norm, dropout
from .positional import (
    POSITIONAL,
    LearnedPositionalEmbedding,
    RotaryEmbedding,
    SinusoidalPositionalEmbedding,
    apply_rotary,
)
from .utils import eval_mode, num_parameters

__all__ = [
    "Attention", "make_attention_mask", "reference_attention",
    "DecoderBlock", "EncoderBlock", "CrossDecoderBlock", "KVCache",
    "LayerNorm", "RMSNorm", "MLP", "SwiGLU", "NORMS", "MLPS", "build_norm", "build_mlp", "dropout",
    "LearnedPositionalEmbedding", "SinusoidalPositionalEmbedding", "RotaryEmbedding", "apply_rotary", "POSITIONAL",
    "eval_mode", "num_parameters",
]
