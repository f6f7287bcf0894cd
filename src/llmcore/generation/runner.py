"""What both decoding loops share: the request checks before the first step, the object that feeds the model
at every step, and the stop-string test.

:func:`prepare` validates a request (shapes, padding side, lengths, token ids, special tokens) and returns a
:class:`Request`; :class:`ModelRunner` hides whether a KV cache is used: it prefills once and then feeds one
token per step, or recomputes the whole (possibly windowed) sequence when there is no cache;
:func:`hits_stop_string` tells whether decoded ids contain a stop string. Greedy / sampling (``decode.py``)
and beam search (``beam.py``) are built on these; neither imports the other's loop.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import GenerationError
from ..inputs import check_token_ids
from .config import GenerationConfig


def resolve_config(config: GenerationConfig | None, overrides: dict[str, Any]) -> GenerationConfig:
    """``config`` (default: ``GenerationConfig()``) with keyword overrides applied and re-validated."""
    if config is not None and not isinstance(config, GenerationConfig):
        raise GenerationError(f"config must be a GenerationConfig, got {type(config).__name__}; "
                              "pass options as keywords or build GenerationConfig(**options).")
    config = config or GenerationConfig()
    return config.replace(**overrides) if overrides else config


@dataclass
class Request:
    """A validated generation request, batch already expanded for beams / multiple samples."""

    config: GenerationConfig
    input_ids: torch.Tensor  # (B, T) prompt, left-padded
    mask: torch.Tensor | None  # (B, T) 1 = real token; None when no row is padded (the fast path)
    pad_lengths: torch.Tensor | None  # (B,) left-padding length of each row, None without padding
    eos_ids: list[int]
    pad_id: int
    stops: list[str]
    max_seq_len: int | None  # the model's context, None when it has none (e.g. an LSTM)
    model_kwargs: dict[str, Any] = field(default_factory=dict)


def _special(name: str, config: GenerationConfig, model: Any, tokenizer: Any, tok_attr: str) -> Any:
    """A special id from the generation config, else the model config's ``extra``, else the tokenizer."""
    value = getattr(config, name)
    if value is None:
        extra = getattr(getattr(model, "config", None), "extra", None)
        value = extra.get(name) if isinstance(extra, dict) else None
    if value is None and tokenizer is not None:
        value = getattr(tokenizer, tok_attr, None)
    return value


def prepare(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, config: GenerationConfig,
            tokenizer: Any = None, model_kwargs: dict[str, Any] | None = None, expand: int = 1) -> Request:
    """Validate a request and bring it into the shape the decoding loops expect.

    Raises :class:`GenerationError` for: a non-2-D prompt, an empty prompt without a BOS id, right padding,
    a row with no real token, stop strings without a tokenizer, and prompt + max_new_tokens beyond the model's
    ``max_seq_len`` (unless ``sliding_window``); :class:`~llmcore.errors.DataError` for a prompt id outside the
    model's vocabulary. These checks run once per call, here: models do not check ids in ``forward`` (a
    host sync on every step). ``expand`` repeats every row (beams or samples per prompt).
    """
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise GenerationError(f"input_ids must be a 2-D LongTensor (batch, seq_len), got {shape}; "
                              "use ids[None] for a single prompt.")
    input_ids = input_ids.long()
    B, T = input_ids.shape
    eos = _special("eos_token_id", config, model, tokenizer, "eos_id")
    eos_ids = [] if eos is None else ([int(eos)] if isinstance(eos, int) else [int(e) for e in eos])
    pad = _special("pad_token_id", config, model, tokenizer, "pad_id")
    pad_id = int(pad) if pad is not None else (eos_ids[0] if eos_ids else 0)
    stops = config.stop_list
    if stops and tokenizer is None:
        raise GenerationError(f"stop_strings={stops!r} need a tokenizer to decode the generated ids; "
                              "pass tokenizer=... to generate().")

    mask = None
    if T == 0:  # an empty prompt starts from BOS
        bos = _special("bos_token_id", config, model, tokenizer, "bos_id")
        if bos is None:
            raise GenerationError("The prompt is empty and no BOS id is known; pass a non-empty prompt or set "
                                  "bos_token_id (GenerationConfig, model.config.extra or the tokenizer's bos_id).")
        input_ids = torch.full((B, 1), int(bos), dtype=torch.long, device=input_ids.device)
        T = 1
    elif attention_mask is not None:
        mask = _check_mask(attention_mask.to(input_ids.device), B, T)

    max_seq_len = getattr(getattr(model, "config", None), "max_seq_len", None)
    total = T + config.max_new_tokens
    if max_seq_len is not None and total > max_seq_len and not config.sliding_window:
        raise GenerationError(
            f"Prompt length {T} + max_new_tokens {config.max_new_tokens} = {total} exceeds the model's "
            f"max_seq_len={max_seq_len}; shorten the prompt, lower max_new_tokens to at most "
            f"{max(max_seq_len - T, 0)}, or pass sliding_window=True to keep only the last {max_seq_len} tokens."
        )

    vocab_size = getattr(getattr(model, "config", None), "vocab_size", None)
    if vocab_size is not None:  # the length is checked above, with the sliding-window exception
        check_token_ids(input_ids, model.config, what="the prompt (input_ids)", check_length=False)

    pad_lengths = None
    if mask is not None:
        pad_lengths = (mask == 0).sum(dim=1)
    model_kwargs = dict(model_kwargs or {})
    if expand > 1:
        input_ids = input_ids.repeat_interleave(expand, dim=0)
        mask = mask.repeat_interleave(expand, dim=0) if mask is not None else None
        pad_lengths = pad_lengths.repeat_interleave(expand, dim=0) if pad_lengths is not None else None
        model_kwargs = {k: _expand(v, B, expand) for k, v in model_kwargs.items()}
    return Request(config, input_ids, mask, pad_lengths, eos_ids, pad_id, stops, max_seq_len, model_kwargs)


def _check_mask(attention_mask: torch.Tensor, B: int, T: int) -> torch.Tensor | None:
    """Validate a (B, T) padding mask; None when nothing is padded (so the model takes its fast path)."""
    if tuple(attention_mask.shape) != (B, T):
        raise GenerationError(f"attention_mask has shape {tuple(attention_mask.shape)} but input_ids has "
                              f"{(B, T)}; they must match.")
    mask = attention_mask.long()
    if bool((mask[:, :-1] > mask[:, 1:]).any()):
        rows = (mask[:, :-1] > mask[:, 1:]).any(dim=1).nonzero().flatten().tolist()
        raise GenerationError(f"attention_mask rows {rows[:5]} are right-padded (a 0 after a 1); generation needs "
                              "LEFT padding so every row's last position is a real token: pad on the left.")
    if bool((mask[:, -1] == 0).any()):
        rows = (mask[:, -1] == 0).nonzero().flatten().tolist()
        raise GenerationError(f"attention_mask rows {rows[:5]} contain no real token; drop them or give them a prompt.")
    return None if bool(mask.all()) else mask


def _expand(value: Any, batch: int, n: int) -> Any:
    """Repeat per-row tensors (first dim == batch) n times each; leave anything else alone."""
    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch:
        return value.repeat_interleave(n, dim=0)
    return value


def _takes_logits_to_keep(model: Any) -> bool:
    """True when ``model.forward`` has a ``logits_to_keep`` argument (Hugging Face's name, TransformerLM's too).

    Then the runner asks for the last position only, which saves a (B, T, V) logits tensor at prefill and on
    every step without a cache. Any other model is called as the protocol says and its last position kept.
    """
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # a forward without an inspectable signature (a C extension, a mock)
        return False


class ModelRunner:
    """Next-token logits for a growing sequence, with or without a cache.

    With a cache the first call feeds the whole prompt (prefill) and each later call only the positions not
    yet seen (one token). Without one — ``use_cache=False``, a model without ``make_cache``, or a sequence that
    outgrew ``window`` under ``sliding_window`` — every call recomputes the last ``window`` positions.
    """

    def __init__(self, model: Any, batch: int, total_len: int, use_cache: bool, window: int | None,
                 model_kwargs: dict[str, Any]) -> None:
        self.model = model
        self.keep_last = _takes_logits_to_keep(model)
        self.window = window
        self.model_kwargs = model_kwargs
        cache_len = total_len if window is None else min(total_len, window)
        self.cache = model.make_cache(batch, cache_len) if use_cache and hasattr(model, "make_cache") else None
        self.fed = 0  # positions already in the cache

    def logits(self, seq: torch.Tensor, cur: int, mask: torch.Tensor | None) -> torch.Tensor:
        """float32 logits (B, V) of the token after ``seq[:, :cur]``; ``mask`` (B, >= cur) or None."""
        kwargs = dict(self.model_kwargs)
        if self.cache is not None and self.window is not None and cur > self.window:
            self.cache = None  # the context is full: from now on recompute the window each step
        if self.cache is not None:
            ids, start = seq[:, self.fed:cur], 0
            kwargs["kv_cache"] = self.cache
            self.fed = cur
        else:
            start = 0 if self.window is None else max(0, cur - self.window)
            ids = seq[:, start:cur]
        if mask is not None:
            kwargs["attention_mask"] = mask[:, start:cur]
        if self.keep_last:  # the LM head on the last position only: (B, 1, V), not (B, t, V)
            kwargs["logits_to_keep"] = 1
        return self.model(ids, **kwargs)[:, -1].float()

    def reorder(self, index: torch.Tensor) -> None:
        """Keep cache rows ``index`` (beam search); a no-op without a cache."""
        if self.cache is not None:
            self.cache.reorder(index)


INITIAL_ROOM = 256  # generated positions allocated up front; buffers double from there as tokens are produced


def room(prompt_len: int, max_new_tokens: int) -> int:
    """Width to allocate for (prompt + generated) before the first step: never more than can be produced."""
    return prompt_len + min(max_new_tokens, INITIAL_ROOM)


def grow(buf: torch.Tensor, need: int, limit: int, fill: int | float) -> torch.Tensor:
    """``buf`` (..., L), widened along its last dimension to hold ``need`` positions (doubling, at most ``limit``).

    The decoding loops preallocate only :func:`room` positions and call this when the next token does not
    fit, so ``max_new_tokens=10**7`` under ``sliding_window`` costs memory for the tokens actually produced
    (a row may stop at EOS long before), while the copies stay amortised O(length).
    """
    width = buf.shape[-1]
    if width >= need:
        return buf
    out = buf.new_full((*buf.shape[:-1], min(limit, max(need, 2 * width))), fill)
    out[..., :width] = buf
    return out


def hits_stop_string(tokenizer: Any, ids: list[int], stops: list[str]) -> bool:
    """True when the decoded ``ids`` contain any of ``stops`` (decoding all ids catches boundary-spanning ones)."""
    text = tokenizer.decode(ids)
    return any(s in text for s in stops)


def continuations(model: Any, sequences: torch.Tensor, prompt_len: int, config: GenerationConfig | None = None,
                  tokenizer: Any = None, **overrides: Any) -> list[list[int]]:
    """Each row's generated ids, cut after the token that finished it (padding after it dropped).

    Args:
        model, config, tokenizer, overrides: as passed to :func:`~llmcore.generation.generate`, so the EOS ids
            and stop strings are resolved exactly as decoding resolved them.
        sequences: (N, prompt_len + n) what ``generate`` returned.
        prompt_len: the prompt width T (after padding; 1 for an empty prompt that became the BOS token).

    Returns:
        N lists of ids: the new tokens of each row up to and including its EOS id or the token that
        completed a stop string, or all of them when the row ran to ``max_new_tokens``.
    """
    config = resolve_config(config, overrides)
    eos = _special("eos_token_id", config, model, tokenizer, "eos_id")
    eos_ids = set() if eos is None else ({int(eos)} if isinstance(eos, int) else {int(e) for e in eos})
    out = []
    for row in sequences[:, prompt_len:].tolist():
        end = next((i + 1 for i, t in enumerate(row) if t in eos_ids), len(row))
        row = row[:end]
        if config.stop_list and tokenizer is not None:  # the shortest prefix holding a stop string
            end = next((i for i in range(1, len(row) + 1)
                        if hits_stop_string(tokenizer, row[:i], config.stop_list)), len(row))
            row = row[:end]
        out.append(row)
    return out
