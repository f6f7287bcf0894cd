"""Attention masks and position ids: the one place that decides who may attend to whom.

Masks here are either boolean (True = may attend) or additive float biases (0 = attend, −∞ = never, any
other value shifts the logit, e.g. ALiBi), broadcastable to (B, H, T, S). Queries are always the LAST T of
S key positions: with a KV cache the S − T earlier keys come from the cache, so query i sits at absolute
position S − T + i. :func:`resolve_causal` turns "causal" into a mask with that alignment; both the fused
SDPA path and the reference path of :class:`~llmcore.modules.Attention` call it, so they cannot disagree.

:func:`attention_inputs` is the model-level policy shared by every Transformer: position ids from the padding
mask (left padding counts real tokens from 0) or from the cache length, and the padding mask to attend with.
Nothing here reads a tensor's values on the host, so ``torch.compile`` traces it without a graph break.
"""

from __future__ import annotations

import torch

from ..errors import DataError


def causal_mask(q_len: int, k_len: int, device: torch.device | str | None = None,
                window: int | None = None) -> torch.Tensor:
    """Boolean (T, S), True where query i (absolute position S − T + i) may see key j: j ≤ S − T + i.

    ``window`` additionally limits each query to its last ``window`` keys (sliding-window attention).
    """
    q_pos = torch.arange(k_len - q_len, k_len, device=device)[:, None]  # (T, 1)
    k_pos = torch.arange(k_len, device=device)[None, :]  # (1, S)
    mask = k_pos <= q_pos
    if window is not None:
        mask = mask & (k_pos > q_pos - window)
    return mask


def combine_masks(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    """One mask meaning "allowed by both": bool & bool stays boolean; otherwise an additive float bias.

    This is how a subclass adds its own bias (ALiBi, relative positions) to whatever padding mask it is given.
    """
    if a is None or b is None:
        return b if a is None else a
    if a.dtype == torch.bool and b.dtype == torch.bool:
        return a & b
    if a.dtype == torch.bool:
        a, b = b, a  # a is now the float one
    if b.dtype == torch.bool:
        return a.masked_fill(~b, float("-inf"))
    return a + b


def resolve_causal(mask: torch.Tensor | None, is_causal: bool, q_len: int, k_len: int,
                   device: torch.device | str | None = None) -> tuple[torch.Tensor | None, bool]:
    """``(mask, is_causal)`` ready for ``F.scaled_dot_product_attention``, queries bottom-right aligned.

    SDPA's own ``is_causal`` aligns top-left (query i sees keys ≤ i), which is right only when T == S. So the
    flag is kept only for T == S with no other mask (nothing materialised); a single query at the end sees
    every key (no mask at all); otherwise the bottom-right causal mask is built and combined with ``mask``.
    """
    if not is_causal:
        return mask, False
    if mask is None and q_len == k_len:
        return None, True
    if mask is None and q_len == 1:
        return None, False
    return combine_masks(mask, causal_mask(q_len, k_len, device)), False


def make_attention_mask(key_padding_mask: torch.Tensor | None, q_len: int, past_len: int = 0,
                        causal: bool = True) -> torch.Tensor | None:
    """Boolean mask (B or 1, 1, q_len, past_len + q_len), True = may attend; None when no masking is needed.

    ``key_padding_mask`` (B, past_len + q_len) has 1 for real tokens and 0 for padding. Each query may always
    attend to its own position, so rows of padding queries are never fully masked (a fully masked row would
    make the softmax NaN); their outputs are ignored by the loss and by generation anyway. ``causal=False``
    leaves causality to the attention layer (``is_causal=True`` there), which is what the models do.
    """
    total = past_len + q_len
    if key_padding_mask is None:
        return causal_mask(q_len, total, None)[None, None] if causal and q_len > 1 else None
    device = key_padding_mask.device
    q_pos = torch.arange(past_len, total, device=device)[:, None]  # (T, 1)
    k_pos = torch.arange(total, device=device)[None, :]  # (1, S)
    mask = key_padding_mask.bool()[:, None, None, :] | (k_pos == q_pos)[None, None]  # always see yourself
    if causal:
        mask = mask & (k_pos <= q_pos)[None, None]
    return mask


def check_mask_length(attention_mask: torch.Tensor | None, past: int, q_len: int) -> None:
    """DataError unless ``attention_mask`` (if any) covers the ``past`` cached positions and the ``q_len`` new ones.

    A shape check only (no values read), for every model that takes a padding mask with a cache or state.
    """
    if attention_mask is not None and attention_mask.shape[-1] != past + q_len:
        raise DataError(f"attention_mask covers {attention_mask.shape[-1]} positions but the cache holds {past} "
                        f"and the input adds {q_len}; pass the mask of all {past + q_len} positions.")


def attention_inputs(attention_mask: torch.Tensor | None, batch: int, q_len: int, past: int,
                     device: torch.device, position_ids: torch.Tensor | None = None,
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Position ids (B, T) and the padding mask (B, 1, T, past + T) or None for one forward of T new tokens.

    With ``attention_mask`` (B, past + T; 1 = real, 0 = padding) real tokens count positions from 0, so a
    left-padded row sees the positions it would see alone, cached or not; without one, positions continue
    from the cache length. Causality is not in the returned mask: pass ``is_causal`` to the attention, whose
    :func:`resolve_causal` aligns it for cached steps.
    """
    check_mask_length(attention_mask, past, q_len)
    if position_ids is None:
        if attention_mask is not None:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past:]
        else:
            position_ids = torch.arange(past, past + q_len, device=device).expand(batch, q_len)
    mask = make_attention_mask(attention_mask, q_len, past, causal=False) if attention_mask is not None else None
    return position_ids, mask


__all__ = ["causal_mask", "combine_masks", "resolve_causal", "make_attention_mask", "check_mask_length",
           "attention_inputs"]
