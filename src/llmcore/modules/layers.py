"""Normalisation layers and feed-forward (MLP) blocks, registered by name in the open registries.

``NORMS`` (``ModelConfig.norm`` -> ``factory(config)``) and ``MLPS`` (``ModelConfig.activation`` ->
``factory(config, layer_idx)``) live in :mod:`llmcore.registry`; the built-ins register here, and a user
registers their own the same way from their own file::

    @NORMS.register("scalenorm")
    def scale_norm(config): return ScaleNorm(config.d_model, config.norm_eps)

``ModelConfig`` validates the names against these tables, so an unknown one fails with the registered list.
MLPs mark their output projection with :func:`~llmcore.modules.init.mark_residual` (scaled init).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..registry import MLPS, NORMS
from .init import mark_residual
from .linear import Linear


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (GPT-2 has one; many recent models drop it)."""

    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

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

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., D) -> (..., D)
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def dropout(p: float) -> nn.Module:
    """``nn.Dropout(p)``, or an identity when p == 0 so inference and dropout-free training skip the call."""
    return nn.Dropout(p) if p > 0 else nn.Identity()


@NORMS.register("layernorm")
def layer_norm(config: ModelConfig) -> nn.Module:
    return LayerNorm(config.d_model, config.norm_eps, bias=config.bias)


@NORMS.register("rmsnorm")
def rms_norm(config: ModelConfig) -> nn.Module:
    return RMSNorm(config.d_model, config.norm_eps)


def build_norm(config: ModelConfig) -> nn.Module:
    """The norm registered as ``config.norm``, sized ``config.d_model``."""
    return NORMS.get(config.norm)(config)


_ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),  # GPT-2's "gelu_new"
    "relu": F.relu,
}


class MLP(nn.Module):
    """Position-wise feed-forward: down(act(up(x))), with act one of gelu, gelu_tanh, relu."""

    def __init__(self, config: ModelConfig, layer_idx: int = 0) -> None:
        super().__init__()
        self.up_proj = Linear(config.d_model, config.d_ff, bias=config.bias)
        self.down_proj = mark_residual(Linear(config.d_ff, config.d_model, bias=config.bias))
        self.act = _ACTIVATIONS[config.activation]
        self.dropout = dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, T, D)
        return self.dropout(self.down_proj(self.act(self.up_proj(x))))


class SwiGLU(nn.Module):
    """Gated feed-forward of Shazeer (2020) used by Llama: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: ModelConfig, layer_idx: int = 0) -> None:
        super().__init__()
        self.gate_proj = Linear(config.d_model, config.d_ff, bias=config.bias)
        self.up_proj = Linear(config.d_model, config.d_ff, bias=config.bias)
        self.down_proj = mark_residual(Linear(config.d_ff, config.d_model, bias=config.bias))
        self.dropout = dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, T, D)
        return self.dropout(self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x)))


for _name in _ACTIVATIONS:  # one MLP class, the activation picked by name
    MLPS.register(_name, MLP)
MLPS.register("swiglu", SwiGLU)


def build_mlp(config: ModelConfig, layer_idx: int = 0) -> nn.Module:
    """The feed-forward block registered as ``config.activation``."""
    return MLPS.get(config.activation)(config, layer_idx)
