"""The OpenAI request bodies the server accepts, checked field by field before anything is queued.

Every mistake becomes an :class:`APIError`, which the HTTP layer sends as OpenAI's error object
``{"error": {"message", "type", "param", "code"}}`` with a 4xx status. A field OpenAI defines but this
server does not implement (``best_of``, ``suffix``, tools, ...) is accepted at its neutral
value and refused otherwise, naming the field; a field OpenAI does not define is refused too (as OpenAI
does: "Unrecognized request argument"), so a typo never passes silently. The extensions ``top_k``,
``min_p``, ``repetition_penalty`` and ``min_tokens`` are vLLM's names for llmcore's decoding options.

Plain Python: no web framework and no torch here.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from .job import SamplingParams

MAX_STOP = 4  # stop sequences per request, as OpenAI allows
MAX_PROMPTS = 64  # prompts in one completions request
MAX_LOGPROBS = 5  # completions' `logprobs` (OpenAI's limit); chat's `top_logprobs` allows 20
COMMON = {"model", "max_tokens", "temperature", "top_p", "n", "stop", "seed", "stream", "stream_options", "user",
          "presence_penalty", "frequency_penalty", "logit_bias", "top_k", "min_p", "repetition_penalty",
          "min_tokens"}
COMPLETION_FIELDS = COMMON | {"prompt", "logprobs", "echo", "best_of", "suffix"}
CHAT_FIELDS = COMMON | {"messages", "max_completion_tokens", "logprobs", "top_logprobs", "tools", "tool_choice",
                        "functions", "function_call", "response_format", "parallel_tool_calls", "store",
                        "metadata"}
ROLES = ("system", "developer", "user", "assistant")


class APIError(Exception):
    """A request the server refuses: HTTP ``status`` and OpenAI's error fields."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad(param: str, message: str, code: str = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


@dataclasses.dataclass
class Limits:
    """The server's per-request bounds (command-line flags of ``llmcore serve``)."""

    max_tokens: int = 1024  # the most tokens one request may ask for (per choice)
    max_n: int = 16  # choices per prompt; at most the batch's rows


@dataclasses.dataclass
class GenerationRequest:
    """A checked completions or chat request: prompts (text or ids), how to decode them, how to answer."""

    model: str
    prompts: list[str | list[int]]
    params: SamplingParams
    max_tokens_given: bool
    stream: bool = False
    include_usage: bool = False
    echo: bool = False
    messages: list[dict[str, str]] | None = None  # chat only


# ---------------------------------------------------------------------------------------------- fields
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def number(body: dict[str, Any], key: str, default: float, lo: float, hi: float, lo_open: bool = False) -> float:
    v = body.get(key)
    if v is None:
        return default
    if not _is_number(v) or v > hi or v < lo or (lo_open and v == lo):
        left = "(" if lo_open else "["
        raise bad(key, f"{key}={v!r} is invalid: it must be a number in {left}{lo:g}, {hi:g}].")
    return float(v)


def integer(body: dict[str, Any], key: str, default: int | None, lo: int, hi: int, hint: str = "") -> int | None:
    v = body.get(key)
    if v is None:
        return default
    if not _is_int(v) or not lo <= v <= hi:
        raise bad(key, f"{key}={v!r} is invalid: it must be an integer in [{lo}, {hi}]{hint}.")
    return v


def boolean(body: dict[str, Any], key: str, default: bool = False) -> bool:
    v = body.get(key)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise bad(key, f"{key}={v!r} is invalid: it must be true or false.")
    return v


def neutral(body: dict[str, Any], key: str, allowed: tuple[Any, ...], instead: str) -> None:
    """Refuse ``key`` unless it is missing or one of ``allowed`` (the value that changes nothing)."""
    v = body.get(key)
    if v is not None and v not in allowed:
        raise APIError(400, f"{key}={v!r} is not supported by this server; {instead}.", param=key,
                       code="unsupported_parameter")


def check_fields(body: Any, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise APIError(400, f"The request body must be a JSON object, not a JSON {type(body).__name__}.")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise bad(unknown[0], f"Unrecognized request argument supplied: {unknown[0]}.", "unknown_parameter")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad("model", "model is required: the name GET /v1/models lists.", "missing_required_parameter")
    return body


def stop_list(body: dict[str, Any]) -> list[str]:
    v = body.get("stop")
    if v is None:
        return []
    stops = [v] if isinstance(v, str) else v
    if not isinstance(stops, list) or not 1 <= len(stops) <= MAX_STOP or \
            not all(isinstance(s, str) and s for s in stops):
        raise bad("stop", f"stop={v!r} is invalid: give a non-empty string or a list of 1 to {MAX_STOP} of them.")
    return list(stops)


def sampling(body: dict[str, Any], limits: Limits, logprobs: int | None, max_key: str = "max_tokens",
             least: int = 1) -> tuple[SamplingParams, bool]:
    """The decoding fields shared by both endpoints; returns the params and whether max_tokens was given.
    ``least``: the smallest ``max_tokens`` allowed (0 for an echoed completion: the prompt scored, nothing made)."""
    hint = " (the server's --max-tokens-limit)" + ("; 0 needs echo=true" if max_key == "max_tokens" and least else "")
    max_tokens = integer(body, max_key, None, least, limits.max_tokens, hint)
    top_k = integer(body, "top_k", None, -1, 2**31 - 1, "; -1 or 0 turns it off")
    params = SamplingParams(
        max_tokens=1 if max_tokens is None else max_tokens,  # a default is fitted to the prompt later
        temperature=number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=number(body, "top_p", 1.0, 0.0, 1.0, lo_open=True),
        top_k=top_k if top_k and top_k > 0 else None,
        min_p=number(body, "min_p", 0.0, 0.0, 1.0) or None,
        repetition_penalty=number(body, "repetition_penalty", 1.0, 0.0, 100.0, lo_open=True),
        min_tokens=integer(body, "min_tokens", 0, 0, limits.max_tokens),
        n=integer(body, "n", 1, 1, limits.max_n, " (the server's --max-batch-rows)"),
        stop=stop_list(body),
        seed=integer(body, "seed", None, 0, 2**63 - 1),
        logprobs=logprobs,
        presence_penalty=number(body, "presence_penalty", 0.0, -2.0, 2.0),
        frequency_penalty=number(body, "frequency_penalty", 0.0, -2.0, 2.0),
        logit_bias=logit_bias(body))
    return params, max_tokens is not None


MAX_LOGIT_BIAS = 300  # entries of logit_bias (OpenAI's limit)


def logit_bias(body: dict[str, Any]) -> dict[int, float] | None:
    """``logit_bias``: a JSON object of token ids (as strings, JSON keys being strings) to biases in [-100, 100]."""
    v = body.get("logit_bias")
    if v is None or v == {}:
        return None
    if not isinstance(v, dict) or len(v) > MAX_LOGIT_BIAS:
        raise bad("logit_bias", f"logit_bias must be an object of at most {MAX_LOGIT_BIAS} token ids to biases.")
    out: dict[int, float] = {}
    for key, bias in v.items():
        if not (isinstance(key, str) and key.isdigit() and len(key) < 10) or not _is_number(bias) \
                or not -100 <= bias <= 100:
            raise bad("logit_bias", f"logit_bias entry {key!r}: {bias!r} is invalid: keys are token ids (digits), "
                                    "values numbers in [-100, 100].")
        out[int(key)] = float(bias)
    return out


def streaming(body: dict[str, Any]) -> tuple[bool, bool]:
    """(stream, include_usage)."""
    stream = boolean(body, "stream")
    options = body.get("stream_options")
    if options is None:
        return stream, False
    if not stream:
        raise bad("stream_options", "stream_options is only allowed with stream=true.")
    if not isinstance(options, dict) or set(options) - {"include_usage"}:
        raise bad("stream_options", f"stream_options={options!r} is invalid: the only option is include_usage.")
    return stream, boolean(options, "include_usage")


# ---------------------------------------------------------------------------------------------- endpoints
def parse_completion(body: Any, limits: Limits) -> GenerationRequest:
    """``POST /v1/completions``: prompt (a string, a list of strings, token ids or lists of them)."""
    body = check_fields(body, COMPLETION_FIELDS)
    neutral(body, "suffix", ("",), "this server only continues a prompt")
    logprobs = integer(body, "logprobs", None, 0, MAX_LOGPROBS)
    echo = boolean(body, "echo")
    # echo + logprobs + max_tokens=0 is how evaluation harnesses score a text (lm-evaluation-harness's
    # loglikelihood): the log-probability of every prompt token, nothing generated
    params, given = sampling(body, limits, logprobs, least=0 if echo else 1)
    neutral(body, "best_of", (params.n,), "leave it out (best_of = n)")
    stream, usage = streaming(body)
    return GenerationRequest(body["model"], prompt_list(body.get("prompt")), params, given, stream, usage,
                             echo=echo)


def prompt_list(v: Any) -> list[str | list[int]]:
    """The prompts of a completions request, each a string or a list of token ids."""
    def ids(x: Any) -> bool:
        return isinstance(x, list) and all(_is_int(i) and i >= 0 for i in x)

    if isinstance(v, str):
        return [v]
    if ids(v) and v:
        return [list(v)]
    if isinstance(v, list) and v and all(isinstance(p, str) or (ids(p) and p) for p in v):
        if len(v) > MAX_PROMPTS:
            raise bad("prompt", f"{len(v)} prompts in one request; send at most {MAX_PROMPTS} per request.")
        return [p if isinstance(p, str) else list(p) for p in v]
    if v is None:
        raise bad("prompt", "prompt is required: a string, a list of strings, or token ids.",
                  "missing_required_parameter")
    raise bad("prompt", "prompt must be a string, a non-empty list of strings, a list of token ids (integers "
                        ">= 0) or a list of such lists.")


def parse_chat(body: Any, limits: Limits) -> GenerationRequest:
    """``POST /v1/chat/completions``: messages (roles system / developer / user / assistant, text content)."""
    body = check_fields(body, CHAT_FIELDS)
    for key in ("tools", "functions"):
        neutral(body, key, ([],), "this server does not call tools")
    for key in ("tool_choice", "function_call"):
        neutral(body, key, ("none",), "this server does not call tools")
    neutral(body, "parallel_tool_calls", (False, True), "leave it out")
    neutral(body, "response_format", ({"type": "text"},), "only plain text is produced")
    if body.get("max_tokens") is not None and body.get("max_completion_tokens") is not None:
        raise bad("max_completion_tokens", "give max_tokens or max_completion_tokens, not both.")
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    want = boolean(body, "logprobs")
    top = integer(body, "top_logprobs", None, 0, 20)
    if top is not None and not want:
        raise bad("top_logprobs", "top_logprobs needs logprobs=true.")
    params, given = sampling(body, limits, (top or 0) if want else None, key)
    stream, usage = streaming(body)
    return GenerationRequest(body["model"], [], params, given, stream, usage, messages=messages(body))


def messages(body: dict[str, Any]) -> list[dict[str, str]]:
    """The chat messages as ``{"role", "content"}`` with text content (a list of text parts is joined)."""
    v = body.get("messages")
    if not isinstance(v, list) or not v:
        raise bad("messages", "messages must be a non-empty list of {role, content} objects.",
                  "missing_required_parameter" if v is None else "invalid_value")
    out = []
    for i, m in enumerate(v):
        where = f"messages[{i}]"
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            role = m.get("role") if isinstance(m, dict) else None
            raise bad(where, f"{where}.role={role!r} is invalid: it must be one of {', '.join(ROLES)}.")
        content = m.get("content")
        if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]: the text parts, joined
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise bad(where, f"{where}.content holds a part other than text; only text is supported.")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise bad(where, f"{where}.content must be a string or a list of text parts.")
        out.append({"role": m["role"], "content": content})
    return out


def parse_translation(body: Any, max_inputs: int = MAX_PROMPTS) -> tuple[str, list[str], int, int | None]:
    """``POST /v1/translations`` (an llmcore extension): ``{"model", "input": str | [str], "num_beams",
    "max_tokens"}`` -> (model, texts, num_beams, max_tokens)."""
    body = check_fields(body, {"model", "input", "num_beams", "max_tokens"})
    v = body.get("input")
    texts = [v] if isinstance(v, str) else v
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise bad("input", "input must be a non-empty string or a list of non-empty strings.",
                  "missing_required_parameter" if v is None else "invalid_value")
    if len(texts) > max_inputs:
        raise bad("input", f"{len(texts)} inputs in one request; send at most {max_inputs}.")
    return body["model"], list(texts), integer(body, "num_beams", 1, 1, 8), integer(body, "max_tokens", None, 1,
                                                                                     10_000)
