"""``llmcore generate --model DIR --prompt TEXT``: continue a prompt with a saved model.

DIR is a model directory (llmcore or Hugging Face format) with its tokenizer in ``DIR/tokenizer`` (or DIR
itself). Decoding is greedy unless a sampling option (``--temperature``, ``--top-k``, ``--top-p``,
``--min-p``) or ``--sample`` is given; ``--num-beams N`` runs beam search. ``--stream`` prints text as it is
produced. Without ``--max-new-tokens`` the model fills its context, up to 100 new tokens.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import torch

from ..errors import GenerationError


def _load_tokenizer(directory: str) -> Any:
    """The tokenizer saved with the model (a seam the tests replace)."""
    from ..tokenizer import load_tokenizer

    return load_tokenizer(directory)


def _load_model(directory: str, device: str) -> torch.nn.Module:
    from ..models import TransformerLM

    return TransformerLM.from_pretrained(directory, device=device)


def options_from_args(args: argparse.Namespace, prompt_len: int, max_seq_len: int | None) -> dict[str, Any]:
    """GenerationConfig fields from the parsed command line."""
    sampling = {k: getattr(args, k) for k in ("temperature", "top_k", "top_p", "min_p") if getattr(args, k) is not None}
    opts: dict[str, Any] = dict(sampling)
    opts["do_sample"] = bool(sampling) or args.sample
    if args.max_new_tokens is not None:
        opts["max_new_tokens"] = args.max_new_tokens
    else:
        room = 100 if max_seq_len is None or args.sliding_window else max_seq_len - prompt_len
        if room < 1:
            raise GenerationError(f"The prompt ({prompt_len} tokens) already fills the model's context "
                                  f"(max_seq_len={max_seq_len}); shorten it or pass --sliding-window.")
        opts["max_new_tokens"] = min(100, room)
    for name in ("num_beams", "seed", "repetition_penalty", "no_repeat_ngram_size"):
        if getattr(args, name) is not None:
            opts[name] = getattr(args, name)
    if args.stop:
        opts["stop_strings"] = args.stop
    opts["sliding_window"] = args.sliding_window
    return opts


def run(args: argparse.Namespace) -> int:
    from .config import GenerationConfig
    from .decode import generate, stream

    tokenizer = _load_tokenizer(args.tokenizer or args.model)
    model = _load_model(args.model, args.device)
    ids = tokenizer.encode(args.prompt, add_bos=args.add_bos)
    input_ids = torch.tensor([ids], dtype=torch.long, device=args.device)
    max_seq_len = getattr(getattr(model, "config", None), "max_seq_len", None)
    config = GenerationConfig(**options_from_args(args, len(ids), max_seq_len))
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
    p = subparsers.add_parser("generate", help="continue a prompt with a saved model",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model directory (llmcore or Hugging Face format)")
    p.add_argument("--prompt", default="", help="text to continue (empty: start from the BOS token)")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the model directory)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="tokens to generate (default: up to 100)")
    p.add_argument("--sample", action="store_true", help="sample (temperature 1) instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=None, help="sampling temperature (0 = greedy)")
    p.add_argument("--top-k", type=int, default=None, help="sample from the k most likely tokens")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass in (0, 1]")
    p.add_argument("--min-p", type=float, default=None, help="drop tokens below min_p x the top probability")
    p.add_argument("--repetition-penalty", type=float, default=None, help="> 1 discourages repeats")
    p.add_argument("--no-repeat-ngram-size", type=int, default=None, help="never repeat an n-gram of this many tokens")
    p.add_argument("--num-beams", type=int, default=None, help="beam search with this many beams")
    p.add_argument("--seed", type=int, default=None, help="seed for reproducible sampling")
    p.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    p.add_argument("--add-bos", action="store_true", help="prepend the tokenizer's BOS token to the prompt")
    p.add_argument("--sliding-window", action="store_true",
                   help="allow generating past the model's context by keeping only the last max_seq_len tokens")
    p.add_argument("--stream", action="store_true", help="print text as it is produced")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1, mps")
    p.set_defaults(func=run)
