"""``llmcore tokenizer train|encode``: train a sentencepiece tokenizer on text files, or encode stdin.

``train`` holds out the last 1% of lines (``--held-out``) and reports characters per token on them, a
quick check that the vocabulary fits the text. Progress and the summary go to stdout; errors reach the
``llmcore`` wrapper as :class:`TokenizerError` (one line on stderr, exit status 2).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..errors import TokenizerError
from ..io import writable_dir
from .common import read_stdin_text

_ESCAPES = str.maketrans({"\n": "\\n", "\t": "\\t", "\r": "\\r"})  # keep one output line per input line


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``tokenizer`` with its ``train`` and ``encode`` actions to the ``llmcore`` parser."""
    parser = subparsers.add_parser("tokenizer", help="train a tokenizer, or encode text with one")
    actions = parser.add_subparsers(dest="tokenizer_action", metavar="ACTION")
    parser.set_defaults(func=lambda args: _usage(parser))

    train = actions.add_parser("train", help="train a sentencepiece tokenizer on UTF-8 text files")
    train.add_argument(
        "--input", nargs="+", required=True, type=Path, metavar="FILE", help="UTF-8 text files"
    )
    train.add_argument("--vocab-size", type=int, required=True, help="number of ids, specials included")
    train.add_argument("--model-type", choices=("bpe", "unigram"), default="bpe")
    train.add_argument("--out", type=Path, required=True, metavar="DIR", help="directory to save it in")
    train.add_argument(
        "--character-coverage", type=float, default=None, help="default: 1.0, or 0.9995 for CJK-heavy text"
    )
    train.add_argument(
        "--user-defined-symbols",
        nargs="*",
        default=[],
        metavar="SYM",
        help="pieces kept whole and matched in text, e.g. language tags <2zh>",
    )
    train.add_argument(
        "--input-sentence-size",
        type=int,
        default=2_000_000,
        help="train on at most this many randomly sampled lines (0 = all)",
    )
    train.add_argument(
        "--held-out",
        type=float,
        default=0.01,
        help="fraction of lines, taken from the end, kept out of training for the summary",
    )
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--verbose", action="store_true", help="show sentencepiece's training log")
    train.set_defaults(func=run_train)

    encode = actions.add_parser("encode", help="encode text from stdin (one output line per input line)")
    encode.add_argument(
        "--tokenizer",
        type=Path,
        required=True,
        metavar="DIR",
        help="a saved tokenizer, a run directory or a .model file",
    )
    encode.add_argument("--ids", action="store_true", help="print ids instead of token pieces")
    encode.add_argument("--text", default=None, help="encode this text instead of reading stdin")
    encode.set_defaults(func=run_encode)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _count_lines(paths: list[Path]) -> int:
    """Line count of all files (a trailing line without newline counts), read in binary chunks: fast."""
    total = 0
    for path in paths:
        last = b"\n"
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                total += chunk.count(b"\n")
                last = chunk[-1:]
        total += last != b"\n"
    return total


def run_train(args: argparse.Namespace) -> int:
    from ..tokenizer.corpus import TrainingCorpus
    from ..tokenizer.spm import SentencePieceTokenizer

    if not 0.0 <= args.held_out < 1.0:
        raise TokenizerError(f"--held-out {args.held_out} must be in [0, 1)")
    corpus = TrainingCorpus(list(args.input))  # checks that the files exist
    writable_dir(args.out, "--out", TokenizerError)  # read-only: refused before training, not after
    size_mb = sum(p.stat().st_size for p in args.input) / 1e6
    print(f"reading {len(args.input)} file(s), {size_mb:.1f} MB ...", flush=True)
    n_lines = _count_lines(corpus.files)
    n_held = round(n_lines * args.held_out) if n_lines >= 2 else 0
    if args.held_out > 0 and n_lines >= 2:
        n_held = max(n_held, 1)
    cut = n_lines - n_held
    held: list[str] = []

    def training_lines():  # streams the files once; the held-out tail is kept aside, not trained on
        for i, line in enumerate(corpus.lines_with_empty()):
            if i < cut:
                yield line
            elif line:
                held.append(line)

    print(
        f"training {args.model_type} tokenizer, vocab {args.vocab_size}, on {cut} lines "
        f"({n_held} held out) ...",
        flush=True,
    )
    start = time.perf_counter()
    tok = SentencePieceTokenizer.train(
        training_lines(),
        args.vocab_size,
        model_type=args.model_type,
        character_coverage=args.character_coverage,
        user_defined_symbols=args.user_defined_symbols,
        input_sentence_size=args.input_sentence_size,
        seed=args.seed,
        verbose=args.verbose,
    )
    seconds = time.perf_counter() - start
    tok.save(args.out)
    print(f"trained in {seconds:.1f} s; saved to {args.out}")
    print(f"  vocab size:          {tok.vocab_size}")
    print(f"  character coverage:  {tok.training.get('character_coverage')}")
    print(f"  training lines:      {tok.training.get('sentences')}")
    if held:
        ids = tok.encode(held)
        n_tok = sum(map(len, ids))
        n_chars = sum(map(len, held))
        n_bytes = sum(len(s.encode("utf-8")) for s in held)
        byte_ids = sum(1 for row in ids for i in row if tok.sp.is_byte(i))
        print(f"  held-out lines:      {len(held)}")
        print(
            f"  chars per token:     {n_chars / max(n_tok, 1):.2f}  (bytes per token {n_bytes / max(n_tok, 1):.2f})"
        )
        print(f"  byte-fallback share: {byte_ids / max(n_tok, 1):.2%} of held-out tokens")
    else:
        print("  held-out lines:      0 (no chars-per-token estimate)")
    return 0


def run_encode(args: argparse.Namespace) -> int:
    from ..tokenizer import load_tokenizer

    tok = load_tokenizer(args.tokenizer)
    text = args.text if args.text is not None else read_stdin_text()
    lines = text.split("\n")
    if len(lines) > 1 and lines[-1] == "":  # the final newline ends the last line, it is not a new one
        lines.pop()
    out = sys.stdout
    for ids in tok.encode(lines):
        if args.ids:
            out.write(" ".join(map(str, ids)) + "\n")
        else:
            out.write(" ".join(tok.id_to_token(i).translate(_ESCAPES) for i in ids) + "\n")
    return 0
