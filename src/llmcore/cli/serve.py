"""``llmcore serve --model DIR|NAME``: an OpenAI-compatible HTTP server, with a playground page at ``/``.

Serves ``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions``, ``POST /v1/translations``
(translator models) and ``GET /health``, streaming or not, with requests decoded together (continuous
batching). Any OpenAI client works: ``OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")``.
Needs the serve extra: pip install 'llmcore[serve]'. Binds to 127.0.0.1 unless --host says otherwise; with
--api-key (or the LLMCORE_API_KEY environment variable) every /v1 request must carry
'Authorization: Bearer KEY'. The guide is docs/guides/serving.md.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..errors import ConfigError
from ..training.config import TrainConfig
from .common import add_dataclass_args, add_model_command, add_quantize_arg, field_default

LIMITS = {  # flag -> (default, lowest allowed)
    "max_batch_rows": (16, 1), "max_queue": (64, 1), "max_tokens_limit": (1024, 1), "max_body_bytes": (1 << 20, 1024),
}


def run(args: argparse.Namespace) -> int:
    from ..serve.server import require_extra

    require_extra()  # before a model loads: the one-line hint, exit status 2
    for name, (_, lowest) in LIMITS.items():
        if getattr(args, name) < lowest:
            raise ConfigError(f"--{name.replace('_', '-')} {getattr(args, name)} is invalid: it must be >= {lowest}.")
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port} is invalid: it must be in [0, 65535] (0 = any free port).")
    import torch

    from ..bundled import resolve_model_dir
    from ..serve.protocol import Limits
    from ..serve.server import build_service
    from ..serve.server import run as serve
    from ..tokenizer import load_tokenizer
    from .common import load_model_dir, maybe_quantize, resolve_device

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = resolve_device(getattr(args, "device", field_default(TrainConfig, "device")))
    model = maybe_quantize(load_model_dir(args.model, device=device), args.quantize)
    tok_dir = resolve_model_dir(args.tokenizer or args.model)
    tokenizer = load_tokenizer(tok_dir)
    name = args.model_name or Path(os.path.normpath(str(args.model))).name
    service = build_service(
        model, tokenizer, name, template_dirs=[tok_dir, tok_dir / "tokenizer"], max_batch_rows=args.max_batch_rows,
        max_queue=args.max_queue, limits=Limits(max_tokens=args.max_tokens_limit, max_n=args.max_batch_rows),
        api_key=args.api_key or os.environ.get("LLMCORE_API_KEY") or None, max_body_bytes=args.max_body_bytes,
        add_bos=args.add_bos, aliases=(str(args.model),))
    serve(service, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_model_command(subparsers, "serve", help="serve a model over an OpenAI-compatible HTTP API",
                          description=__doc__)
    p.add_argument("--model", required=True, help="model directory (llmcore or Hugging Face format) or bundled model "
                   "name (llmcore models)")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the model directory)")
    p.add_argument("--model-name", default=None, help="the model id clients send (default: the directory's name)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface; then set "
                   "--api-key)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (0: any free one, printed at start)")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1 requests (default: "
                   "$LLMCORE_API_KEY, else no key)")
    p.add_argument("--max-batch-rows", type=int, default=LIMITS["max_batch_rows"][0], metavar="N",
                   help="most sequences decoded together (a request with n choices takes n); 1 serves one "
                        "request at a time")
    p.add_argument("--max-queue", type=int, default=LIMITS["max_queue"][0], metavar="N",
                   help="most requests waiting for a place in the batch; beyond it the server answers 429")
    p.add_argument("--max-tokens-limit", type=int, default=LIMITS["max_tokens_limit"][0], metavar="N",
                   help="the most max_tokens one request may ask for")
    p.add_argument("--max-body-bytes", type=int, default=LIMITS["max_body_bytes"][0], metavar="N",
                   help="largest request body accepted (413 beyond it)")
    p.add_argument("--add-bos", action="store_true", help="prepend the tokenizer's BOS token to text prompts")
    add_quantize_arg(p)
    p.add_argument("--threads", type=int, default=None, metavar="N", help="torch threads (default: torch's own)")
    p.add_argument("--log-level", default="warning", choices=("critical", "error", "warning", "info", "debug"),
                   help="uvicorn's log level (info also logs every request)")
    add_dataclass_args(p, TrainConfig, ["device"])
    p.set_defaults(func=run)
