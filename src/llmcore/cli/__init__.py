"""The ``llmcore`` console script: one thin sub-command per stage of a run.

Each command lives in its own module of this package and exposes ``register(subparsers)``, which adds its
parser and sets ``func``. Commands only translate flags into the library's configs and call it; the work
is in the layers below (``llmcore.training.run.train`` for ``train``, ``llmcore.sweep`` for ``sweep``, ...).
Nothing outside this package imports it. Parsers import no torch, so ``llmcore --help`` stays fast; each
command imports what it needs when it runs.

This file wires the commands together, loads plugins for commands that take ``--import``, and turns an
:class:`LLMCoreError` into one line on stderr with exit status 2 (``--debug`` shows the traceback instead).
After the commands register, :func:`finish_help` walks every parser once: docstring markup in the texts
users read becomes plain text, every option with a value shows its default, and ``--debug`` is accepted
after the sub-command too. A KeyboardInterrupt exits 130 with the step it stopped at and how to resume.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import select
import sys
import textwrap
import typing

from ..errors import LLMCoreError
from .common import PLUGIN_EPILOG, cli_hint, interrupted_message, load_plugins, plain_text, show_default

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
    "llmcore.cli.serve",  # serve (the OpenAI-compatible HTTP server; needs the serve extra)
    "llmcore.cli.models",  # models (the bundled ready-trained ones)
    "llmcore.cli.convert",  # convert
    "llmcore.cli.sweep",  # sweep
    "llmcore.cli.plot",  # plot
]


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose mistakes are one line on stderr, ``llmcore CMD: error: ...``, exit status 2.

    argparse prints the whole usage block (ten lines for ``train``) before the message; every other llmcore
    error is one line, so a flag typo is too, with where to read the options. Sub-command parsers inherit the
    class (``add_subparsers`` uses ``type(parent)``), so ``llmcore tokenizer train`` answers the same way.
    """

    def error(self, message: str) -> typing.NoReturn:
        message = " ".join(str(message).split())  # one line, whatever argparse put in it
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def parse_args(self, args: typing.Any = None, namespace: typing.Any = None) -> argparse.Namespace:
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:  # reported by the parser of the command they were given to, not the top-level one
            command = getattr(parsed, "command", None)
            prog = f"{self.prog} {command}" if command and self.prog == "llmcore" else self.prog
            self.exit(2, f"{prog}: error: unrecognized arguments: {' '.join(extras)} (see {prog} --help)\n")
        return parsed


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="llmcore", description="Train, fine-tune and run Transformer LMs.",
                                     epilog=PLUGIN_EPILOG)
    parser.add_argument("--debug", action="store_true", help="show full tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for path in COMMANDS:
        importlib.import_module(path).register(sub)
    finish_help(parser)
    return parser


def all_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """``parser`` and every sub-command parser below it (``tokenizer train`` included), each once."""
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):  # aliases map to the same parser
                found += all_parsers(child)
    return found


class _WholeWords:
    """Formatter mixin: wrap option help at spaces only, so ``llama-tiny`` or ``--max-new-tokens`` stays whole."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


_FORMATTERS: dict[type, type] = {}


def finish_help(parser: argparse.ArgumentParser) -> None:
    """Plain-text help with defaults, and ``--debug`` on every sub-command (see the module docstring)."""
    for p in all_parsers(parser):
        base = p.formatter_class
        if not issubclass(base, _WholeWords):
            p.formatter_class = _FORMATTERS.setdefault(base, type(base.__name__, (_WholeWords, base), {}))
        p.description, p.epilog = plain_text(p.description), plain_text(p.epilog)
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for choice in action._choices_actions:  # the one-line summaries in the parent's command list
                    choice.help = plain_text(choice.help)
            elif action.help is not argparse.SUPPRESS:
                action.help = show_default(action, plain_text(action.help) or "") or None
        if p is not parser and "--debug" not in p._option_string_actions:
            # SUPPRESS: absent unless given here, so ``llmcore --debug train`` keeps the top-level value
            p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                           help="show full tracebacks instead of one-line errors")


def _stdout_closed() -> bool:
    """Whether standard output is a pipe whose reader has gone (poll reports an error on its write end)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):  # no poll, or stdout is no real file
        return False


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
        sys.stdout.flush()  # here, so a reader that closed the pipe early is handled below, not at exit
    except LLMCoreError as e:
        if args.debug:
            raise
        print(f"llmcore {args.command}: error: {cli_hint(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print(f"llmcore {args.command}: {interrupted_message(args, e)}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `llmcore models | head`: the reader left; stop quietly, as other tools do
        if args.debug or not _stdout_closed():
            raise  # a broken pipe of something else (a worker process) is a real error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush does not raise again
        return 141  # 128 + SIGPIPE, what a shell reports for a command killed by a closed pipe
    except OSError as e:  # a write the commands did not foresee refused by the system: one line, not a traceback
        if args.debug or e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC):
            raise
        where = f" ({e.filename})" if e.filename else ""
        print(f"llmcore {args.command}: error: {e.strerror or e}{where}; check that path's permissions and free "
              "space, and that its disk is not mounted read-only (or choose another path).", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
