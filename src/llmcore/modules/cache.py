"""KVCache: preallocated key/value buffers for incremental decoding.

One buffer pair per layer, shaped (B, n_kv_heads, max_len, head_dim), filled left to right. A forward pass
over T new tokens writes positions [length, length + T) in every layer and the model then calls
:meth:`KVCache.advance`. Left-padded batches need nothing special here: the padding lives in the cache like
any token and the attention mask (B, length + T) hides it. Cross-attention keys/values of an encoder-decoder
are computed once from the encoder output and kept in :attr:`cross`.
"""

from __future__ import annotations

import torch

from ..errors import GenerationError


class KVCache:
    """Per-layer key/value cache.

    Args:
        n_layers: number of attention layers that use the cache.
        batch_size: B.
        n_kv_heads: key/value heads per layer (grouped-query attention stores only these).
        max_len: capacity in positions; writing past it raises :class:`GenerationError`.
        head_dim: size of one head.
    """

    def __init__(self, n_layers: int, batch_size: int, n_kv_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> None:
        shape = (batch_size, n_kv_heads, max_len, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.cross: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * n_layers
        self.max_len = max_len
        self.length = 0  # positions already written (same for every layer between forwards)

    @classmethod
    def for_model(cls, model: torch.nn.Module, batch_size: int, max_len: int | None = None) -> KVCache:
        """A cache sized for ``model`` (anything with a ``config`` ModelConfig), on its device and dtype."""
        cfg = model.config
        p = next(model.parameters())
        return cls(cfg.n_layers, batch_size, cfg.n_kv_heads, max_len or cfg.max_seq_len, cfg.head_dim,
                   dtype=p.dtype, device=p.device)

    @property
    def batch_size(self) -> int:
        return self.k[0].shape[0]

    def update(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write new keys/values (B, n_kv, T, hd) of one layer; return all keys/values so far (B, n_kv, L+T, hd)."""
        start, end = self.length, self.length + k.shape[2]
        if end > self.max_len:
            raise GenerationError(
                f"KV cache overflow: {end} positions needed but the cache holds {self.max_len}; "
                "create the cache with a larger max_len (at most the model's max_seq_len)."
            )
        self.k[layer_idx][:, :, start:end] = k
        self.v[layer_idx][:, :, start:end] = v
        return self.k[layer_idx][:, :, :end], self.v[layer_idx][:, :, :end]

    def advance(self, n: int) -> None:
        """Mark ``n`` more positions as written (called once per forward, after all layers)."""
        self.length += n

    def reorder(self, index: torch.Tensor) -> None:
        """Select batch rows (e.g. surviving beams) in place: every buffer becomes buffer[index]."""
        self.k = [t.index_select(0, index) for t in self.k]
        self.v = [t.index_select(0, index) for t in self.v]
        self.cross = [None if c is None else (c[0].index_select(0, index), c[1].index_select(0, index))
                      for c in self.cross]

    def crop(self, length: int) -> None:
        """Forget positions from ``length`` on (e.g. to re-run a rejected draft)."""
        self.length = min(self.length, length)
