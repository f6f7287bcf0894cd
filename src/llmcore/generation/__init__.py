"""Text generation (temporary greedy decoder; replaced by the full generation module)."""

from __future__ import annotations

import torch


@torch.no_grad()
def generate(model: torch.nn.Module, input_ids: torch.Tensor, max_new_tokens: int = 20, **_: object) -> torch.Tensor:
    """Greedy continuation with a KV cache: (B, T) -> (B, T + max_new_tokens)."""
    cache = model.make_cache(input_ids.shape[0], input_ids.shape[1] + max_new_tokens)
    logits = model(input_ids, kv_cache=cache)
    out = input_ids
    for _ in range(max_new_tokens):
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        out = torch.cat([out, nxt], dim=1)
        logits = model(nxt, kv_cache=cache)
    return out
