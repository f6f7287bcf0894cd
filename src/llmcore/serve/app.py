"""The HTTP layer: a Starlette application over a :class:`~.service.Service` (needs ``llmcore[serve]``).

Routes: ``GET /`` (the playground page), ``GET /health``, ``GET /v1/models`` (and ``/v1/models/{id}``),
``POST /v1/completions``, ``POST /v1/chat/completions``, ``POST /v1/translations`` (an extension). Every
refusal is OpenAI's error object with a 4xx status (401 bad key, 404 unknown model or route, 405, 413 body
too large, 400 invalid JSON or parameters, 429 queue full); an unexpected failure is a 500 with a one-line
message and the traceback only in the server's log. Streams are server-sent events in OpenAI's chunk
format ending with ``data: [DONE]``; a client that goes away cancels its request at the next step.

Starlette rather than FastAPI: the request bodies are checked by :mod:`.protocol` (OpenAI's error format,
not pydantic's 422), so FastAPI's schema layer would add a dependency and nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from ..errors import LLMCoreError
from .engine import QueueFull
from .job import Job
from .protocol import APIError, GenerationRequest, parse_chat, parse_completion, parse_translation
from .service import Collector, Service, echo_only, new_id, stream_chunk

log = logging.getLogger("llmcore.serve")
POLL_S = 0.5  # how often a non-streamed request checks whether its client is still there


def error_response(e: APIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status)


async def read_json(request: Request, limit: int) -> Any:
    """The request body as JSON: 413 past ``limit`` bytes (checked while reading), 400 when it is not JSON."""
    declared = request.headers.get("content-length")
    too_big = APIError(413, f"The request body exceeds the server's limit of {limit} bytes (--max-body-bytes).",
                       code="request_too_large")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise APIError(400, f"The request body is not valid JSON: {e}.", code="invalid_json") from None


def create_app(service: Service) -> Starlette:
    """The application serving ``service`` (run it with ``uvicorn.run(app)`` or ``llmcore serve``)."""

    def api(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        """Key check first; APIError and user errors of the library become 4xx JSON."""
        async def wrapped(request: Request) -> Response:
            try:
                if service.api_key is not None:
                    given = request.headers.get("authorization", "")
                    token = given[7:] if given.startswith("Bearer ") else ""
                    # constant time: how much of a guess matched must not show in the response time
                    if not hmac.compare_digest(token.encode("utf-8"), service.api_key.encode("utf-8")):
                        raise APIError(401, "Incorrect API key provided; pass it as 'Authorization: Bearer KEY'.",
                                       code="invalid_api_key")
                return await handler(request)
            except APIError as e:
                return error_response(e)
            except LLMCoreError as e:
                return error_response(APIError(400, str(e)))
        return wrapped

    async def playground(request: Request) -> Response:
        page = resources.files("llmcore.serve").joinpath("static/playground.html").read_text(encoding="utf-8")
        return HTMLResponse(page)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "model": service.name, **service.engine.load(),
                             "continuous_batching": service.engine.continuous, "stats": dict(service.engine.stats)})

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [service.model_card()]})

    async def model(request: Request) -> Response:
        service.check_model(request.path_params["model"])
        return JSONResponse(service.model_card())

    async def completions(request: Request) -> Response:
        req = parse_completion(await read_json(request, service.max_body_bytes), service.limits)
        return await generate(request, req, chat=False)

    async def chat(request: Request) -> Response:
        req = parse_chat(await read_json(request, service.max_body_bytes), service.limits)
        return await generate(request, req, chat=True)

    async def translations(request: Request) -> Response:
        name, texts, beams, max_tokens = parse_translation(await read_json(request, service.max_body_bytes))
        service.check_model(name)
        if service.translator is None:
            raise APIError(400, f"{service.name} is not a translation model (no translation settings or language "
                                "tags); use /v1/completions.", code="unsupported_endpoint")
        future = service.engine.call(lambda: service.translator.translate(
            texts, num_beams=beams, max_new_tokens=max_tokens, too_long="error"))
        out = await asyncio.wrap_future(future)
        return JSONResponse({"object": "list", "model": service.name,
                             "data": [{"object": "translation", "index": i, "text": t} for i, t in enumerate(out)]})

    async def generate(request: Request, req: GenerationRequest, chat: bool) -> Response:
        service.check_model(req.model)
        prompts = service.prompt_ids(req)
        echo = [service.tokenizer.decode(p) if isinstance(p, list) else p for p in req.prompts] if req.echo else None
        scored = req.echo and req.params.logprobs is not None  # every prompt token's log-probability too
        if req.echo and req.max_tokens_given and req.params.max_tokens == 0:  # score the prompt, generate nothing
            service.check_prompts(prompts)
            prompt_lp = await service.score_prompts(prompts, req.params.logprobs) if scored else None
            answer = echo_only(service.name, echo, req.params.n, prompt_lp, sum(len(p) for p in prompts))
            return JobStream([], echo_stream(answer, req.include_usage)) if req.stream else JSONResponse(answer)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def emit(k: int, ev: dict[str, Any]) -> None:  # called on the engine thread
            try:
                loop.call_soon_threadsafe(queue.put_nowait, (k, ev))
            except RuntimeError:  # the event loop is closed (shutdown): nobody waits for these events any more
                pass

        jobs = service.make_jobs(req, prompts, emit)  # every check before the prompts are scored or queued
        prompt_lp = await service.score_prompts(prompts, req.params.logprobs) if scored else None
        try:
            service.engine.submit(jobs)
        except QueueFull as e:
            raise APIError(429, f"The server is busy: {e}; retry later.", type="rate_limit_error",
                           code="queue_full") from None
        if req.stream:
            return JobStream(jobs, sse(jobs, queue, req, chat, echo, prompt_lp))
        collector = Collector(jobs, chat, echo, prompt_lp)
        try:
            while collector.remaining:
                try:
                    k, ev = await asyncio.wait_for(queue.get(), POLL_S)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        return Response(status_code=499)  # nobody reads it; the jobs are cancelled below
                    continue
                if ev["type"] == "error":
                    raise APIError(ev["status"], ev["message"], type="server_error" if ev["status"] >= 500
                                   else "invalid_request_error")
                collector.add(k, ev)
        finally:
            cancel(jobs)
        return JSONResponse(collector.response(service.name, req.params.logprobs is not None))

    async def sse(jobs: list[Job], queue: asyncio.Queue, req: GenerationRequest, chat: bool,
                  echo: list[str] | None, prompt_lp: list[list[dict[str, Any]]] | None) -> AsyncIterator[str]:
        """The events of ``jobs`` as OpenAI chunks; cancels the jobs when the client goes away."""
        rid, n, name = new_id("chatcmpl" if chat else "cmpl"), jobs[0].rows, service.name
        offsets = [0] * (len(jobs) * n)  # characters sent per choice (completions logprobs' text_offset)

        def event(obj: dict[str, Any]) -> str:
            return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

        collector = Collector(jobs, chat)
        try:
            for index in range(len(jobs) * n):
                if chat:
                    yield event(stream_chunk(name, rid, chat, index, role=True))
                elif echo:
                    offsets[index] = len(echo[index // n])
                    yield event(stream_chunk(name, rid, chat, index, text=echo[index // n],
                                             infos=prompt_lp[index // n] if prompt_lp else None))
            while collector.remaining:
                k, ev = await queue.get()
                if ev["type"] == "error":
                    kind = "server_error" if ev["status"] >= 500 else "invalid_request_error"
                    yield event(APIError(ev["status"], ev["message"], type=kind).body())
                    return
                collector.add(k, ev)
                if ev["type"] in ("token", "finish"):
                    index = k * n + ev["choice"]
                    text, info = ev.get("text"), ev.get("logprob")
                    yield event(stream_chunk(name, rid, chat, index, text=text, info=info, offset=offsets[index],
                                             finish=ev.get("reason")))
                    offsets[index] += len(text or "")
            if req.include_usage:
                yield event({"id": rid, "object": "chat.completion.chunk" if chat else "text_completion",
                             "created": int(time.time()), "model": name, "choices": [], "usage": collector.usage})
            yield "data: [DONE]\n\n"
        finally:  # the normal end, or the client went away (the generator is closed or cancelled)
            cancel(jobs)

    async def echo_stream(answer: dict[str, Any], include_usage: bool) -> AsyncIterator[str]:
        """:func:`echo_only`'s answer as server-sent events: one chunk per choice, then the usage if asked."""
        chunk = {k: answer[k] for k in ("id", "object", "created", "model")}
        for choice in answer["choices"]:
            yield f"data: {json.dumps({**chunk, 'choices': [choice]}, ensure_ascii=False)}\n\n"
        if include_usage:
            yield f"data: {json.dumps({**chunk, 'choices': [], 'usage': answer['usage']})}\n\n"
        yield "data: [DONE]\n\n"

    async def not_found(request: Request, exc: HTTPException) -> Response:
        kind = "not_found" if exc.status_code == 404 else "method_not_allowed" if exc.status_code == 405 else None
        message = f"{request.method} {request.url.path}: {exc.detail}"
        if exc.status_code == 404:
            message += " (see GET /v1/models, POST /v1/completions, POST /v1/chat/completions)"
        return error_response(APIError(exc.status_code, message, code=kind))

    async def server_error(request: Request, exc: Exception) -> Response:
        log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(APIError(500, f"Internal server error ({type(exc).__name__}); see the server log.",
                                       type="server_error"))

    routes = [
        Route("/", playground, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/v1/models", api(models), methods=["GET"]),
        Route("/v1/models/{model:path}", api(model), methods=["GET"]),
        Route("/v1/completions", api(completions), methods=["POST"]),
        Route("/v1/chat/completions", api(chat), methods=["POST"]),
        Route("/v1/translations", api(translations), methods=["POST"]),
    ]
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        service.engine.stop()  # the requests still running end with a 503 error event

    return Starlette(routes=routes, exception_handlers={HTTPException: not_found, Exception: server_error},
                     lifespan=lifespan)


class JobStream(StreamingResponse):
    """A server-sent event stream that cancels its jobs however it ends (done, client gone, send failed)."""

    def __init__(self, jobs: list[Job], body: AsyncIterator[str]) -> None:
        super().__init__(body, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.jobs = jobs

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            cancel(self.jobs)


def cancel(jobs: list[Job]) -> None:
    """Tell the engine to drop these jobs' rows at its next step (a no-op for finished ones)."""
    for job in jobs:
        if not job.done:
            job.cancelled = True
