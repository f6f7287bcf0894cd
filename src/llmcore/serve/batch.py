"""BatchCache: one KV cache shared by the rows of a continuously changing decoding batch.

Continuous batching (Yu et al. 2022, "Orca"; vLLM; TGI) admits new requests between decoding steps and
retires finished ones, so the batch never waits for its slowest member. llmcore's models already decode
left-padded batches exactly (positions count real tokens only, the padding mask hides the rest; see
:mod:`llmcore.modules.masks`), so the batch here is simply a left-padded batch whose rows change:

* every row keeps its real positions **right-aligned**: row ``i`` holds ``lens[i]`` real keys/values in the
  last ``lens[i]`` columns of the cache, padding before them;
* the cache width ``W`` (its ``length``) is ``max(lens)``: joining rows are right-aligned into a widened
  copy, and columns no remaining row uses are cut when rows leave. So ``W + 1 <= max_seq_len`` holds at
  every step (each row fits the context on its own), and the model's length check passes;
* one decoding step feeds one token per row and appends one column for all rows.

This is the simple, dense form of continuous batching: rows are copied when the batch changes (once per
request, plus a regrowth every ``CHUNK`` steps), not paged as in vLLM's PagedAttention. It needs the model's
:class:`~llmcore.modules.KVCache` (``make_cache``); other caches (an LSTM state) decode one request at a time
(``continuous=False``), with the model's own cache object and no copies.
"""

from __future__ import annotations

from typing import Any

import torch

from ..modules import KVCache

CHUNK = 64  # columns allocated ahead of the width: a regrowth (one copy of the cache) every CHUNK steps


class BatchCache:
    """The shared cache of the running rows and their real lengths (see the module docstring).

    Args:
        model: the decoding model (``make_cache``; ``config.max_seq_len`` when continuous).
        continuous: rows of several requests share one :class:`KVCache`; False holds one request's rows in
            whatever ``model.make_cache`` returns (admission then takes one request at a time).
    """

    def __init__(self, model: Any, continuous: bool) -> None:
        self.model = model
        self.continuous = continuous
        self.max_len = getattr(getattr(model, "config", None), "max_seq_len", None)
        self.cache: Any = None
        self.lens: list[int] = []  # real positions of each row already in the cache

    @property
    def rows(self) -> int:
        return len(self.lens)

    @property
    def width(self) -> int:
        return max(self.lens, default=0)

    def new_cache(self, rows: int, length: int) -> Any:
        """A cache for prefilling ``rows`` prompts of at most ``length`` positions (exact size when continuous:
        it is copied into the batch right after; with room for the whole request otherwise)."""
        return self.model.make_cache(rows, length)

    def mask(self, new: int = 1) -> torch.Tensor | None:
        """(B, W + new) padding mask for a step feeding ``new`` tokens per row; None when no row is padded,
        so a batch of equal rows (one request alone) runs exactly the call ``generate`` makes."""
        W = self.width
        if all(n == W for n in self.lens):
            return None
        device = self.cache.k[0].device
        lens = torch.tensor(self.lens, device=device)
        cols = torch.arange(W + new, device=device)
        return (cols[None, :] >= (W - lens)[:, None]).long()  # (B, W + new): 1 from each row's first real column

    def reserve(self, new: int = 1) -> None:
        """Make room for ``new`` more columns (a copy into a larger buffer when the current one is full)."""
        if self.continuous and self.cache.length + new > self.cache.max_len:
            self._relayout(list(range(self.rows)), None, [])

    def advance(self, new: int = 1) -> None:
        """Every row got ``new`` real positions (the model already advanced the cache itself)."""
        self.lens = [n + new for n in self.lens]

    def add(self, cache: Any, lens: list[int]) -> None:
        """Append the rows of a freshly prefilled ``cache`` (each row left-padded, ``lens`` real positions)."""
        if not self.continuous or self.cache is None:
            if self.cache is not None:
                raise RuntimeError("a non-continuous batch holds one request at a time")  # internal invariant
            self.cache, self.lens = cache, list(lens)
            return
        self._relayout(list(range(self.rows)), cache, lens)

    def keep(self, rows: list[int]) -> None:
        """Keep only ``rows`` (in this order); columns no kept row needs are cut."""
        if not rows:
            self.cache, self.lens = None, []
            return
        if rows == list(range(self.rows)):
            return
        if not self.continuous:
            raise RuntimeError("a non-continuous batch retires its request as a whole")  # internal invariant
        self._relayout(rows, None, [])

    def _relayout(self, rows: list[int], extra: KVCache | None, extra_lens: list[int]) -> None:
        """Copy ``rows`` of the cache, then ``extra``'s rows, right-aligned into new buffers of the needed width."""
        old, old_w = self.cache, self.cache.length
        lens = [self.lens[r] for r in rows] + list(extra_lens)
        width = max(lens)
        room = width + CHUNK if self.max_len is None else min(self.max_len, width + CHUNK)
        ref = old.k[0]
        B, H, D = len(lens), ref.shape[1], ref.shape[3]
        fresh = KVCache(len(old.k), B, H, room, D, dtype=ref.dtype, device=ref.device)
        index = torch.tensor(rows, dtype=torch.long, device=ref.device)
        n_old, cut = len(rows), min(old_w, width)  # the last ``cut`` columns of the old rows survive
        for layer in range(len(old.k)):
            for src, dst in ((old.k[layer], fresh.k[layer]), (old.v[layer], fresh.v[layer])):
                dst[:n_old, :, width - cut:width] = src.index_select(0, index)[:, :, old_w - cut:old_w]
            if extra is not None:
                w = extra.length
                fresh.k[layer][n_old:, :, width - w:width] = extra.k[layer][:, :, :w]
                fresh.v[layer][n_old:, :, width - w:width] = extra.v[layer][:, :, :w]
        fresh.length = width
        self.cache, self.lens = fresh, lens
