"""Transformer blocks: pre-norm decoder block, encoder block, and decoder block with cross-attention.

Pre-norm (x + f(norm(x))) as in GPT-2 and Llama: the residual stream is never normalised, which keeps
gradients well-behaved in deep stacks without warm-up tricks. Children are built through class attributes
(``attention_cls``, ``mlp_cls``, ``norm_fn``) so a new architecture swaps one part by subclassing:

    class MyBlock(DecoderBlock):
        attention_cls = MyAttention
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..config import ModelConfig
from .attention import Attention
from .cache import KVCache
from .layers import build_mlp, build_norm


class DecoderBlock(nn.Module):
    """x → x + attn(norm(x)) → x + mlp(norm(x)); causal self-attention."""

    attention_cls: type[nn.Module] = Attention
    mlp_cls: Callable[[ModelConfig, int], nn.Module] = staticmethod(build_mlp)
    norm_fn: Callable[[ModelConfig], nn.Module] = staticmethod(build_norm)

    def __init__(self, config: ModelConfig, layer_idx: int = 0) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.attn_norm = self.norm_fn(config)
        self.attn = self.attention_cls(config, layer_idx)
        self.mlp_norm = self.norm_fn(config)
        self.mlp = self.mlp_cls(config, layer_idx)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, is_causal: bool = True,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None, kv_cache: KVCache | None = None,
                return_weights: bool = False, **kwargs: torch.Tensor | None) -> torch.Tensor:
        """(B, T, D) -> (B, T, D). Extra keyword arguments (e.g. ``memory``) are ignored here."""
        x = x + self.attn(self.attn_norm(x), mask=mask, is_causal=is_causal, rope=rope, kv_cache=kv_cache,
                          return_weights=return_weights)
        return x + self.mlp(self.mlp_norm(x))


class EncoderBlock(DecoderBlock):
    """Bidirectional self-attention block (the encoder of an encoder-decoder); never causal, no cache."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, is_causal: bool = False,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None, kv_cache: KVCache | None = None,
                return_weights: bool = False, **kwargs: torch.Tensor | None) -> torch.Tensor:
        return super().forward(x, mask=mask, is_causal=False, rope=rope, kv_cache=None,
                               return_weights=return_weights)


class CrossDecoderBlock(DecoderBlock):
    """Decoder block of an encoder-decoder: causal self-attention, cross-attention to ``memory``, MLP."""

    def __init__(self, config: ModelConfig, layer_idx: int = 0) -> None:
        super().__init__(config, layer_idx)
        self.cross_norm = self.norm_fn(config)
        self.cross_attn = self.attention_cls(config, layer_idx, cross=True)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, is_causal: bool = True,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None, kv_cache: KVCache | None = None,
                return_weights: bool = False, memory: torch.Tensor | None = None,
                memory_mask: torch.Tensor | None = None, **kwargs: torch.Tensor | None) -> torch.Tensor:
        """``memory`` (B, S, D) is the encoder output; ``memory_mask`` boolean (B, 1, 1, S), True = real."""
        x = x + self.attn(self.attn_norm(x), mask=mask, is_causal=is_causal, rope=rope, kv_cache=kv_cache,
                          return_weights=return_weights)
        x = x + self.cross_attn(self.cross_norm(x), mask=memory_mask, kv_cache=kv_cache, memory=memory,
                                return_weights=return_weights)
        return x + self.mlp(self.mlp_norm(x))
