"""Transformer blocks: pre-norm decoder block, encoder block, and decoder block with cross-attention.

Pre-norm (x + f(norm(x))) as in GPT-2 and Llama: the residual stream is never normalised, which keeps
gradients well-behaved in deep stacks without warm-up tricks. Children are built through class attributes
(``attention_cls``, ``mlp_cls``, ``norm_fn``) so a new architecture swaps one part by subclassing (or, for
attention, by registering a class in ``llmcore.registry.ATTENTIONS`` and naming it in ``config.attention``):

    class MyBlock(DecoderBlock):
        attention_cls = MyAttention

Norms are optional sub-modules: ``norm_slots`` lists the ones a block creates. A block that does not use
one leaves it out, and the attribute is then ``None`` and registers no parameter (DDP refuses parameters
that get no gradient). A GPT-J / NeoX parallel-residual block is::

    class ParallelBlock(DecoderBlock):
        norm_slots = ("attn_norm",)

        def forward(self, x, mask=None, is_causal=True, rope=None, kv_cache=None, attn_weights=None):
            h = self.attn_norm(x)
            return x + self.attn(h, mask, is_causal, rope, kv_cache, attn_weights=attn_weights) + self.mlp(h)

Arguments are explicit everywhere: a block is called only with the arguments its ``forward`` names (the
encoder-decoder passes ``memory`` to its cross-attention blocks only), so a typo is a TypeError, never a
silently ignored keyword.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..config import ModelConfig
from ..registry import ATTENTIONS
from .attention import Attention  # noqa: F401 - registers "default" before any block is built
from .cache import KVCache
from .layers import build_mlp, build_norm

Rope = tuple[torch.Tensor, torch.Tensor]


class DecoderBlock(nn.Module):
    """x → x + attn(norm(x)) → x + mlp(norm(x)); causal self-attention."""

    attention_cls: type[nn.Module] | None = None  # None: the class registered as config.attention
    mlp_cls: Callable[[ModelConfig, int], nn.Module] = staticmethod(build_mlp)
    norm_fn: Callable[[ModelConfig], nn.Module] = staticmethod(build_norm)
    norm_slots: tuple[str, ...] = ("attn_norm", "mlp_norm")  # the norms this block creates (others are None)

    def __init__(self, config: ModelConfig, layer_idx: int = 0) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.attn_norm = self.make_norm("attn_norm", config)
        self.attn = self.make_attention(config, layer_idx)
        self.mlp_norm = self.make_norm("mlp_norm", config)
        self.mlp = self.mlp_cls(config, layer_idx)

    def make_attention(self, config: ModelConfig, layer_idx: int, cross: bool = False) -> nn.Module:
        """``attention_cls`` if a subclass set one, else ``ATTENTIONS[config.attention]`` (default :class:`Attention`).

        The class attribute wins so an architecture that needs its own attention (ALiBi) is one subclass;
        the config name lets a registered variant be chosen per run (``--set attention=NAME``).
        """
        cls = self.attention_cls or ATTENTIONS.get(config.attention)
        return cls(config, layer_idx, cross=True) if cross else cls(config, layer_idx)

    def make_norm(self, slot: str, config: ModelConfig) -> nn.Module | None:
        """``norm_fn(config)`` if ``slot`` is in ``norm_slots``, else None (no unused parameters)."""
        return self.norm_fn(config) if slot in self.norm_slots else None

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, is_causal: bool = True,
                rope: Rope | None = None, kv_cache: KVCache | None = None,
                attn_weights: list[torch.Tensor] | None = None) -> torch.Tensor:
        """(B, T, D) -> (B, T, D). ``mask``/``is_causal``/``rope``/``kv_cache``: see :class:`Attention`."""
        x = x + self.attn(self.attn_norm(x), mask=mask, is_causal=is_causal, rope=rope, kv_cache=kv_cache,
                          attn_weights=attn_weights)
        return x + self.mlp(self.mlp_norm(x))


class EncoderBlock(DecoderBlock):
    """Bidirectional self-attention block (the encoder of an encoder-decoder); never causal, no cache."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, rope: Rope | None = None,
                attn_weights: list[torch.Tensor] | None = None) -> torch.Tensor:
        """(B, S, D) -> (B, S, D); ``mask`` hides padding keys."""
        return super().forward(x, mask=mask, is_causal=False, rope=rope, kv_cache=None, attn_weights=attn_weights)


class CrossDecoderBlock(DecoderBlock):
    """Decoder block of an encoder-decoder: causal self-attention, cross-attention to ``memory``, MLP."""

    norm_slots = ("attn_norm", "mlp_norm", "cross_norm")

    def __init__(self, config: ModelConfig, layer_idx: int = 0) -> None:
        super().__init__(config, layer_idx)
        self.cross_norm = self.make_norm("cross_norm", config)
        self.cross_attn = self.make_attention(config, layer_idx, cross=True)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor | None = None,
                is_causal: bool = True, rope: Rope | None = None, kv_cache: KVCache | None = None,
                memory_mask: torch.Tensor | None = None,
                attn_weights: list[torch.Tensor] | None = None) -> torch.Tensor:
        """``memory`` (B, S, D) is the encoder output; ``memory_mask`` boolean (B, 1, 1, S), True = real.

        With ``attn_weights``, self- and cross-attention weights are appended in that order.
        """
        x = x + self.attn(self.attn_norm(x), mask=mask, is_causal=is_causal, rope=rope, kv_cache=kv_cache,
                          attn_weights=attn_weights)
        x = x + self.cross_attn(self.cross_norm(x), mask=memory_mask, kv_cache=kv_cache, memory=memory,
                                attn_weights=attn_weights)
        return x + self.mlp(self.mlp_norm(x))
