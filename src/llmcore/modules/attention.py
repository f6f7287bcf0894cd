"""Multi-head scaled dot-product attention: self- and cross-attention, MHA / GQA / MQA, with masks.

For each head, with queries Q (T, d), keys K (S, d) and values V (S, d):

    Attention(Q, K, V) = softmax(Q Kᵀ / √d + M) V

The 1/√d keeps the logits' variance near 1 whatever the head size, so the softmax does not saturate.
M is 0 where a query may look and −∞ where it may not (future tokens for causal attention, padding keys).
Here masks are boolean, True = may attend, broadcastable to (B, H, T, S).

Two paths compute the same thing: ``F.scaled_dot_product_attention`` (fused, fast; the default) and an
explicit reference path that spells the formula out and can return the attention weights for inspection
(attention maps). ``Attention.attend`` is the seam to override for a new attention variant.

Grouped-query attention (Ainslie et al., 2023) stores ``n_kv_heads`` key/value heads and shares each
between ``n_heads / n_kv_heads`` query heads; n_kv_heads == n_heads is plain multi-head attention and
n_kv_heads == 1 is multi-query attention.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .cache import KVCache
from .layers import dropout
from .positional import apply_rotary


def make_attention_mask(key_padding_mask: torch.Tensor | None, q_len: int, past_len: int = 0,
                        causal: bool = True) -> torch.Tensor | None:
    """Boolean mask (B or 1, 1, q_len, past_len + q_len), True = may attend; None when no masking is needed.

    ``key_padding_mask`` (B, past_len + q_len) has 1 for real tokens and 0 for padding. Each query may always
    attend to its own position, so rows of padding queries are never fully masked (a fully masked row would
    make the softmax NaN); their outputs are ignored by the loss and by generation anyway.
    """
    total = past_len + q_len
    if key_padding_mask is None and (not causal or q_len == 1):
        return None  # every query sees every key
    q_pos = torch.arange(past_len, total, device=_device(key_padding_mask))[:, None]  # (T, 1)
    k_pos = torch.arange(total, device=q_pos.device)[None, :]  # (1, S)
    mask = (k_pos <= q_pos) if causal else torch.ones(q_len, total, dtype=torch.bool, device=q_pos.device)
    mask = mask[None, None]  # (1, 1, T, S)
    if key_padding_mask is not None:
        mask = mask & key_padding_mask.bool()[:, None, None, :]
        mask = mask | (k_pos == q_pos)[None, None]  # always see yourself
    return mask


def _device(t: torch.Tensor | None) -> torch.device | None:
    return None if t is None else t.device


class Attention(nn.Module):
    """Multi-head attention built from ``(config, layer_idx)``.

    Self-attention projects q, k, v with one fused matrix; cross-attention (``cross=True``) projects queries
    from the decoder stream and keys/values from the encoder output ``memory``. RoPE, when configured, is
    applied to self-attention queries and keys only.
    """

    use_sdpa: bool = True  # False routes every call through the explicit reference path

    def __init__(self, config: ModelConfig, layer_idx: int = 0, cross: bool = False) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.cross = cross
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, config.head_dim
        q_dim, kv_dim = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        if cross:
            self.q_proj = nn.Linear(config.d_model, q_dim, bias=config.bias)
            self.kv_proj = nn.Linear(config.d_model, 2 * kv_dim, bias=config.bias)
        else:
            self.qkv_proj = nn.Linear(config.d_model, q_dim + 2 * kv_dim, bias=config.bias)
        self.out_proj = nn.Linear(q_dim, config.d_model, bias=config.bias)
        self.attn_dropout = config.dropout
        self.resid_dropout = dropout(config.dropout)
        self.last_weights: torch.Tensor | None = None  # (B, H, T, S), set when return_weights=True

    def _split_heads(self, x: torch.Tensor, n: int) -> torch.Tensor:  # (B, T, n*hd) -> (B, n, T, hd)
        B, T, _ = x.shape
        return x.view(B, T, n, self.head_dim).transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        is_causal: bool = False,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        kv_cache: KVCache | None = None,
        memory: torch.Tensor | None = None,
        return_weights: bool = False,
    ) -> torch.Tensor:
        """Attend from ``x`` (B, T, D) to itself, or to ``memory`` (B, S, D) when ``cross``.

        Args:
            mask: boolean (B|1, 1, T, S), True = may attend; see :func:`make_attention_mask`.
            is_causal: use the causal mask without materialising it (only when ``mask`` is None).
            rope: (cos, sin), each (B, T, head_dim), for rotary positions.
            kv_cache: when given, new keys/values are appended and attention covers all cached positions.
            return_weights: use the reference path and keep the weights in ``self.last_weights``.

        Returns:
            (B, T, D)
        """
        B, T, _ = x.shape
        q_dim, kv_dim = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        if self.cross:
            if memory is None:
                raise ValueError("cross-attention needs `memory`, the encoder output (B, S, D)")
            q = self._split_heads(self.q_proj(x), self.n_heads)
            cached = kv_cache.cross[self.layer_idx] if kv_cache is not None else None
            if cached is None:  # encoder keys/values are computed once per generation
                k, v = self.kv_proj(memory).split(kv_dim, dim=-1)
                k, v = self._split_heads(k, self.n_kv_heads), self._split_heads(v, self.n_kv_heads)
                if kv_cache is not None:
                    kv_cache.cross[self.layer_idx] = (k, v)
            else:
                k, v = cached
        else:
            q, k, v = self.qkv_proj(x).split([q_dim, kv_dim, kv_dim], dim=-1)
            q = self._split_heads(q, self.n_heads)  # (B, H, T, hd)
            k, v = self._split_heads(k, self.n_kv_heads), self._split_heads(v, self.n_kv_heads)
            if rope is not None:
                q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
            if kv_cache is not None:
                k, v = kv_cache.update(self.layer_idx, k, v)  # (B, Hkv, S, hd)
        if self.n_kv_heads != self.n_heads:  # GQA: each kv head serves n_heads / n_kv_heads query heads
            rep = self.n_heads // self.n_kv_heads
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        y, weights = self.attend(q, k, v, mask, is_causal and mask is None, return_weights)
        self.last_weights = weights
        y = y.transpose(1, 2).reshape(B, T, q_dim)  # (B, T, H*hd)
        return self.resid_dropout(self.out_proj(y))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
               is_causal: bool, return_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """softmax(q kᵀ / √d + mask) v for q (B, H, T, hd), k/v (B, H, S, hd). Returns (out, weights or None)."""
        dropout_p = self.attn_dropout if self.training else 0.0
        if self.use_sdpa and not return_weights:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal)
            return out, None
        return reference_attention(q, k, v, mask, is_causal, dropout_p)


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
                        is_causal: bool = False, dropout_p: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The formula written out: returns (softmax(QKᵀ/√d + M)·V (B, H, T, hd), weights (B, H, T, S))."""
    T, S = q.shape[-2], k.shape[-2]
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (B, H, T, S)
    if is_causal:  # queries are the last T of S positions
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=S - T)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    if dropout_p > 0:
        weights = F.dropout(weights, p=dropout_p)
    return weights @ v, weights
