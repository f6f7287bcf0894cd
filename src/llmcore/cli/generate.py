"""``llmcore generate --model DIR --prompt TEXT``: continue a prompt with a saved model.

DIR is a model directory (llmcore or Hugging Face format, any registered architecture) with its tokenizer in
``DIR/tokenizer`` (or DIR itself). Decoding is greedy unless a sampling option (``--temperature``,
``--top-k``, ``--top-p``, ``--min-p``) or ``--sample`` is given; ``--num-beams N`` runs beam search.
``--stream`` prints text as it is produced. Every decoding flag is a GenerationConfig field with its default.
The default ``--max-new-tokens`` is capped to the room left in the model's context (unless
``--sliding-window``); a larger explicit value is an error that says how many tokens fit.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import GenerationError
from ..generation.config import GenerationConfig
from ..training.config import TrainConfig
from .common import add_dataclass_args, add_model_command, field_default, given, make_config

SAMPLING = ("temperature", "top_k", "top_p", "min_p")  # giving any of them means "sample"
DECODING = ["max_new_tokens", *SAMPLING, "repetition_penalty", "no_repeat_ngram_size", "num_beams", "seed",
            "sliding_window"]


def _load_tokenizer(directory: str) -> Any:
    """The tokenizer saved with the model (a seam the tests replace)."""
    from ..tokenizer import load_tokenizer

    return load_tokenizer(directory)


def options_from_args(args: argparse.Namespace, prompt_len: int, max_seq_len: int | None) -> dict[str, Any]:
    """GenerationConfig fields from the parsed command line."""
    opts = given(args, GenerationConfig, DECODING)
    opts["do_sample"] = any(k in opts for k in SAMPLING) or args.sample
    if "max_new_tokens" not in opts:  # the default, fitted to the context the prompt leaves
        default = field_default(GenerationConfig, "max_new_tokens")
        room = default if max_seq_len is None or opts.get("sliding_window") else max_seq_len - prompt_len
        if room < 1:
            raise GenerationError(f"The prompt ({prompt_len} tokens) already fills the model's context "
                                  f"(max_seq_len={max_seq_len}); shorten it or pass --sliding-window.")
        opts["max_new_tokens"] = min(default, room)
    if args.stop:
        opts["stop_strings"] = args.stop
    return opts


def run(args: argparse.Namespace) -> int:
    import torch

    from ..generation import generate, stream
    from .common import load_model_dir, resolve_device

    device = resolve_device(getattr(args, "device", field_default(TrainConfig, "device")))
    tokenizer = _load_tokenizer(args.tokenizer or args.model)
    model = load_model_dir(args.model, device=device)
    ids = tokenizer.encode(args.prompt, add_bos=args.add_bos)
    input_ids = torch.tensor([ids], dtype=torch.long, device=device)
    max_seq_len = getattr(getattr(model, "config", None), "max_seq_len", None)
    config = make_config(GenerationConfig, options_from_args(args, len(ids), max_seq_len))
    out = sys.stdout
    if args.stream:
        if config.num_beams > 1:
            raise GenerationError("--stream cannot be combined with --num-beams > 1; beam search picks the best "
                                  "hypothesis only at the end.")
        out.write(args.prompt)
        out.flush()
        for delta in stream(model, input_ids, config=config, tokenizer=tokenizer):
            out.write(delta)
            out.flush()
        out.write("\n")
    else:
        seq = generate(model, input_ids, config=config, tokenizer=tokenizer)
        new = seq[0, input_ids.shape[1]:].tolist()
        out.write(args.prompt + tokenizer.decode(new) + "\n")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_model_command(subparsers, "generate", help="continue a prompt with a saved model", description=__doc__)
    p.add_argument("--model", required=True, help="model directory (llmcore or Hugging Face format)")
    p.add_argument("--prompt", default="", help="text to continue (default: empty, start from the BOS token)")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the model directory)")
    p.add_argument("--sample", "--do-sample", dest="sample", action="store_true",
                   help="sample (temperature 1) instead of greedy decoding")
    add_dataclass_args(p, GenerationConfig, DECODING,
                       help={"seed": "seed of the sampling (default: a fresh random one)"})
    p.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    p.add_argument("--add-bos", action="store_true", help="prepend the tokenizer's BOS token to the prompt")
    p.add_argument("--stream", action="store_true", help="print text as it is produced")
    add_dataclass_args(p, TrainConfig, ["device"])
    p.set_defaults(func=run)
