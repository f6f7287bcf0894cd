"""Positional encodings: learned absolute, sinusoidal absolute, and rotary (RoPE).

Absolute encodings are added to the token embeddings once; RoPE rotates queries and keys inside every
attention layer.

The protocol (what :class:`~llmcore.models.TransformerLM` relies on, whatever the name): the factory
registered in ``POS_ENCODINGS`` under ``ModelConfig.pos_encoding`` returns

* ``None`` — no position information in the embeddings (``"none"``; or ALiBi, which lives in attention);
* an :class:`AbsolutePositions` — ``forward(position_ids (B, T)) -> (B, T, D)``, added to the embeddings;
* a :class:`RotaryPositions` — ``forward(position_ids) -> (cos, sin)``, each (B, T, head_dim), applied to
  queries and keys of self-attention.

So ``POS_ENCODINGS.register("alibi", lambda config: None)`` makes ``pos_encoding="alibi"`` valid. Positions are passed explicitly as ``position_ids`` (B, T) so left-padded batches and
incremental decoding with a KV cache see the same positions as an unpadded full forward.

RoPE uses the Hugging Face / Llama *half-split* convention: the head dimension is split into two halves
(x1, x2) and rotated as (x1·cos − x2·sin, x2·cos + x1·sin), with frequency i shared by dims i and i + d/2.
Meta's original checkpoints interleave pairs instead; HF converts them by permuting q/k weights, so HF-format
Llama checkpoints load here without any permutation.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import ModelConfig
from ..errors import ConfigError
from ..registry import POS_ENCODINGS


class AbsolutePositions(nn.Module):
    """Base of encodings added to the token embeddings: ``forward(position_ids (B, T)) -> (B, T, D)``."""


class RotaryPositions(nn.Module):
    """Base of encodings applied to q and k: ``forward(position_ids (B, T)) -> (cos, sin)``, each (B, T, hd)."""


class LearnedPositionalEmbedding(nn.Embedding, AbsolutePositions):
    """GPT-2 style: one trained vector per position, up to ``max_seq_len``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config.max_seq_len, config.d_model)


class SinusoidalPositionalEmbedding(AbsolutePositions):
    """Fixed sin/cos encoding of Vaswani et al. (2017): PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(...)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        d = config.d_model
        pos = torch.arange(config.max_seq_len, dtype=torch.float32)[:, None]
        div = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))
        pe = torch.zeros(config.max_seq_len, d)
        pe[:, 0::2] = torch.sin(pos * div)
        pe[:, 1::2] = torch.cos(pos * div[: d // 2])
        # Not a parameter and not saved: it is a pure function of the config.
        self.register_buffer("pe", pe, persistent=False)

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, D)
        return self.pe[position_ids]


class RotaryEmbedding(RotaryPositions):
    """Rotary position embedding (Su et al., 2021). ``forward(position_ids)`` gives (cos, sin), each (B, T, hd).

    The cos/sin tables are precomputed in fp32 for ``max_seq_len`` positions and gathered by position id, so
    arbitrary (e.g. left-padded) positions cost one index per step.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        hd = config.head_dim
        inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))  # (hd/2,)
        t = torch.arange(config.max_seq_len, dtype=torch.float32)
        freqs = torch.outer(t, inv_freq)  # (max_len, hd/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # half-split: dims i and i+hd/2 share a frequency
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)

    def forward(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cos[position_ids], self.sin[position_ids]  # (B, T, hd) each


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) over the last dimension's two halves."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (B, H, T, hd) by the angles in cos/sin (B, T, hd)."""
    cos, sin = cos[:, None].to(x.dtype), sin[:, None].to(x.dtype)  # broadcast over heads
    return x * cos + rotate_half(x) * sin


POS_ENCODINGS.register("learned", LearnedPositionalEmbedding)
POS_ENCODINGS.register("sinusoidal", SinusoidalPositionalEmbedding)
POS_ENCODINGS.register("rope", RotaryEmbedding)


@POS_ENCODINGS.register("none")
def no_positions(config: ModelConfig) -> None:
    """No position encoding: a causal Transformer can still infer order from the mask (Haviv et al., 2022)."""
    return None


def build_positions(config: ModelConfig) -> nn.Module | None:
    """The encoding registered as ``config.pos_encoding``: None, an AbsolutePositions or a RotaryPositions."""
    pos = POS_ENCODINGS.get(config.pos_encoding)(config)
    if pos is not None and not isinstance(pos, (AbsolutePositions, RotaryPositions)):
        raise ConfigError(f"pos_encoding {config.pos_encoding!r} built a {type(pos).__name__}; a positional "
                          "factory must return None, an AbsolutePositions or a RotaryPositions "
                          "(llmcore.modules.positional).")
    return pos
