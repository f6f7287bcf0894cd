"""Service: what the HTTP routes share (model, tokenizer, engine, limits), and requests turned into jobs.

This is the part of the server between the parsed request (:mod:`.protocol`) and the engine (:mod:`.engine`):
it encodes prompts, applies the chat template, fits ``max_tokens`` to the context, builds and validates the
:class:`~.job.Job` objects (all before anything is queued, so a bad request never reaches the batch), and
shapes the engine's events into OpenAI's response objects. No web framework here either: :mod:`.app` is the
thin Starlette layer on top.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Callable
from typing import Any

import torch

from ..errors import LLMCoreError
from ..generation.config import check_decoding_memory
from ..inputs import check_token_ids
from .chat import ChatTemplate
from .engine import Engine
from .job import Event, Job, prompt_logprobs
from .protocol import APIError, GenerationRequest, Limits

DEFAULT_MAX_TOKENS = 16  # completions without max_tokens (OpenAI's default); chat takes what the context leaves


@dataclasses.dataclass
class Service:
    """The served model and the server's settings.

    Args:
        name: the model id clients send (``GET /v1/models`` lists it); ``aliases`` are accepted too.
        translator: a :class:`~llmcore.translation.Translator` for ``/v1/translations``, or None.
        api_key: when set, ``/v1/*`` needs ``Authorization: Bearer <api_key>``.
        add_bos: prepend the tokenizer's BOS id to text prompts (as ``llmcore generate --add-bos``).
    """

    model: Any
    tokenizer: Any
    engine: Engine
    name: str
    limits: Limits = dataclasses.field(default_factory=Limits)
    chat_template: ChatTemplate = dataclasses.field(default_factory=ChatTemplate)
    translator: Any = None
    api_key: str | None = None
    max_body_bytes: int = 1 << 20
    add_bos: bool = False
    aliases: tuple[str, ...] = ()
    created: int = dataclasses.field(default_factory=lambda: int(time.time()))

    @property
    def max_seq_len(self) -> int | None:
        return getattr(getattr(self.model, "config", None), "max_seq_len", None)

    def check_model(self, name: str) -> None:
        if name != self.name and name not in self.aliases:
            raise APIError(404, f"The model {name!r} does not exist; this server serves {self.name!r}.",
                           param="model", code="model_not_found")

    def model_card(self) -> dict[str, Any]:
        return {"id": self.name, "object": "model", "created": self.created, "owned_by": "llmcore",
                "max_seq_len": self.max_seq_len, "translation": self.translator is not None,
                "chat_template": self.chat_template.kind, "max_tokens_limit": self.limits.max_tokens}

    # ------------------------------------------------------------------ requests -> jobs
    def prompt_ids(self, req: GenerationRequest) -> list[list[int]]:
        """Token ids of each prompt (chat: the rendered template)."""
        if self.translator is not None and self.translator.seq2seq:
            raise APIError(400, f"{self.name} is an encoder-decoder translation model; it has no completions. Use "
                                "POST /v1/translations.", code="unsupported_endpoint")
        if req.messages is not None:
            texts: list[Any] = [self.chat_template.render(req.messages)]
        else:
            texts = req.prompts
        try:
            return [p if isinstance(p, list) else list(self.tokenizer.encode(p, add_bos=self.add_bos)) for p in texts]
        except LLMCoreError as e:  # a character the tokenizer does not know, ...
            raise APIError(400, str(e), param="messages" if req.messages is not None else "prompt") from e

    def fit_max_tokens(self, req: GenerationRequest, length: int) -> int:
        """``max_tokens`` for a prompt of ``length`` ids: as asked when it fits the context (else 400); when not
        asked, the default (16 for completions, the rest of the context for chat) fitted to the context."""
        ctx, limit = self.max_seq_len, self.limits.max_tokens
        param = "messages" if req.messages is not None else "prompt"
        room = limit if ctx is None else ctx - max(length, 1)  # an empty prompt decodes from one BOS token
        if req.max_tokens_given:
            if req.params.max_tokens > room:
                raise APIError(400, f"This model's maximum context length is {ctx} tokens. However, you requested "
                                    f"{max(length, 1) + req.params.max_tokens} tokens ({max(length, 1)} in the "
                                    f"prompt, {req.params.max_tokens} for the completion). Please reduce the prompt "
                                    f"or max_tokens (at most {max(room, 0)} here).", param=param,
                               code="context_length_exceeded")
            return req.params.max_tokens
        if room < 1:
            raise APIError(400, f"This model's maximum context length is {ctx} tokens and the prompt already has "
                                f"{length}; shorten the prompt.", param=param, code="context_length_exceeded")
        return min(room, limit, DEFAULT_MAX_TOKENS if req.messages is None else limit)

    def check_prompts(self, prompts: list[list[int]]) -> None:
        """400 unless every prompt is 1 to ``max_seq_len`` ids of the vocabulary: what scoring a prompt without
        generating needs (a generating request is checked by :meth:`make_jobs` instead)."""
        config = getattr(self.model, "config", None)
        for ids in prompts:
            if not ids:
                raise APIError(400, "An empty prompt has no tokens to score; give at least one.", param="prompt")
            if self.max_seq_len is not None and len(ids) > self.max_seq_len:
                raise APIError(400, f"This model's maximum context length is {self.max_seq_len} tokens; the prompt "
                                    f"has {len(ids)}. Shorten it.", param="prompt", code="context_length_exceeded")
            if getattr(config, "vocab_size", None) is not None:
                try:  # the check generation's prompts get (llmcore.inputs)
                    check_token_ids(torch.tensor([ids]), config, what="the prompt", check_length=False)
                except LLMCoreError as e:
                    raise APIError(400, str(e), param="prompt") from e

    async def score_prompts(self, prompts: list[list[int]], k: int) -> list[list[dict[str, Any]]]:
        """:func:`~.job.prompt_logprobs` of each prompt (already checked), run on the engine thread between two
        decoding steps."""
        import asyncio

        future = self.engine.call(lambda: [prompt_logprobs(self.model, self.tokenizer, ids, k, self.engine.device)
                                           for ids in prompts])
        return await asyncio.wrap_future(future)

    def make_jobs(self, req: GenerationRequest, prompts: list[list[int]],
                  emit: Callable[[int, Event], None]) -> list[Job]:
        """One validated :class:`Job` per prompt; ``emit(k, event)`` receives prompt k's events."""
        if len(prompts) > self.engine.max_queue:
            raise APIError(400, f"{len(prompts)} prompts in one request, but the server queues at most "
                                f"{self.engine.max_queue} (--max-queue); send fewer per request.", param="prompt")
        vocab = getattr(getattr(self.model, "config", None), "vocab_size", None)
        if req.params.logit_bias and vocab is not None and max(req.params.logit_bias) >= vocab:
            raise APIError(400, f"logit_bias names token id {max(req.params.logit_bias)}, outside the vocabulary "
                                f"[0, {vocab}).", param="logit_bias")
        jobs = []
        for k, ids in enumerate(prompts):
            stops = req.params.stop + (self.chat_template.stops if req.messages is not None else [])
            params = dataclasses.replace(req.params, max_tokens=self.fit_max_tokens(req, len(ids)), stop=stops)
            if params.min_tokens > params.max_tokens:
                raise APIError(400, f"min_tokens={params.min_tokens} exceeds max_tokens={params.max_tokens}.",
                               param="min_tokens")
            try:
                job = Job(self.model, self.tokenizer, ids, params, (lambda ev, k=k: emit(k, ev)), self.engine.device)
                check_decoding_memory(job.config, params.n, job.T, getattr(self.model, "config", None),
                                      self.engine.device)
            except LLMCoreError as e:  # ids outside the vocabulary, a request too big for the machine, ...
                raise APIError(400, str(e), param="prompt") from e
            jobs.append(job)
        return jobs


# ---------------------------------------------------------------------------------------------- responses
def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


class Collector:
    """Accumulates the events of a request's jobs into OpenAI's non-streamed response (or its usage only)."""

    def __init__(self, jobs: list[Job], chat: bool, echo_texts: list[str] | None = None,
                 prompt_lp: list[list[dict[str, Any]]] | None = None) -> None:
        self.jobs, self.chat = jobs, chat
        self.n = jobs[0].rows
        self.echo = [len(echo_texts[k]) if echo_texts else 0 for k in range(len(jobs))]  # logprobs' text_offset
        self.text = [[(echo_texts[k] if echo_texts else "") for _ in range(self.n)] for k in range(len(jobs))]
        # echo with logprobs: each choice's table starts with its prompt's tokens
        self.lp: list[list[list[dict[str, Any]]]] = [[list(prompt_lp[k]) if prompt_lp else [] for _ in range(self.n)]
                                                     for k in range(len(jobs))]
        self.finish: list[list[str | None]] = [[None] * self.n for _ in jobs]
        self.remaining = len(jobs)
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}

    def add(self, k: int, ev: Event) -> None:
        if ev["type"] == "token":
            self.text[k][ev["choice"]] += ev["text"]
            if ev["logprob"] is not None:
                self.lp[k][ev["choice"]].append(ev["logprob"])
        elif ev["type"] == "finish":
            self.finish[k][ev["choice"]] = ev["reason"]
        elif ev["type"] == "done":
            self.remaining -= 1
            for key, value in ev["usage"].items():
                self.usage[key] += value

    def response(self, name: str, logprobs: bool) -> dict[str, Any]:
        choices = []
        for k in range(len(self.jobs)):
            for c in range(self.n):
                lp = logprobs_object(self.lp[k][c], self.chat, self.echo[k]) if logprobs else None
                choice: dict[str, Any] = {"index": k * self.n + c, "logprobs": lp, "finish_reason": self.finish[k][c]}
                if self.chat:
                    choice["message"] = {"role": "assistant", "content": self.text[k][c]}
                else:
                    choice["text"] = self.text[k][c]
                choices.append(choice)
        kind = "chat.completion" if self.chat else "text_completion"
        return {"id": new_id("chatcmpl" if self.chat else "cmpl"), "object": kind, "created": int(time.time()),
                "model": name, "choices": choices, "usage": dict(self.usage)}


def logprobs_object(infos: list[dict[str, Any]], chat: bool, offset: int = 0) -> dict[str, Any]:
    """OpenAI's logprobs: chat ``{"content": [{token, logprob, bytes, top_logprobs}]}``; completions
    ``{tokens, token_logprobs, top_logprobs, text_offset}``."""
    if chat:
        def entry(tok: str, lp: float) -> dict[str, Any]:
            return {"token": tok, "logprob": lp, "bytes": list(tok.encode("utf-8"))}
        return {"content": [{**entry(i["token"], i["logprob"]), "top_logprobs": [entry(t, v) for t, v in i["top"]]}
                            for i in infos]}
    offsets, pos = [], offset
    for i in infos:
        if "offset" in i:  # a prompt token (echo): where it starts in the echoed prompt
            offsets.append(i["offset"])
            continue
        offsets.append(pos)
        pos += len(i["token"])
    return {"tokens": [i["token"] for i in infos], "token_logprobs": [i["logprob"] for i in infos],
            "top_logprobs": [None if i["top"] is None else dict(i["top"]) for i in infos], "text_offset": offsets}


def echo_only(name: str, echo: list[str], n: int, prompt_lp: list[list[dict[str, Any]]] | None,
              prompt_tokens: int) -> dict[str, Any]:
    """The response to an echoed completion with ``max_tokens=0``: each prompt back (``n`` times), with its
    tokens' log-probabilities when asked, nothing generated."""
    choices = [{"index": k * n + c, "text": text, "finish_reason": "length",
                "logprobs": None if prompt_lp is None else logprobs_object(prompt_lp[k], False)}
               for k, text in enumerate(echo) for c in range(n)]
    return {"id": new_id("cmpl"), "object": "text_completion", "created": int(time.time()), "model": name,
            "choices": choices, "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 0,
                                          "total_tokens": prompt_tokens}}


def stream_chunk(name: str, rid: str, chat: bool, index: int, text: str | None = None,
                 finish: str | None = None, info: dict[str, Any] | None = None, role: bool = False,
                 offset: int = 0, infos: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """One server-sent event of OpenAI's chunk format (``text_completion`` or ``chat.completion.chunk``);
    ``info`` is the logprobs entry of its one token, ``infos`` those of several (an echoed prompt's)."""
    infos = [info] if info is not None else infos
    lp = None if infos is None else logprobs_object(infos, chat, offset)
    if chat:
        delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
        if text:
            delta["content"] = text
        choice = {"index": index, "delta": delta, "logprobs": lp, "finish_reason": finish}
        kind = "chat.completion.chunk"
    else:
        choice = {"index": index, "text": text or "", "logprobs": lp, "finish_reason": finish}
        kind = "text_completion"
    return {"id": rid, "object": kind, "created": int(time.time()), "model": name, "choices": [choice]}
