"""Positional encodings: learned absolute, sinusoidal absolute, and rotary (RoPE).

Absolute encodings are added to the token embeddings once; RoPE rotates queries and keys inside every
attention layer. Positions are passed explicitly as ``position_ids`` (B, T) so left-padded batches and
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


class LearnedPositionalEmbedding(nn.Embedding):
    """GPT-2 style: one trained vector per position, up to ``max_seq_len``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config.max_seq_len, config.d_model)


class SinusoidalPositionalEmbedding(nn.Module):
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


class RotaryEmbedding(nn.Module):
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


POSITIONAL: dict[str, type[nn.Module] | None] = {
    "learned": LearnedPositionalEmbedding,
    "sinusoidal": SinusoidalPositionalEmbedding,
    "rope": None,  # applied inside attention, see RotaryEmbedding
    "none": None,
}
