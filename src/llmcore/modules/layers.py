"""Normalisation layers and feed-forward (MLP) blocks, with name → class tables.

``NORMS`` and ``MLPS`` map the string names stored in :class:`~llmcore.config.ModelConfig` to classes, so a
config stays JSON and an unknown name fails with the list of valid ones (the config validates first). Every
module is built from ``(config, layer_idx)`` so a replacement fits without glue.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (GPT-2 has one; many recent models drop it)."""

    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., D) -> (..., D)
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


class RMSNorm(nn.Module):
    """Root-mean-square norm (Zhang & Sennrich 2019), as in Llama: x / rms(x) · g, computed in fp32.

    The fp32 upcast matters under bf16: the mean of squares loses precision otherwise, and Hugging Face's
    Llama does the same, which keeps our logits within parity tolerance.
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., D) -> (..., D)
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def dropout(p: float) -> nn.Module:
    """``nn.Dropout(p)``, or an identity when p == 0 so inference and dropout-free training skip the call."""
    return nn.Dropout(p) if p > 0 else nn.Identity()


def build_norm(config: ModelConfig) -> nn.Module:
    """The norm named by ``config.norm``, sized ``config.d_model``."""
    if config.norm == "rmsnorm":
        return RMSNorm(config.d_model, config.norm_eps)
    return LayerNorm(config.d_model, config.norm_eps, bias=config.bias)


_ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),  # GPT-2's "gelu_new"
    "relu": F.relu,
}


class MLP(nn.Module):
    """Position-wise feed-forward: down(act(up(x))), with act one of gelu, gelu_tanh, relu."""

    def __init__(self, config: ModelConfig, layer_idx: int = 0) -> None:
        super().__init__()
        self.up_proj = nn.Linear(config.d_model, config.d_ff, bias=config.bias)
        self.down_proj = nn.Linear(config.d_ff, config.d_model, bias=config.bias)
        self.act = _ACTIVATIONS[config.activation]
        self.dropout = dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, T, D)
        return self.dropout(self.down_proj(self.act(self.up_proj(x))))


class SwiGLU(nn.Module):
    """Gated feed-forward of Shazeer (2020) used by Llama: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: ModelConfig, layer_idx: int = 0) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.d_model, config.d_ff, bias=config.bias)
        self.up_proj = nn.Linear(config.d_model, config.d_ff, bias=config.bias)
        self.down_proj = nn.Linear(config.d_ff, config.d_model, bias=config.bias)
        self.dropout = dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, T, D)
        return self.dropout(self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x)))


NORMS: dict[str, type[nn.Module]] = {"layernorm": LayerNorm, "rmsnorm": RMSNorm}
MLPS: dict[str, type[nn.Module]] = {"gelu": MLP, "gelu_tanh": MLP, "relu": MLP, "swiglu": SwiGLU}


def build_mlp(config: ModelConfig, layer_idx: int = 0) -> nn.Module:
    """The feed-forward block named by ``config.activation``."""
    return MLPS[config.activation](config, layer_idx)
