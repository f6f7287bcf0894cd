"""``llmcore translate --model DIR "Hello, how are you?"``: translate sentences with a saved model.

DIR holds a :class:`~llmcore.models.seq2seq.Seq2SeqTransformer` or a decoder-only
:class:`~llmcore.models.TransformerLM` fine-tuned on pairs (told apart by ``config.json``), with its tokenizer
in ``DIR/tokenizer``. Sentences come from the command line, from ``--input FILE`` (one per line) or, with
neither, from standard input; translations are printed one per line, in order, decoded in batches of
``--batch-size``. ``--num-beams N`` uses beam search. Refused with a one-line error (exit status 2): a model
whose tokenizer lacks the target-language tag, an empty input line, and (with ``--too-long error``) a
sentence longer than the model's source context; by default such a sentence is cut with a warning.

``llmcore eval --task translate --model DIR`` (registered with ``eval``, run by :func:`run_eval`) translates
the sources of a pair file, or of a shipped split, and prints corpus BLEU and chrF against the references.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import DataError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("translate", help="translate sentences with a trained model",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("text", nargs="*", help="sentences to translate (default: --input or stdin)")
    p.add_argument("--model", required=True, help="model directory (config.json, model.safetensors, tokenizer/)")
    p.add_argument("--input", help="file with one sentence per line ('-' = stdin)")
    p.add_argument("--num-beams", type=int, default=1, help="beam width; 1 = greedy (default)")
    p.add_argument("--no-repeat-ngram-size", type=int, default=0,
                   help="never repeat an n-gram of this many tokens in a translation (0 = off)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="output budget (default: 2 x source + 10)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--src-tag", default=None, help="source-language tag (default: from the model, else <2en>)")
    p.add_argument("--tgt-tag", default=None, help="target-language tag (default: from the model, else <2zh>)")
    p.add_argument("--too-long", choices=("truncate", "error"), default="truncate",
                   help="sentences beyond the source context: cut with a warning (default) or fail")
    p.add_argument("--device", default="cpu")
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
            text = path.read_text(encoding="utf-8")
        else:
            text = sys.stdin.read()
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


def check_decoding_args(args: argparse.Namespace) -> None:
    """Decoding options of ``translate`` and ``eval --task translate``, checked before any model loads."""
    if args.num_beams < 1 or args.batch_size < 1:
        raise DataError("--num-beams and --batch-size must be >= 1.")
    if args.no_repeat_ngram_size < 0:
        raise DataError(f"--no-repeat-ngram-size {args.no_repeat_ngram_size} must be >= 0 (0 turns it off).")


def run(args: argparse.Namespace) -> int:
    from .translator import Translator  # torch and the models load only when the command runs

    check_decoding_args(args)
    lines = read_inputs(args)
    translator = Translator.from_pretrained(args.model, device=args.device, src_lang_tag=args.src_tag,
                                            tgt_lang_tag=args.tgt_tag)
    outs = translator.translate(lines, num_beams=args.num_beams, max_new_tokens=args.max_new_tokens,
                                batch_size=args.batch_size, too_long=args.too_long,
                                no_repeat_ngram_size=args.no_repeat_ngram_size)
    sys.stdout.write("".join(o + "\n" for o in outs))
    return 0


def run_eval(args: argparse.Namespace) -> int:
    """``llmcore eval --task translate``: BLEU / chrF of DIR on ``--data`` pairs or the shipped ``--split``."""
    import json

    from ..finetune.pairs import read_pairs
    from ..training.distributed import DistEnv, resolve_device
    from .data import load_parallel
    from .metrics import DictionaryBaseline, copy_source, evaluate_translations
    from .translator import Translator

    check_decoding_args(args)
    if args.data and len(args.data) > 1:
        raise DataError(f"--task translate takes one pair file, got {len(args.data)}; concatenate them first.")
    if args.data:
        pairs, where = read_pairs(args.data[0], args.src_col, args.tgt_col), args.data[0]
    else:
        pairs, where = [(p.en, p.zh) for p in load_parallel(args.split)], f"shipped en-zh {args.split} split"
    if args.max_batches:
        pairs = pairs[:args.max_batches * args.batch_size]
    sources, refs = [s for s, _ in pairs], [t for _, t in pairs]
    translator = Translator.from_pretrained(args.model, device=resolve_device(args.device, DistEnv()))
    hyps = translator.translate(sources, num_beams=args.num_beams, batch_size=args.batch_size,
                                no_repeat_ngram_size=args.no_repeat_ngram_size)
    if args.hypotheses:
        Path(args.hypotheses).write_text("".join(h + "\n" for h in hyps), encoding="utf-8")
    systems = {str(args.model): hyps}
    if args.baselines:
        systems.update({"copy source": copy_source(sources), "CC-CEDICT word lookup": DictionaryBaseline()(sources)})
    print(f"{where}: {len(pairs)} pairs, sacrebleu tokenize={args.bleu_tokenize!r}, beams={args.num_beams}, "
          f"no-repeat n-gram={args.no_repeat_ngram_size or 'off'}")
    for name, out in systems.items():
        m = evaluate_translations(out, refs, tokenize=args.bleu_tokenize)
        print(json.dumps({"system": name, "bleu": round(m["bleu"], 2), "chrf": round(m["chrf"], 2)},
                         ensure_ascii=False))
    return 0
