"""The ``llmcore`` console script: one sub-command per stage of a run.

Each sub-command lives beside the code it drives and exposes ``register(subparsers)``, which adds its parser
and sets ``func``. This file only wires them together and turns an :class:`LLMCoreError` into one line on
stderr with exit status 2 (``--debug`` shows the traceback instead).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import LLMCoreError

# Module paths that define ``register(subparsers)``; imported lazily so ``llmcore --help`` stays fast.
COMMANDS = [
    "llmcore.tokenizer.cli",  # tokenizer train|encode
    "llmcore.data.cli",  # prepare
    "llmcore.training.cli",  # train, eval
    "llmcore.finetune.cli",  # finetune
    "llmcore.generation.cli",  # generate
    "llmcore.translation.cli",  # translate
    "llmcore.convert.cli",  # convert
    "llmcore.sweep",  # sweep
    "llmcore.plot",  # plot
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmcore", description="Train, fine-tune and run Transformer LMs.")
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
