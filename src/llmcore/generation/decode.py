"""Greedy and sampled decoding: :func:`generate` (all at once) and :func:`stream` (step by step).

The model protocol
------------------
Decoding works with any ``torch.nn.Module`` that provides

* ``model(input_ids (B, t), attention_mask=None, kv_cache=None, **model_kwargs) -> logits (B, t, V)``:
  ``attention_mask`` (B, past + t) with 1 for real tokens is passed only when some row is left-padded;
  ``kv_cache`` is whatever ``make_cache`` returned (the model updates it in place);
* optionally ``make_cache(batch_size, max_len)`` returning a cache with ``reorder(index)`` (beam search keeps
  rows ``index``). Without it, every step recomputes the whole sequence (as ``use_cache=False`` does);
* optionally ``config.max_seq_len`` (length checks) and ``config.extra`` (``bos/eos/pad_token_id`` defaults);
* for ``inputs_embeds``: ``forward(..., inputs_embeds=(B, t, D))`` and ``get_input_embeddings()`` (the token
  table, (B, t) -> (B, t, D)); a model without them (an LSTM) raises :class:`GenerationError` when given
  embeddings.

:class:`~llmcore.models.TransformerLM` fits as is; an LSTM fits with its hidden state as the "cache".
An encoder-decoder plugs in through ``model_kwargs``, forwarded to every call: run the encoder once and pass
``model_kwargs={"memory": model.encode(src_ids, src_mask), "memory_mask": src_mask}`` with the decoder's
start tokens as ``input_ids``. Per-row tensors in ``model_kwargs`` (first dim == batch) are repeated for
beams and multiple samples; all beams of a row share them, so they never need reordering.

Semantics (Hugging Face's, so outputs can be compared token for token)
---------------------------------------------------------------------
* Returns (B, T + n) with n ≤ max_new_tokens: decoding stops early once every row has finished.
  A row finishes after emitting an EOS id or the token that completes a stop string (that token is kept);
  later positions hold ``pad_token_id``.
* Stop strings are looked for in the decoded generated text only (not the prompt), so they are honoured
  when they span token boundaries.
* Sampling uses a private ``torch.Generator`` seeded from ``seed``; the global RNG is never touched.
* Left padding + ``attention_mask`` gives each row the same tokens as decoding it alone; right padding
  raises :class:`GenerationError`.
* The model is put in eval mode for the call and restored afterwards.

Embeddings in (``inputs_embeds``, as in Hugging Face)
----------------------------------------------------
* The prompt is ``[inputs_embeds ; input_ids]``: P positions given as vectors (B, P, D) — e.g. an image's
  features projected to d_model — then T token ids (B, T). Either part may be left out, not both.
* **The returned sequences hold ids only: the ``input_ids`` given, then the new tokens** (B, T + n); the P
  embedding positions never appear. So ``generate(model, inputs_embeds=e)`` returns just the new tokens
  (B, n), as ``transformers`` does, and ``generate(model, ids, inputs_embeds=prefix)`` returns ``ids`` + new.
* ``attention_mask`` covers the whole prompt, (B, P + T). For a batch that mixes prefix and text lengths,
  left-pad each part on its own (a row's prefix padding first, then its text padding); positions count real
  entries only, so each row decodes as it would alone. Every row needs a real last position (a real id when
  the prompt has ids). Stop conditions, ``min_new_tokens`` and the repetition processors look at ids only.
* The prefill runs on embeddings (``[prefix ; get_input_embeddings()(ids)]``); the steps after it feed token
  ids as usual. Without a cache every step re-feeds the prefix. ``max_seq_len`` counts prefix positions; a
  prompt with a prefix must fit the context (``sliding_window`` lets generation go on past it, and then the
  prefix slides out like any early token).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch

from ..errors import GenerationError
from ..modules import eval_mode
from .beam import beam_search
from .config import GenerationConfig
from .processors import (
    Processor,
    apply_processors,
    build_processors,
    nonfinite_error,
    nonfinite_rows,
    sample_next,
)
from .runner import ModelRunner, Request, grow, hits_stop_string, prepare, resolve_config, room


def generate(model: torch.nn.Module, input_ids: torch.Tensor | None = None,
             attention_mask: torch.Tensor | None = None, config: GenerationConfig | None = None,
             tokenizer: Any = None, logits_processors: Sequence[Processor] | None = None,
             model_kwargs: dict[str, Any] | None = None, inputs_embeds: torch.Tensor | None = None,
             **overrides: Any) -> torch.Tensor:
    """Continue each prompt row; dispatches to :func:`~llmcore.generation.beam_search` when ``num_beams > 1``.

    Args:
        model: see the protocol in the module docstring.
        input_ids: (B, T) prompts, left-padded when their lengths differ. T == 0 (and no ``inputs_embeds``)
            starts from BOS. None with ``inputs_embeds``: the prompt is the embeddings alone.
        attention_mask: (B, P + T), 1 for real positions and 0 for (left) padding; P = 0 without a prefix.
        config: a :class:`GenerationConfig`; keyword ``overrides`` replace its fields (``max_new_tokens=50``).
        tokenizer: needed for ``stop_strings``; also supplies default bos/eos/pad ids.
        logits_processors: extra ``(input_ids, logits) -> logits`` callables (see ``processors``).
        model_kwargs: forwarded to every model call (e.g. encoder ``memory``).
        inputs_embeds: (B, P, D) embeddings in the model's embedding dtype, in front of ``input_ids`` (or the
            whole prompt without them); see "Embeddings in" in the module docstring.

    Returns:
        LongTensor (B · num_return_sequences, T + n): the prompt's ids (an empty prompt becomes the BOS
        token), then the new tokens; never the embedding positions, so with only ``inputs_embeds`` just the
        new tokens (B·R, n). n < max_new_tokens when every row stopped early.
    """
    config = resolve_config(config, overrides)
    if config.num_beams > 1:
        return beam_search(model, input_ids, attention_mask, config=config, tokenizer=tokenizer,
                           logits_processors=logits_processors, model_kwargs=model_kwargs,
                           inputs_embeds=inputs_embeds)
    steps = _decode(model, input_ids, attention_mask, config, tokenizer, logits_processors, model_kwargs,
                    inputs_embeds=inputs_embeds)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def stream(model: torch.nn.Module, input_ids: torch.Tensor | None = None,
           attention_mask: torch.Tensor | None = None, config: GenerationConfig | None = None,
           tokenizer: Any = None, logits_processors: Sequence[Processor] | None = None,
           model_kwargs: dict[str, Any] | None = None, text: bool | None = None,
           inputs_embeds: torch.Tensor | None = None, **overrides: Any) -> Iterator[Any]:
    """Decode step by step, yielding as soon as each token is chosen (same arguments as :func:`generate`).

    Without a tokenizer (or with ``text=False``) each step yields the new ids, a LongTensor (B,) (finished
    rows get ``pad_token_id``). With a tokenizer each step yields text deltas: a ``str`` when B == 1, else a
    list of B strings. Deltas never split a multi-byte character: the generated ids are decoded in full and
    only the new stable suffix is emitted, holding back a trailing U+FFFD that the next token may complete.
    A last delta flushes what was held back, so the deltas join to the decoded continuation (decoded after a
    few prompt tokens, so a sentencepiece word keeps its leading space).
    Beam search cannot be streamed (the best beam is only known at the end).
    """
    config = resolve_config(config, overrides)
    if config.num_beams > 1:
        raise GenerationError(f"stream() does not support beam search (num_beams={config.num_beams}): the best "
                              "hypothesis is only known at the end. Use generate() or num_beams=1.")
    # Streaming reads every token on the host anyway, so each step's finiteness check costs nothing extra and a
    # token chosen from NaN logits is never yielded.
    steps = _decode(model, input_ids, attention_mask, config, tokenizer, logits_processors, model_kwargs,
                    check_each_step=True, inputs_embeds=inputs_embeds)
    if tokenizer is None or text is False:
        for tok, _ in steps:
            yield tok
        return
    deltas = None
    for tok, live in steps:
        if deltas is None:  # after the first step, so the inputs were validated
            rows = input_ids.shape[0] if input_ids is not None else inputs_embeds.shape[0]
            tails = _prompt_tails(input_ids, attention_mask, rows)
            per_row = tok.shape[0] // max(len(tails), 1)  # num_return_sequences samples per prompt
            deltas = TextDeltas(tokenizer, [t for t in tails for _ in range(per_row)])
        out = deltas.push(tok.tolist(), None if live is None else live.tolist())
        yield out[0] if len(out) == 1 else out
    rest = deltas.flush() if deltas is not None else []
    if any(rest):
        yield rest[0] if len(rest) == 1 else rest


def _prompt_tails(input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None, batch: int,
                  n: int = 4) -> list[list[int]]:
    """The last ``n`` real prompt ids of each of ``batch`` rows: context for decoding the first generated tokens.

    An embeddings-only prompt has no ids (empty context); with a prefix the mask's last T columns are the ids'.
    """
    if input_ids is None or input_ids.shape[1] == 0:
        return [[] for _ in range(batch)]
    rows = input_ids.tolist()
    if attention_mask is not None:
        ids_mask = attention_mask[:, attention_mask.shape[1] - input_ids.shape[1]:]  # drop the prefix columns
        rows = [[t for t, m in zip(r, mr) if m] for r, mr in zip(rows, ids_mask.tolist())]
    return [r[-n:] for r in rows]


class TextDeltas:
    """Turns token ids, one step at a time, into text deltas that never end inside a UTF-8 character.

    ``context`` holds a few prompt tokens per row that are decoded in front of the new ids and cut off again,
    so tokenizers that treat the start of a text specially (sentencepiece drops the leading space of the
    first word) render the continuation as it appears after the prompt.
    """

    def __init__(self, tokenizer: Any, context: list[list[int]]) -> None:
        self.tokenizer = tokenizer
        self.context = context
        self.context_text = [tokenizer.decode(c) if c else "" for c in context]
        self.ids: list[list[int]] = [[] for _ in context]
        self.emitted = [""] * len(context)

    def text(self, row: int) -> str:
        """Decoded text of the ids generated so far in ``row``."""
        if not self.context[row]:
            return self.tokenizer.decode(self.ids[row])
        full = self.tokenizer.decode(self.context[row] + self.ids[row])
        base = self.context_text[row]
        return full[len(base):] if full.startswith(base) else self.tokenizer.decode(self.ids[row])

    def _delta(self, row: int, final: bool) -> str:
        text = self.text(row)
        stable = text if final else text.rstrip("\ufffd")
        done = self.emitted[row]
        if not stable.startswith(done):  # a tokenizer that rewrote earlier text: emit from the divergence
            common = 0
            while common < min(len(done), len(stable)) and done[common] == stable[common]:
                common += 1
            done = done[:common]
        if len(stable) <= len(done):
            return ""
        self.emitted[row] = stable
        return stable[len(done):]

    def push(self, tokens: list[int], live: list[bool] | None = None) -> list[str]:
        """Add one step's tokens; rows with ``live[row]`` False (already finished, padding) are skipped."""
        out = []
        for row, tok in enumerate(tokens):
            if live is not None and not live[row]:
                out.append("")
                continue
            self.ids[row].append(tok)
            out.append(self._delta(row, final=False))
        return out

    def flush(self) -> list[str]:
        return [self._delta(row, final=True) for row in range(len(self.ids))]


@torch.no_grad()
def _decode(model: torch.nn.Module, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None,
            config: GenerationConfig, tokenizer: Any, logits_processors: Sequence[Processor] | None,
            model_kwargs: dict[str, Any] | None, check_each_step: bool = False,
            inputs_embeds: torch.Tensor | None = None):
    """The greedy / sampling loop as a generator (``check_each_step``: see :func:`_decode_loop`).

    Yields ``(ids (B,), live)`` per step, ``live`` (B,) bool marking rows whose id is a real token (None
    when nothing can stop a row), and returns the full sequences (B, T + n) (ids only, no prefix positions).
    """
    expand = config.num_return_sequences if config.is_sampling else 1
    req = prepare(model, input_ids, attention_mask, config, tokenizer, model_kwargs, expand=expand,
                  inputs_embeds=inputs_embeds)
    with eval_mode(model):
        return (yield from _decode_loop(model, req, tokenizer, logits_processors, check_each_step))


def _decode_loop(model: torch.nn.Module, req: Request, tokenizer: Any,
                 logits_processors: Sequence[Processor] | None, check_each_step: bool = False):
    """Greedy decoding checks its logits for NaN / +inf on the device and reads the result where the loop
    syncs anyway: at the first step (a broken model fails before any token is out), after each step's stop
    check, at the end, and, with ``check_each_step`` (streaming), before every token is yielded."""
    cfg = req.config
    B, T = req.input_ids.shape
    P = req.prefix_len  # prefix positions: in the mask and the model's positions, not in ``seq``
    N = cfg.max_new_tokens
    device = req.input_ids.device
    width = room(T, N)  # the output buffer grows as tokens come, so a huge max_new_tokens allocates nothing huge
    seq = torch.full((B, width), req.pad_id, dtype=torch.long, device=device)  # ids only: (B, T + generated)
    seq[:, :T] = req.input_ids
    mask = None
    if req.mask is not None:  # generated positions are real tokens: the mask is all ones after the prompt
        mask = torch.ones((B, P + width), dtype=req.mask.dtype, device=device)  # (B, P + T + generated)
        mask[:, :P + T] = req.mask
    procs = build_processors(cfg, T, req.eos_ids, req.pad_lengths, logits_processors)
    sampling = cfg.is_sampling
    generator = None
    if sampling:
        generator = torch.Generator(device=device)
        if cfg.seed is not None:
            generator.manual_seed(cfg.seed)
        else:
            generator.seed()  # fresh entropy, still without touching the global RNG
    eos = None  # a 0-d tensor for one EOS id (a cheap ==), else 1-d for isin
    if req.eos_ids:
        eos = torch.tensor(req.eos_ids if len(req.eos_ids) > 1 else req.eos_ids[0], dtype=torch.long, device=device)
    can_stop = eos is not None or bool(req.stops)
    unfinished = torch.ones(B, dtype=torch.bool, device=device)
    stop_text = _StopStrings(tokenizer, req.stops, B) if req.stops else None
    window = req.max_seq_len if cfg.sliding_window else None
    runner = ModelRunner(model, B, P + T + N, cfg.use_cache, window, req.model_kwargs, req.prefix)

    cur = T
    # greedy: the first step with NaN / +inf logits, kept on the device and read where the loop syncs anyway
    first_bad = None if sampling else torch.full((), -1, dtype=torch.long, device=device)
    for step in range(N):
        logits = runner.logits(seq, cur, mask)  # (B, V)
        if procs:
            logits = apply_processors(procs, seq[:, :cur], logits)
        if first_bad is not None:
            first_bad = torch.where((first_bad < 0) & nonfinite_rows(logits).any(), step, first_bad)
        tok = sample_next(logits, sampling, generator, step=step)  # (B,)
        if cur >= seq.shape[1]:
            seq = grow(seq, cur + 1, T + N, req.pad_id)
            mask = grow(mask, P + cur + 1, P + T + N, 1) if mask is not None else None
        live = None
        if can_stop:
            live = unfinished  # rows whose token this step is real (not padding)
            tok = torch.where(unfinished, tok, req.pad_id)
        seq[:, cur] = tok
        cur += 1
        if first_bad is not None and (check_each_step or step == 0):
            _check_finite(first_bad)
        if eos is not None:  # out of place, so ``live`` keeps this step's state
            unfinished = unfinished & ~(tok == eos if eos.dim() == 0 else torch.isin(tok, eos))
        if stop_text is not None:
            unfinished = unfinished & ~stop_text.update(tok, unfinished)
        yield tok, live
        if can_stop and not bool(unfinished.any()):
            break
        if can_stop and first_bad is not None:  # the line above synced already: one more scalar read
            _check_finite(first_bad)
    if first_bad is not None:
        _check_finite(first_bad)
    return seq[:, :cur]


def _check_finite(first_bad: torch.Tensor) -> None:
    step = int(first_bad)
    if step >= 0:
        raise nonfinite_error(step)


class _StopStrings:
    """Per-row generated ids and a check whether their decoded text now contains a stop string."""

    def __init__(self, tokenizer: Any, stops: list[str], batch: int) -> None:
        self.tokenizer, self.stops = tokenizer, stops
        self.ids: list[list[int]] = [[] for _ in range(batch)]

    def update(self, tok: torch.Tensor, unfinished: torch.Tensor) -> torch.Tensor:
        """Append this step's tokens of unfinished rows; (B,) bool, True where a stop string just appeared."""
        hit = torch.zeros_like(unfinished)
        for row, (t, live) in enumerate(zip(tok.tolist(), unfinished.tolist())):
            if not live:
                continue
            self.ids[row].append(t)
            if hits_stop_string(self.tokenizer, self.ids[row], self.stops):
                hit[row] = True
        return hit

