"""The ``llmcore`` console script: one thin sub-command per stage of a run.

Each command lives in its own module of this package and exposes ``register(subparsers)``, which adds its
parser and sets ``func``. Commands only translate flags into the library's configs and call it; the work
is in the layers below (``llmcore.training.run.train`` for ``train``, ``llmcore.sweep`` for ``sweep``, ...).
Nothing outside this package imports it. Parsers import no torch, so ``llmcore --help`` stays fast; each
command imports what it needs when it runs.

This file wires the commands together, loads plugins for commands that take ``--import``, and turns an
:class:`LLMCoreError` into one line on stderr with exit status 2 (``--debug`` shows the traceback instead).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import LLMCoreError
from .common import PLUGIN_EPILOG, load_plugins

# Modules of this package that define ``register(subparsers)``, in the order ``--help`` lists them.
COMMANDS = [
    "llmcore.cli.tokenizer",  # tokenizer train|encode
    "llmcore.cli.prepare",  # prepare
    "llmcore.cli.train",  # train
    "llmcore.cli.eval",  # eval
    "llmcore.cli.finetune",  # finetune
    "llmcore.cli.merge",  # merge
    "llmcore.cli.classify",  # classify
    "llmcore.cli.generate",  # generate
    "llmcore.cli.translate",  # translate
    "llmcore.cli.convert",  # convert
    "llmcore.cli.sweep",  # sweep
    "llmcore.cli.plot",  # plot
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmcore", description="Train, fine-tune and run Transformer LMs.",
                                     epilog=PLUGIN_EPILOG)
    parser.add_argument("--debug", action="store_true", help="show full tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for path in COMMANDS:
        importlib.import_module(path).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        if hasattr(args, "imports"):  # a command that builds or loads a model: make user architectures known
            load_plugins(args.imports)
        result = args.func(args)
    except LLMCoreError as e:
        if args.debug:
            raise
        print(f"llmcore {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"llmcore {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
