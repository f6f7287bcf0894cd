"""Job: the decoding state of one request (one prompt, ``n`` choices) inside the server's shared batch.

A job does, for its own rows, exactly what one :func:`llmcore.generation.generate` call does for its batch:
the same :class:`~llmcore.generation.GenerationConfig` validation and special-token resolution
(:func:`llmcore.generation.runner.prepare`), the same logits processors in the same order, its own seeded
``torch.Generator`` drawing all ``n`` choices at once (as ``num_return_sequences=n`` does), finished rows fed
the pad id until the whole job ends, EOS and stop strings checked as ``generate`` checks them. Only the
forward pass is shared with other requests (see :mod:`.engine`), so a job decodes the tokens it would get
alone: identical for greedy decoding, and for seeded sampling when it runs alone (shared batches change the
logits in the last bits, which a draw notices only on a near-tie).

Text goes out through one :class:`~llmcore.generation.TextDeltas` per choice (never half a UTF-8 character),
and OpenAI's stop rule on top: the returned text ends *before* the stop string, so a streamed delta holds
back the last ``len(longest stop) - 1`` characters until they cannot begin one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

from ..generation import GenerationConfig, TextDeltas
from ..generation.processors import (
    apply_processors,
    build_processors,
    nonfinite_error,
    nonfinite_rows,
    sample_next,
)
from ..generation.runner import hits_stop_string, prepare

Event = dict[str, Any]


@dataclasses.dataclass
class SamplingParams:
    """What a request asks for, already checked for types and ranges by :mod:`.protocol`.

    ``temperature == 0`` is greedy (the other sampling fields are then ignored); ``logprobs`` None is off,
    k >= 0 reports the chosen token's log-probability and the k most likely alternatives.
    """

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float = 1.0
    min_tokens: int = 0
    n: int = 1
    stop: list[str] = dataclasses.field(default_factory=list)
    seed: int | None = None
    logprobs: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] | None = None

    def generation_config(self) -> GenerationConfig:
        """The :class:`GenerationConfig` of one choice (``n`` is the job's row count, not the config's)."""
        sampling = self.temperature > 0
        extra = dict(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, min_p=self.min_p) \
            if sampling else {}  # greedy: leave them unset, so no "has no effect" warning fires
        return GenerationConfig(max_new_tokens=self.max_tokens, min_new_tokens=self.min_tokens, do_sample=sampling,
                                repetition_penalty=self.repetition_penalty, stop_strings=self.stop or None,
                                presence_penalty=self.presence_penalty, frequency_penalty=self.frequency_penalty,
                                logit_bias=self.logit_bias, seed=self.seed, **extra)


class Job:
    """One request's rows: built (and validated) in the server's event loop, stepped by the engine thread.

    Args:
        model, tokenizer: the served pair.
        prompt_ids: the prompt's token ids (may be empty: decoding then starts from BOS).
        params: the request's :class:`SamplingParams`.
        emit: called from the engine thread with each event (``token``, ``finish``, ``done``, ``error``).
    """

    def __init__(self, model: Any, tokenizer: Any, prompt_ids: list[int], params: SamplingParams,
                 emit: Callable[[Event], None], device: Any = "cpu") -> None:
        self.params, self.emit, self.tokenizer = params, emit, tokenizer
        self.config = params.generation_config()
        n, N = params.n, params.max_tokens
        ids = torch.tensor([prompt_ids], dtype=torch.long, device=device)
        # GenerationError for ids outside the vocabulary, an empty prompt without a BOS id, ...
        req = prepare(model, ids, None, self.config, tokenizer, None, expand=n)
        self.prompt = req.input_ids[0].tolist()  # an empty prompt became [bos]
        self.T = T = len(self.prompt)
        self.seq = torch.full((n, T + N), req.pad_id, dtype=torch.long, device=device)  # (n, T + N): prompt, new
        self.seq[:, :T] = req.input_ids
        self.cur = T
        self.pad_id, self.stops = req.pad_id, req.stops
        self.procs = build_processors(self.config, T, req.eos_ids, None, None)
        self.eos = set(req.eos_ids)
        self.generator = None
        if self.config.is_sampling:  # private, as in generate: the global RNG is never touched
            self.generator = torch.Generator(device=device)
            if params.seed is not None:
                self.generator.manual_seed(params.seed)
            else:
                self.generator.seed()
        self.unfinished = [True] * n
        self.gen: list[list[int]] = [[] for _ in range(n)]  # each choice's generated ids (for stop strings)
        context = [list(prompt_ids[-4:])]  # as stream(): a few prompt ids decoded in front, then cut off
        self.deltas = [TextDeltas(tokenizer, context) for _ in range(n)]
        self.raw = [""] * n  # the decoded text of each choice so far (stop strings included)
        self.sent = [0] * n  # characters of ``raw`` already emitted
        self.counts = [0] * n  # generated tokens per choice, the finishing one included
        self.finish: list[str | None] = [None] * n
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.cancelled = False  # set by the server's event loop when the client went away
        self.done = False

    @property
    def rows(self) -> int:
        return self.params.n

    @property
    def step_index(self) -> int:
        return self.cur - self.T

    # ------------------------------------------------------------------ one decoding step
    @property
    def plain_greedy(self) -> bool:
        """Greedy with no logits processor: the batch's argmax is this job's choice (the engine takes it once)."""
        return not self.procs and not self.config.is_sampling

    def step(self, logits: torch.Tensor, nonfinite: bool | None = None, argmax: torch.Tensor | None = None
             ) -> torch.Tensor:
        """Choose this step's tokens from the job's rows of the batch logits (n, V); returns them (n,), the pad id
        in finished rows (what the next forward pass feeds, as ``generate`` does).

        The engine may pass what it computed for the whole batch at once: ``nonfinite`` (whether these raw rows
        hold NaN / +inf; used when no processor changed them) and, for a :attr:`plain_greedy` job, ``argmax``
        (these rows' argmax). Call under ``torch.no_grad()``.
        """
        raw_logits = logits
        step = self.step_index
        if self.procs:
            logits = apply_processors(self.procs, self.seq[:, :self.cur], logits)
            nonfinite = None  # checked on what the processors made of the rows, as generate checks it
        if not self.config.is_sampling:  # sampling checks its probabilities in sample_next
            if nonfinite if nonfinite is not None else bool(nonfinite_rows(logits).any()):
                raise nonfinite_error(step)
        if argmax is not None and self.plain_greedy:
            tok = argmax
        else:
            tok = sample_next(logits, self.config.is_sampling, self.generator, step=step)
        # The bookkeeping is plain Python on one host copy of the tokens: a job has few rows, and a dozen tiny
        # tensor ops per job and step would cost more than the choice itself once sixteen jobs share a batch.
        ids = tok.tolist()
        live = list(self.unfinished)  # rows whose token this step is real
        if not all(live):  # finished rows get the pad id, fed like any token (as generate does)
            ids = [t if alive else self.pad_id for t, alive in zip(ids, live)]
            tok = torch.tensor(ids, dtype=torch.long, device=tok.device)
        self.seq[:, self.cur] = tok
        self.cur += 1
        infos = self._logprobs(raw_logits, tok) if self.params.logprobs is not None else [None] * len(ids)
        last = self.step_index >= self.params.max_tokens
        for row, (t, alive) in enumerate(zip(ids, live)):
            if not alive:
                continue
            self.counts[row] += 1
            self.gen[row].append(t)
            if t in self.eos or (self.stops and hits_stop_string(self.tokenizer, self.gen[row], self.stops)):
                self.unfinished[row] = False  # the same tests (on the same decoded ids) as generate's
            self.raw[row] += self.deltas[row].push([t])[0]
            if not self.unfinished[row]:
                self._finish(row, "stop", infos[row])
            elif last:
                self._finish(row, "length", infos[row])
            else:
                self._emit_text(row, infos[row], final=False)
        if last or not any(self.unfinished):
            self.done = True
            self.emit({"type": "done", "usage": self.usage()})
        return tok

    def _logprobs(self, logits: torch.Tensor, tok: torch.Tensor) -> list[dict[str, Any]]:
        """The chosen tokens' log-probabilities under the model's distribution (before temperature and filters,
        as vLLM reports them), and the ``logprobs`` most likely alternatives."""
        return logprob_table(self.tokenizer, logits, tok, self.params.logprobs)

    # ------------------------------------------------------------------ text out
    def _visible(self, row: int, final: bool) -> str:
        """The text of ``row`` that may be shown: cut before the first stop string; while running, without the
        last ``hold`` characters, which might still become the start of one."""
        text = self.raw[row]
        cut = min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            return text[:cut]
        return text if final else text[:max(len(text) - self.hold, 0)]

    def _emit_text(self, row: int, info: dict[str, Any] | None, final: bool) -> None:
        visible = self._visible(row, final)
        delta = visible[self.sent[row]:] if len(visible) > self.sent[row] else ""
        self.sent[row] = max(self.sent[row], len(visible))
        if delta or info is not None:
            self.emit({"type": "token", "choice": row, "text": delta, "logprob": info})

    def _finish(self, row: int, reason: str, info: dict[str, Any] | None) -> None:
        self.raw[row] += self.deltas[row].flush()[0]  # what TextDeltas held back (a trailing partial character)
        self._emit_text(row, info, final=True)
        self.finish[row] = reason
        self.emit({"type": "finish", "choice": row, "reason": reason})

    def usage(self) -> dict[str, int]:
        completion = sum(self.counts)
        return {"prompt_tokens": self.T, "completion_tokens": completion, "total_tokens": self.T + completion}

    def fail(self, message: str, status: int = 500) -> None:
        """End the job with an error event (the engine carries on with the other jobs)."""
        self.done = True
        self.emit({"type": "error", "status": status, "message": message})


def token_text(tokenizer: Any, token_id: int) -> str:
    """A token as text for the logprobs tables (special tokens by name; a partial UTF-8 byte as U+FFFD)."""
    return tokenizer.decode([token_id], skip_special=False)


def logprob_table(tokenizer: Any, logits: torch.Tensor, tok: torch.Tensor, k: int) -> list[dict[str, Any]]:
    """``{id, token, logprob, top}`` per row: the log-probability of ``tok`` (n,) under each row of ``logits``
    (n, V), and the ``k`` most likely tokens of the row with theirs."""
    lp = torch.log_softmax(logits.float(), dim=-1)  # (n, V)
    chosen = lp.gather(1, tok[:, None]).squeeze(1).tolist()
    k = min(k, lp.shape[-1])
    top = lp.topk(k, dim=-1) if k else None
    out = []
    for row, t in enumerate(tok.tolist()):
        alts = [] if top is None else list(zip(top.indices[row].tolist(), top.values[row].tolist()))
        out.append({"id": t, "token": token_text(tokenizer, t), "logprob": chosen[row],
                    "top": [(token_text(tokenizer, i), v) for i, v in alts]})
    return out


PROMPT_CHUNK = 256  # prompt positions scored per forward pass of the head: (256, V) floats at a time


def prompt_logprobs(model: torch.nn.Module, tokenizer: Any, ids: list[int], k: int,
                    device: torch.device | str = "cpu") -> list[dict[str, Any]]:
    """The table of :func:`logprob_table` for every token of a prompt, each under the model's distribution
    given the tokens before it (what ``echo`` with ``logprobs`` reports; evaluation harnesses sum these).

    The first token has no context: its ``logprob`` and ``top`` are None, as in OpenAI's API. Each entry also
    holds ``offset``, where its text starts in ``tokenizer.decode(ids)``. Call under ``torch.no_grad()``.
    """
    x = torch.tensor([ids], dtype=torch.long, device=device)
    logits = model(x)[0, :-1]  # (T-1, V): position i predicts token i + 1
    target = x[0, 1:]
    table = [{"id": ids[0], "token": token_text(tokenizer, ids[0]), "logprob": None, "top": None}]
    for start in range(0, logits.shape[0], PROMPT_CHUNK):
        stop = start + PROMPT_CHUNK
        table += logprob_table(tokenizer, logits[start:stop], target[start:stop], k)
    for i, entry in enumerate(table):  # offsets in the decoded prompt (a token's own text may not add up to it)
        entry["offset"] = len(tokenizer.decode(ids[:i])) if i else 0
    return table
