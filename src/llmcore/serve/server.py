"""Load a model directory into a :class:`~.service.Service`, and run it on uvicorn (``llmcore serve``).

:func:`load_service` needs only torch and llmcore; :func:`run` imports the ``serve`` extra (Starlette,
uvicorn) and binds the socket itself first, so a port in use is a one-line error before anything starts.
"""

from __future__ import annotations

import socket
import sys
import warnings
from pathlib import Path
from typing import Any

from ..errors import ConfigError, LLMCoreError
from .chat import load_chat_template
from .engine import Engine
from .protocol import Limits
from .service import Service

EXTRA_HINT = "pip install 'llmcore[serve]'"


def require_extra() -> None:
    """ConfigError naming the extra when Starlette or uvicorn is missing (checked before a model loads)."""
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise ConfigError(f"the server needs the 'serve' extra ({e.name or 'starlette/uvicorn'} is not installed): "
                          f"{EXTRA_HINT}") from None


def load_translator(model: Any, tokenizer: Any) -> Any:
    """A Translator for an encoder-decoder or for an LM saved with translation settings; None otherwise."""
    from ..models.seq2seq import Seq2SeqTransformer
    from ..translation.translator import Translator

    seq2seq = isinstance(model, Seq2SeqTransformer)
    if not seq2seq and "translation" not in (getattr(getattr(model, "config", None), "extra", None) or {}):
        return None
    try:
        return Translator(model, tokenizer)
    except LLMCoreError as e:
        if seq2seq:  # an encoder-decoder serves nothing else
            raise
        warnings.warn(f"translation disabled: {e}", stacklevel=2)
        return None


def build_service(model: Any, tokenizer: Any, name: str, template_dirs: list[Path] | None = None,
                  max_batch_rows: int = 16, max_queue: int = 64, limits: Limits | None = None,
                  **settings: Any) -> Service:
    """A :class:`Service` for a loaded ``model`` and ``tokenizer`` (the engine thread starts here).

    ``template_dirs``: where to look for a Hugging Face chat template (the tokenizer's directory).
    ``settings`` go to :class:`Service` (``api_key``, ``max_body_bytes``, ``add_bos``, ``aliases``).
    """
    if not callable(getattr(model, "make_cache", None)) or not hasattr(model, "config"):
        raise ConfigError(f"{type(model).__name__} is not a language model the server can decode (it needs "
                          "make_cache); serve a TransformerLM, an LSTMLM, a translator or a Hugging Face LM.")
    limits = limits or Limits(max_n=max_batch_rows)
    limits.max_n = min(limits.max_n, max_batch_rows)
    translator = load_translator(model, tokenizer)
    engine = Engine(model, max_batch_rows=max_batch_rows, max_queue=max_queue)
    return Service(model, tokenizer, engine, name, limits, load_chat_template(template_dirs or []), translator,
                   **settings)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (IPv4 or IPv6), or a ConfigError naming the fix."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as e:
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e}; pick another --port (or free this "
                          "one), or a --host of this machine.") from None
    sock.set_inheritable(True)
    return sock


def run(service: Service, host: str = "127.0.0.1", port: int = 8000, log_level: str = "warning") -> None:
    """Serve until interrupted (Ctrl-C stops uvicorn cleanly, and the engine with it)."""
    require_extra()
    import uvicorn

    from .app import create_app

    sock = bind(host, port)
    port = sock.getsockname()[1]  # the one the system chose for --port 0
    shown = f"[{host}]" if ":" in host else host
    mode = "continuous batching" if service.engine.continuous else "one request at a time (no shareable KV cache)"
    print(f"llmcore serve: {service.name} at http://{shown}:{port}/v1 ({mode}, up to "
          f"{service.engine.max_batch_rows} rows); playground at http://{shown}:{port}/", file=sys.stderr, flush=True)
    if host not in ("127.0.0.1", "localhost", "::1") and service.api_key is None:
        print("llmcore serve: warning: listening beyond this machine without --api-key; anyone who can reach "
              "the port can use the model", file=sys.stderr, flush=True)
    config = uvicorn.Config(create_app(service), log_level=log_level, access_log=log_level in ("info", "debug"))
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        service.engine.stop()
        sock.close()
