"""``llmcore translate [--model DIR|NAME] "Hello, how are you?"``: translate sentences with a saved model.

Without ``--model`` the bundled English→Chinese model ``en-zh`` translates (``llmcore models``). Decoding is
what the examples use unless told otherwise: beam search with 4 beams and no repeated token trigram
(``--num-beams 1 --no-repeat-ngram-size 0`` for plain greedy decoding). DIR holds a :class:`~llmcore.models.seq2seq.Seq2SeqTransformer` or a decoder-only
:class:`~llmcore.models.TransformerLM` fine-tuned on pairs (told apart by ``config.json``), with its tokenizer
in ``DIR/tokenizer``. Sentences come from the command line, from ``--input FILE`` (one per line) or, with
neither, from standard input; translations are printed one per line, in order, decoded in batches of
``--batch-size``. ``--num-beams N`` uses beam search. Refused with a one-line error (exit status 2): a model
whose tokenizer lacks the target-language tag, an empty input line, and (with ``--too-long error``) a
sentence longer than the model's source context; by default such a sentence is cut with a warning.

``llmcore eval --task translate --model DIR`` (in :mod:`llmcore.cli.eval`) scores a translator with BLEU / chrF.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import ConfigError, DataError
from ..generation.config import MAX_NEW_TOKENS_LIMIT, GenerationConfig, check_decoding_memory
from ..training.config import TrainConfig
from .common import (
    add_dataclass_args,
    add_model_command,
    add_quantize_arg,
    decode_utf8,
    given,
    make_config,
    read_stdin_text,
)

DECODING = ["num_beams", "no_repeat_ngram_size"]  # GenerationConfig fields the translator takes
DEVICE = ["batch_size", "device"]  # TrainConfig fields
# The decoding the translation examples and benchmarks use (the trigram block was chosen on the validation split).
TRANSLATE_DEFAULTS = {"num_beams": 4, "no_repeat_ngram_size": 3}
DEFAULT_MODEL = "en-zh"  # the bundled translator


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_model_command(subparsers, "translate", help="translate sentences with a trained model",
                          description=__doc__.split("\n\n")[0])
    p.add_argument("text", nargs="*", help="sentences to translate (default: --input or stdin)")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="model directory (config.json, model.safetensors, tokenizer/) or bundled model name "
                        f"(default: {DEFAULT_MODEL})")
    p.add_argument("--input", help="file with one sentence per line ('-' = stdin)")
    add_dataclass_args(p, GenerationConfig, DECODING, defaults=TRANSLATE_DEFAULTS)
    # None is the translator's own budget, relative to each source: 2 x its length + 10 tokens.
    p.add_argument("--max-new-tokens", type=int, default=None, metavar="N",
                   help="output budget per sentence (default: 2 x source + 10)")
    add_dataclass_args(p, TrainConfig, DEVICE)
    p.add_argument("--src-tag", default=None, help="source-language tag (default: from the model, else <2en>)")
    p.add_argument("--tgt-tag", default=None, help="target-language tag (default: from the model, else <2zh>)")
    add_quantize_arg(p)
    p.add_argument("--too-long", choices=("truncate", "error"), default="truncate",
                   help="sentences beyond the source context: cut with a warning (default) or fail")
    p.set_defaults(func=run)


def read_inputs(args: argparse.Namespace) -> list[str]:
    """Sentences from the command line, ``--input`` or stdin; empty lines raise :class:`DataError`."""
    if args.text and args.input:
        raise DataError("Give sentences either as arguments or with --input, not both.")
    if args.text:
        lines, where = list(args.text), "argument"
    else:
        if args.input and args.input != "-":
            path = Path(args.input)
            if not path.is_file():
                raise DataError(f"--input {path} does not exist.")
            text = decode_utf8(path.read_bytes(), f"--input {path}")
        else:
            text = read_stdin_text()
        lines, where = text.split("\n"), "line"
        if lines and lines[-1] == "":
            lines.pop()  # the final newline ends the last line; it does not start an empty one
    if not lines:
        raise DataError("Nothing to translate: pass sentences, --input FILE, or text on stdin.")
    empty = [i + 1 for i, s in enumerate(lines) if not s.strip()]
    if empty:
        raise DataError(f"Input {where} {empty[0]} is empty ({len(empty)} empty in all); give one non-empty "
                        "sentence per line.")
    return lines


def run(args: argparse.Namespace) -> int:
    from ..translation.translator import Translator  # torch and the models load only when the command runs
    from .common import maybe_quantize, resolve_device

    decoding = make_config(GenerationConfig, given(args, GenerationConfig, DECODING, TRANSLATE_DEFAULTS))  # checked first
    train = make_config(TrainConfig, given(args, TrainConfig, DEVICE))
    if args.max_new_tokens is not None and not 1 <= args.max_new_tokens <= MAX_NEW_TOKENS_LIMIT:
        raise ConfigError(f"--max-new-tokens {args.max_new_tokens} is invalid: it must be in [1, "
                          f"{MAX_NEW_TOKENS_LIMIT:,}] (omit it for the default budget, 2 x source + 10 tokens).")
    lines = read_inputs(args)
    if args.model == DEFAULT_MODEL:
        from ..bundled import resolve_model_dir

        if not resolve_model_dir(args.model).is_dir():
            raise ConfigError(f"This installation has no bundled {DEFAULT_MODEL} translator (llmcore models lists "
                              "what it has); pass --model DIR, a translator you trained (docs/guides/translate.md).")
    translator = Translator.from_pretrained(args.model, device=resolve_device(train.device),
                                            src_lang_tag=args.src_tag, tgt_lang_tag=args.tgt_tag)
    maybe_quantize(translator.model, args.quantize)
    # Sources and outputs both fit the model's context: a bound on the tokens of every row.
    check_decoding_memory(decoding.replace(max_new_tokens=0), min(train.batch_size, len(lines)), translator.max_len,
                          translator.model.config, translator.device)
    outs = translator.translate(lines, num_beams=decoding.num_beams, max_new_tokens=args.max_new_tokens,
                                batch_size=train.batch_size, too_long=args.too_long,
                                no_repeat_ngram_size=decoding.no_repeat_ngram_size)
    sys.stdout.write("".join(o + "\n" for o in outs))
    return 0
