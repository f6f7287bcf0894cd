"""What both decoding loops share: the request checks before the first step, the object that feeds the model
at every step, and the stop-string test.

:func:`prepare` validates a request (shapes, padding side, lengths, token ids, special tokens) and returns a
:class:`Request`; :class:`ModelRunner` hides whether a KV cache is used: it prefills once and then feeds one
token per step, or recomputes the whole (possibly windowed) sequence when there is no cache. A prompt may
start with embeddings (``inputs_embeds``, (B, P, D)): the loops keep only token ids in their buffers and count
positions after the P prefix positions; the runner alone puts the prefix back in front when it feeds the model;
:func:`hits_stop_string` tells whether decoded ids contain a stop string. Greedy / sampling (``decode.py``)
and beam search (``beam.py``) are built on these; neither imports the other's loop.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import GenerationError
from ..inputs import check_inputs_embeds, check_token_ids
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
    input_ids: torch.Tensor  # (B, T) the prompt's token ids, left-padded; (B, 0) for an embeddings-only prompt
    mask: torch.Tensor | None  # (B, P + T) 1 = real position; None when no row is padded (the fast path)
    pad_lengths: torch.Tensor | None  # (B,) left padding of each row's ids (not its prefix), None without padding
    eos_ids: list[int]
    pad_id: int
    stops: list[str]
    max_seq_len: int | None  # the model's context, None when it has none (e.g. an LSTM)
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    prefix: torch.Tensor | None = None  # (B, P, D) embeddings in front of the ids (inputs_embeds), or None

    @property
    def prefix_len(self) -> int:
        """P: prompt positions given as embeddings, in front of the ids (0 without a prefix)."""
        return 0 if self.prefix is None else self.prefix.shape[1]


def _special(name: str, config: GenerationConfig, model: Any, tokenizer: Any, tok_attr: str) -> Any:
    """A special id from the generation config, else the model config's ``extra``, else the tokenizer."""
    value = getattr(config, name)
    if value is None:
        extra = getattr(getattr(model, "config", None), "extra", None)
        value = extra.get(name) if isinstance(extra, dict) else None
    if value is None and tokenizer is not None:
        value = getattr(tokenizer, tok_attr, None)
    return value


def prepare(model: Any, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None,
            config: GenerationConfig, tokenizer: Any = None, model_kwargs: dict[str, Any] | None = None,
            expand: int = 1, inputs_embeds: torch.Tensor | None = None) -> Request:
    """Validate a request and bring it into the shape the decoding loops expect.

    The prompt is ``[inputs_embeds ; input_ids]``: P embedding positions (B, P, D), then T token ids (B, T);
    either part may be missing (not both). ``attention_mask`` covers the whole prompt, (B, P + T), and each
    part is left-padded on its own (a row's prefix padding first, then its text padding), so one batch can mix
    prefix lengths and text lengths; the model counts positions over real entries only.

    Raises :class:`GenerationError` for: a non-2-D prompt, an empty prompt without a BOS id, right padding,
    a row with no real token (no real id, when the prompt has ids), stop strings without a tokenizer,
    ``inputs_embeds`` for a model that cannot take them, and prompt + max_new_tokens beyond the model's
    ``max_seq_len`` (unless ``sliding_window``; a prompt with a prefix must fit the context even then);
    :class:`~llmcore.errors.DataError` for a prompt id outside the model's vocabulary or ``inputs_embeds`` of
    the wrong shape or dtype. These checks run once per call, here: models do not check ids in ``forward`` (a
    host sync on every step). ``expand`` repeats every row (beams or samples per prompt).
    """
    prefix = _check_prefix(model, inputs_embeds) if inputs_embeds is not None else None
    if input_ids is None:
        if prefix is None:
            raise GenerationError("Nothing to continue: pass input_ids (B, T) token ids, inputs_embeds (B, P, d_model) "
                                  "embeddings, or both (the embeddings then come first).")
        input_ids = torch.zeros((prefix.shape[0], 0), dtype=torch.long, device=prefix.device)
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise GenerationError(f"input_ids must be a 2-D LongTensor (batch, seq_len), got {shape}; "
                              "use ids[None] for a single prompt.")
    input_ids = input_ids.long()
    B, T = input_ids.shape
    if prefix is not None and prefix.shape[0] != B:
        raise GenerationError(f"inputs_embeds has {prefix.shape[0]} rows but input_ids has {B}; give one prefix "
                              "per prompt row (repeat a shared one with prefix.expand(B, -1, -1)).")
    if prefix is not None and prefix.shape[1] == 0:
        prefix = None  # an empty prefix is no prefix: the ids alone are the prompt (BOS if there are none)
    P = 0 if prefix is None else prefix.shape[1]
    eos = _special("eos_token_id", config, model, tokenizer, "eos_id")
    eos_ids = [] if eos is None else ([int(eos)] if isinstance(eos, int) else [int(e) for e in eos])
    pad = _special("pad_token_id", config, model, tokenizer, "pad_id")
    pad_id = int(pad) if pad is not None else (eos_ids[0] if eos_ids else 0)
    stops = config.stop_list
    if stops and tokenizer is None:
        raise GenerationError(f"stop_strings={stops!r} need a tokenizer to decode the generated ids; "
                              "pass tokenizer=... to generate().")

    mask = None
    if T == 0 and P == 0:  # an empty prompt starts from BOS
        bos = _special("bos_token_id", config, model, tokenizer, "bos_id")
        if bos is None:
            raise GenerationError("The prompt is empty and no BOS id is known; pass a non-empty prompt or set "
                                  "bos_token_id (GenerationConfig, model.config.extra or the tokenizer's bos_id).")
        input_ids = torch.full((B, 1), int(bos), dtype=torch.long, device=input_ids.device)
        T = 1
    elif attention_mask is not None:
        mask = _check_mask(attention_mask.to(input_ids.device), B, T, P)

    max_seq_len = getattr(getattr(model, "config", None), "max_seq_len", None)
    total = P + T + config.max_new_tokens
    prompt = f"{T}" if P == 0 else f"{P + T} ({P} prefix embeddings + {T} ids)"
    if max_seq_len is not None and P and P + T > max_seq_len:
        # A sliding window would crop the prefix before the first step, silently losing (part of) the image:
        # refuse instead. Once generation runs past the context, the prefix slides out like any early token.
        raise GenerationError(f"Prompt length {prompt} exceeds the model's max_seq_len={max_seq_len}; shorten "
                              "the prefix (fewer embeddings) or the text, or use a model with a longer context.")
    if max_seq_len is not None and total > max_seq_len and not config.sliding_window:
        raise GenerationError(
            f"Prompt length {prompt} + max_new_tokens {config.max_new_tokens} = {total} exceeds the model's "
            f"max_seq_len={max_seq_len}; shorten the prompt, lower max_new_tokens to at most "
            f"{max(max_seq_len - P - T, 0)}, or pass sliding_window=True to keep only the last {max_seq_len} tokens."
        )

    vocab_size = getattr(getattr(model, "config", None), "vocab_size", None)
    if vocab_size is not None and T:  # the length is checked above, with the sliding-window exception
        check_token_ids(input_ids, model.config, what="the prompt (input_ids)", check_length=False)

    pad_lengths = None
    if mask is not None:  # padding of the ids only: the processors see ids, never the prefix
        pad_lengths = (mask[:, P:] == 0).sum(dim=1)
    model_kwargs = dict(model_kwargs or {})
    if expand > 1:
        input_ids = input_ids.repeat_interleave(expand, dim=0)
        mask = mask.repeat_interleave(expand, dim=0) if mask is not None else None
        pad_lengths = pad_lengths.repeat_interleave(expand, dim=0) if pad_lengths is not None else None
        prefix = prefix.repeat_interleave(expand, dim=0) if prefix is not None else None
        model_kwargs = {k: _expand(v, B, expand) for k, v in model_kwargs.items()}
    return Request(config, input_ids, mask, pad_lengths, eos_ids, pad_id, stops, max_seq_len, model_kwargs, prefix)


def takes_inputs_embeds(model: Any) -> bool:
    """True when ``model.forward`` has an ``inputs_embeds`` argument and the model has ``get_input_embeddings``.

    Both are needed: the prefill feeds ``[prefix ; get_input_embeddings()(ids)]`` as one ``inputs_embeds``.
    """
    if not callable(getattr(model, "get_input_embeddings", None)):
        return False
    try:
        return "inputs_embeds" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def _check_prefix(model: Any, inputs_embeds: Any) -> torch.Tensor:
    """``inputs_embeds`` (B, P, D), checked against the model's embedding table (width and dtype)."""
    if not takes_inputs_embeds(model):
        raise GenerationError(f"{type(model).__name__} does not take inputs_embeds (it needs forward(..., "
                              "inputs_embeds=) and get_input_embeddings()); pass token ids as input_ids, or use "
                              "a model that does, e.g. TransformerLM.")
    weight = model.get_input_embeddings().weight  # (V, D)
    check_inputs_embeds(inputs_embeds, weight.shape[-1], weight.dtype)  # the length is checked with the ids
    return inputs_embeds


def _not_left_padded(mask: torch.Tensor) -> list[int]:
    """Rows of a (B, n) 0/1 mask holding a 0 after a 1 (padding that is not on the left)."""
    if mask.shape[1] < 2:
        return []
    return (mask[:, :-1] > mask[:, 1:]).any(dim=1).nonzero().flatten().tolist()


def _check_mask(attention_mask: torch.Tensor, B: int, T: int, P: int = 0) -> torch.Tensor | None:
    """Validate a (B, P + T) padding mask; None when nothing is padded (so the model takes its fast path).

    The prefix part (first P columns) and the ids part (last T) must each be left-padded, and the last position
    must be real (its logits choose the first new token).
    """
    if tuple(attention_mask.shape) != (B, P + T):
        prompt = f"input_ids has {(B, T)}" if P == 0 else f"the prompt is {P} prefix embeddings + {T} ids: {(B, P + T)}"
        raise GenerationError(f"attention_mask has shape {tuple(attention_mask.shape)} but {prompt}; they must "
                              "match (the mask covers the whole prompt).")
    mask = attention_mask.long()
    if P == 0:
        rows = _not_left_padded(mask)
        if rows:
            raise GenerationError(f"attention_mask rows {rows[:5]} are right-padded (a 0 after a 1); generation "
                                  "needs LEFT padding so every row's last position is a real token: pad on the left.")
    else:
        rows = sorted(set(_not_left_padded(mask[:, :P]) + _not_left_padded(mask[:, P:])))
        if rows:
            raise GenerationError(f"attention_mask rows {rows[:5]} have a 0 after a 1 inside the prefix or inside the "
                                  "ids; left-pad each part on its own: [prefix padding, prefix, ids padding, ids].")
    if bool((mask[:, -1] == 0).any()):
        rows = (mask[:, -1] == 0).nonzero().flatten().tolist()
        if P and T:
            raise GenerationError(f"attention_mask rows {rows[:5]} have no real token id after their prefix; give "
                                  "every row at least one id (e.g. BOS), or pass its whole prompt as inputs_embeds.")
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

    ``prefix`` (B, P, D) are embeddings in front of the ids: a call whose positions include any of them feeds
    ``inputs_embeds = [prefix ; get_input_embeddings()(ids)]`` (the prefill, or every step without a cache);
    later cached steps feed token ids as usual. Positions (``window``, the cache, ``mask``) count the prefix.
    """

    def __init__(self, model: Any, batch: int, total_len: int, use_cache: bool, window: int | None,
                 model_kwargs: dict[str, Any], prefix: torch.Tensor | None = None) -> None:
        self.model = model
        self.keep_last = _takes_logits_to_keep(model)
        self.window = window
        self.model_kwargs = model_kwargs
        self.prefix = prefix
        self.P = 0 if prefix is None else prefix.shape[1]
        cache_len = total_len if window is None else min(total_len, window)
        self.cache = model.make_cache(batch, cache_len) if use_cache and hasattr(model, "make_cache") else None
        self.fed = 0  # positions already in the cache (prefix included)

    def logits(self, seq: torch.Tensor, cur: int, mask: torch.Tensor | None) -> torch.Tensor:
        """float32 logits (B, V) of the token after ``[prefix ; seq[:, :cur]]``; ``mask`` (B, >= P + cur) or None."""
        kwargs = dict(self.model_kwargs)
        end = self.P + cur  # positions so far, prefix included
        if self.cache is not None and self.window is not None and end > self.window:
            self.cache = None  # the context is full: from now on recompute the window each step
        if self.cache is not None:
            start, mask_start = self.fed, 0  # new positions only; the mask covers the cached ones too
            kwargs["kv_cache"] = self.cache
            self.fed = end
        else:
            start = 0 if self.window is None else max(0, end - self.window)
            mask_start = start
        if mask is not None:
            kwargs["attention_mask"] = mask[:, mask_start:end]
        if self.keep_last:  # the LM head on the last position only: (B, 1, V), not (B, t, V)
            kwargs["logits_to_keep"] = 1
        if start >= self.P:  # ids only: the usual call, positional as the protocol says
            return self.model(seq[:, start - self.P:cur], **kwargs)[:, -1].float()
        embeds = torch.cat([self.prefix[:, start:], self.model.get_input_embeddings()(seq[:, :cur])], dim=1)
        return self.model(inputs_embeds=embeds, **kwargs)[:, -1].float()

    def reorder(self, index: torch.Tensor) -> None:
        """Keep cache rows ``index`` (beam search); a no-op without a cache.

        The prefix needs no reordering: ``index`` only moves beams within their row, which share its prefix.
        """
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
        prompt_len: the prompt's ids width T (after padding; 1 for an empty prompt that became the BOS token;
            0 for a prompt given only as ``inputs_embeds``, whose output holds only new tokens).

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
