"""Multi-head scaled dot-product attention: self- and cross-attention, MHA / GQA / MQA, with masks.

For each head, with queries Q (T, d), keys K (S, d) and values V (S, d):

    Attention(Q, K, V) = softmax(Q Kᵀ / √d + M) V

The 1/√d keeps the logits' variance near 1 whatever the head size, so the softmax does not saturate.
M is 0 where a query may look and −∞ where it may not (future tokens for causal attention, padding keys).
A mask is either boolean (True = may attend) or an additive float bias (ALiBi, relative positions), in both
cases broadcastable to (B, H, T, S); queries are the last T of the S key positions (see
:func:`~llmcore.modules.masks.resolve_causal`, which decides causal alignment for both paths below).

Two paths compute the same thing: ``F.scaled_dot_product_attention`` (fused, fast; the default) and
:func:`reference_attention`, which spells the formula out and is used when the caller asks for the
attention weights (``attn_weights=[]``: attention maps). ``Attention.attend`` is the one seam a variant
overrides; an ALiBi attention is ``attend`` adding its bias with :func:`~llmcore.modules.masks.combine_masks`
and calling ``super().attend``.

Grouped-query attention (Ainslie et al., 2023) stores ``n_kv_heads`` key/value heads and shares each
between ``n_heads / n_kv_heads`` query heads; n_kv_heads == n_heads is plain multi-head attention and
n_kv_heads == 1 is multi-query attention. Keys and values are never repeated per query head: SDPA gets
``enable_gqa=True`` (torch ≥ 2.5) and the reference path groups the query heads instead.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..registry import ATTENTIONS
from .cache import KVCache
from .init import mark_residual
from .layers import dropout
from .linear import Linear
from .masks import make_attention_mask, resolve_causal
from .positional import apply_rotary

# SDPA shares kv heads between query-head groups itself from torch 2.5; older versions get repeated heads.
SDPA_HAS_GQA = torch.__version__ >= "2.5"


@ATTENTIONS.register("default")
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
            self.q_proj = Linear(config.d_model, q_dim, bias=config.bias)
            self.kv_proj = Linear(config.d_model, 2 * kv_dim, bias=config.bias)
        else:
            self.qkv_proj = Linear(config.d_model, q_dim + 2 * kv_dim, bias=config.bias)
        self.out_proj = mark_residual(Linear(q_dim, config.d_model, bias=config.bias))
        self.attn_dropout = config.dropout
        self.resid_dropout = dropout(config.dropout)

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
        attn_weights: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Attend from ``x`` (B, T, D) to itself, or to ``memory`` (B, S, D) when ``cross``.

        Args:
            mask: boolean (True = may attend) or additive float, broadcastable to (B, H, T, S).
            is_causal: queries see only keys at or before their own position (bottom-right aligned when a
                cache makes S > T); combined with ``mask``.
            rope: (cos, sin), each (B, T, head_dim), for rotary positions.
            kv_cache: when given, new keys/values are appended and attention covers all cached positions.
            memory: encoder output (B, S, D), required for cross-attention.
            attn_weights: when a list, the reference path runs and this layer's weights (B, H, T, S) are
                appended to it.

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
        y = self.attend(q, k, v, mask, is_causal, attn_weights)  # (B, H, T, hd)
        y = y.transpose(1, 2).reshape(B, T, q_dim)  # (B, T, H*hd)
        return self.resid_dropout(self.out_proj(y))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
               is_causal: bool, attn_weights: list[torch.Tensor] | None = None) -> torch.Tensor:
        """softmax(q kᵀ / √d + mask) v for q (B, H, T, hd), k/v (B, Hkv, S, hd) -> (B, H, T, hd).

        Override to change the arithmetic (add a bias to ``mask``, restrict it to a window, rescale q) and
        call ``super().attend``: causal alignment, GQA and both paths come with it.
        """
        dropout_p = self.attn_dropout if self.training else 0.0
        if attn_weights is not None or not self.use_sdpa:
            out, weights = reference_attention(q, k, v, mask, is_causal, dropout_p)
            if attn_weights is not None:
                attn_weights.append(weights)
            return out
        return sdpa_attention(q, k, v, mask, is_causal, dropout_p)


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
                   is_causal: bool = False, dropout_p: float = 0.0) -> torch.Tensor:
    """The fused kernel, with causal alignment from :func:`resolve_causal` and grouped kv heads shared."""
    mask, is_causal = resolve_causal(mask, is_causal, q.shape[-2], k.shape[-2], q.device)
    if q.shape[1] == k.shape[1]:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal)
    if SDPA_HAS_GQA:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal,
                                              enable_gqa=True)
    rep = q.shape[1] // k.shape[1]  # torch < 2.5: each kv head repeated for its group of query heads
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal)


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
                        is_causal: bool = False, dropout_p: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The formula written out: returns (softmax(QKᵀ/√d + M)·V (B, H, T, hd), weights (B, H, T, S)).

    q is (B, H, T, hd), k and v (B, Hkv, S, hd) with H a multiple of Hkv. Grouped heads are computed by
    viewing q as (B, Hkv, H/Hkv, T, hd) so each kv head meets its query group by broadcasting, with no copy.
    ``mask`` is boolean (True = may attend) or additive float, broadcastable to (B, H, T, S).
    """
    B, H, T, hd = q.shape
    Hkv, S = k.shape[1], k.shape[-2]
    mask, is_causal = resolve_causal(mask, is_causal, T, S, q.device)
    if is_causal:  # T == S and nothing else to combine with: the plain lower triangle
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril()
    qg = q.reshape(B, Hkv, H // Hkv, T, hd)  # (B, Hkv, rep, T, hd)
    scores = (qg @ k[:, :, None].transpose(-2, -1)) / math.sqrt(hd)  # (B, Hkv, rep, T, S)
    scores = scores.reshape(B, H, T, S)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    weights = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    if dropout_p > 0:
        weights = F.dropout(weights, p=dropout_p)
    out = weights.reshape(B, Hkv, H // Hkv, T, S) @ v[:, :, None]  # (B, Hkv, rep, T, hd)
    return out.reshape(B, H, T, hd), weights


__all__ = ["Attention", "reference_attention", "sdpa_attention", "make_attention_mask", "SDPA_HAS_GQA"]
