"""``llmcore generate --model DIR --prompt TEXT``: continue a prompt with a saved model.

DIR is a model directory (llmcore or Hugging Face format, any registered architecture), or the name of a
bundled model (``llmcore models``: ``shakespeare``, ``zh-lm``), with its tokenizer in
``DIR/tokenizer`` (or DIR itself).

decoding:
  Greedy by default (the most likely token each step). --do-sample samples instead, shaped by --temperature,
  --top-k, --top-p and --min-p; those four have no effect without --do-sample (a warning says so), the same
  rule as GenerationConfig in Python. --num-beams N runs beam search. Against the loops greedy decoding falls
  into, add --repetition-penalty 1.2 or --no-repeat-ngram-size 3 (the latter suits word-level tokenizers,
  not a character model, whose text repeats letter trigrams all the time).

length:
  Past the model's context (prompt + --max-new-tokens > max_seq_len) only the last max_seq_len tokens are fed
  once the context is full (a sliding window, as nanoGPT crops; a one-line note on stderr says so).
  --no-sliding-window fails instead, before anything is printed; then the default --max-new-tokens is
  capped to the room the prompt leaves.

images:
  --image FILE conditions a multimodal model (PrefixFusionLM, CrossAttentionFusionLM; examples/multimodal_shapes.py
  trains both) on one image: .npy (uint8 (H, W, C)) always, PNG / JPEG with the vision extra
  (pip install 'llmcore[vision]', Pillow). It must have the size and channels the model's vision encoder takes;
  --resize-image resizes it instead (Pillow). --image on a text-only model is an error. A multimodal model
  without --image generates from the text alone (its language model; a note on stderr says so). The shapes
  models were trained on "<bos> question answer": pass --add-bos --prompt "what is in the image?".

--stop takes backslash escapes (\\n, \\t, \\\\, \\uXXXX), so --stop "\\n" stops at the end of a line.
--stream prints text as it is produced; errors are raised before the prompt is printed.
"""

from __future__ import annotations

import argparse
import re
import sys
import warnings
from typing import Any

from ..errors import GenerationError
from ..generation.config import GenerationConfig
from ..training.config import TrainConfig
from .common import (
    add_dataclass_args,
    add_model_command,
    add_quantize_arg,
    field_default,
    flag_name,
    given,
    make_config,
)

SAMPLING = ("temperature", "top_k", "top_p", "min_p")  # used only with --do-sample
DECODING = ["max_new_tokens", *SAMPLING, "repetition_penalty", "no_repeat_ngram_size", "num_beams", "seed"]
HELP = {
    "max_new_tokens": "tokens to generate; past the model's context the window slides (see 'length' above)",
    "temperature": "sampling temperature, with --do-sample (0 = greedy)",
    "top_k": "with --do-sample: sample from the k most likely tokens (default: off)",
    "top_p": "with --do-sample: nucleus sampling mass in (0, 1] (1.0 = off)",
    "min_p": "with --do-sample: drop tokens below min_p x the top probability (default: off)",
    "seed": "seed of the sampling (default: a fresh random one)",
}

_ESCAPE = re.compile(r"\\(u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|x[0-9a-fA-F]{2}|[\\nrt0'\"])")
_SIMPLE = {"\\": "\\", "n": "\n", "r": "\r", "t": "\t", "0": "\0", "'": "'", '"': '"'}


def unescape(text: str) -> str:
    """Interpret backslash escapes as Python string literals do: ``\\n \\t \\r \\0 \\\\ \\xHH \\uXXXX \\UXXXXXXXX``.

    Anything else after a backslash stays as typed (``\\d`` is two characters), and text without backslashes
    is returned unchanged (non-ASCII characters included), so a shell can pass a newline as ``"\\n"``.
    """
    def one(m: re.Match[str]) -> str:
        code = m.group(1)
        return _SIMPLE[code] if len(code) == 1 else chr(int(code[1:], 16))

    return _ESCAPE.sub(one, text)


def _load_tokenizer(directory: str) -> Any:
    """The tokenizer saved with the model (a seam the tests replace)."""
    from ..tokenizer import load_tokenizer

    return load_tokenizer(directory)


def options_from_args(args: argparse.Namespace, prompt_len: int, max_seq_len: int | None) -> dict[str, Any]:
    """GenerationConfig fields from the parsed command line (checked against the context before any output)."""
    opts = given(args, GenerationConfig, DECODING)
    opts["do_sample"] = args.sample
    opts["sliding_window"] = args.sliding_window
    if not args.sliding_window and max_seq_len is not None:
        room = max_seq_len - prompt_len
        if "max_new_tokens" not in opts:  # the default, fitted to the context the prompt leaves
            if room < 1:
                raise GenerationError(f"The prompt ({prompt_len} tokens) already fills the model's context "
                                      f"(max_seq_len={max_seq_len}); shorten it or drop --no-sliding-window.")
            opts["max_new_tokens"] = min(field_default(GenerationConfig, "max_new_tokens"), room)
        elif opts["max_new_tokens"] > room:
            raise GenerationError(f"The prompt ({prompt_len} tokens) + --max-new-tokens {opts['max_new_tokens']} "
                                  f"exceed the model's context (max_seq_len={max_seq_len}); pass --max-new-tokens "
                                  f"{max(room, 0)} or less, or drop --no-sliding-window to slide the window.")
    if args.stop:
        opts["stop_strings"] = [unescape(s) for s in args.stop]
    return opts


def notices(config: GenerationConfig, prompt_len: int, max_seq_len: int | None) -> list[str]:
    """One-line notes for stderr: ignored sampling flags, and a window that will slide."""
    out = []
    unused = config.unused_sampling_options()
    if unused:
        shown = ", ".join(f"{flag_name(n)} {getattr(config, n)}" for n in unused)
        out.append(f"warning: {shown} has no effect without --do-sample (decoding is greedy); add --do-sample "
                   "to sample")
    if config.sliding_window and max_seq_len is not None and prompt_len + config.max_new_tokens > max_seq_len:
        out.append(f"note: prompt ({prompt_len} tokens) + --max-new-tokens {config.max_new_tokens} exceed the "
                   f"model's context (max_seq_len={max_seq_len}); once it is full only the last {max_seq_len} "
                   "tokens are fed (--no-sliding-window fails instead)")
    return out


def image_inputs(args: argparse.Namespace, model: Any, device: Any) -> dict[str, Any]:
    """The decoding keywords of ``--image`` (``{}`` without it), after one-line checks naming the fix."""
    import torch

    from ..errors import ConfigError, DataError
    from ..multimodal import images_to_tensor, load_image

    fusion = callable(getattr(model, "decoding_inputs", None))
    if args.image is None:
        if fusion:
            print(f"llmcore generate: note: no --image: {type(model).__name__} generates from the text alone (its "
                  "language model); pass --image FILE to condition it on an image", file=sys.stderr)
        return {}
    if not fusion:
        raise ConfigError(f"--image needs a multimodal model (PrefixFusionLM or CrossAttentionFusionLM), but "
                          f"{args.model} holds a {type(model).__name__}, which reads text only; drop --image, or "
                          "pass a fusion model directory (examples/multimodal_shapes.py saves two).")
    shape = model.image_shape
    if shape is None:
        raise ConfigError(f"{args.model} reads precomputed features (its config.vision is empty), not images, so "
                          "--image cannot feed it; call model.generate(ids, features=...) from Python "
                          "(llmcore.multimodal.load_features).")
    channels, height, width = shape
    pixels = load_image(args.image, channels=channels)  # DataError: unreadable, wrong dtype or channel count
    if pixels.shape[:2] != (height, width):
        if not args.resize_image:
            raise DataError(f"{args.image} is {pixels.shape[0]}x{pixels.shape[1]} pixels, the model takes "
                            f"{height}x{width}; resize it, or pass --resize-image (bilinear, needs Pillow).")
        pixels = load_image(args.image, image_size=height, channels=channels, resize=True)
    images = images_to_tensor(pixels[None], image_size=height, channels=channels).to(device)
    with torch.no_grad():
        return model.decoding_inputs(images=images)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..generation import generate, stream
    from ..generation.config import check_decoding_memory
    from .common import load_model_dir, maybe_quantize, resolve_device

    device = resolve_device(getattr(args, "device", field_default(TrainConfig, "device")))
    tokenizer = _load_tokenizer(args.tokenizer or args.model)
    model = maybe_quantize(load_model_dir(args.model, device=device), args.quantize)
    extra = image_inputs(args, model, device)  # {} without --image; a prefix or cross-attention memory with it
    ids = tokenizer.encode(args.prompt, add_bos=args.add_bos)
    input_ids = torch.tensor([ids], dtype=torch.long, device=device)
    if not ids and "inputs_embeds" in extra:
        input_ids = None  # the image prefix alone is the prompt
    context = len(ids) + (extra["inputs_embeds"].shape[1] if "inputs_embeds" in extra else 0)  # positions used
    max_seq_len = getattr(getattr(model, "config", None), "max_seq_len", None)
    with warnings.catch_warnings():  # the Python UserWarning is replaced by the one-line notice below
        warnings.simplefilter("ignore", UserWarning)
        config = make_config(GenerationConfig, options_from_args(args, context, max_seq_len))
    check_decoding_memory(config, 1, context, getattr(model, "config", None), device)
    if args.stream and config.num_beams > 1:
        raise GenerationError("--stream cannot be combined with --num-beams > 1; beam search picks the best "
                              "hypothesis only at the end.")
    for line in notices(config, context, max_seq_len):
        print(f"llmcore generate: {line}", file=sys.stderr)
    out = sys.stdout
    if args.stream:
        deltas = stream(model, input_ids, config=config, tokenizer=tokenizer, **extra)
        # The first step validates the request and runs the prefill: only then is anything printed, so an
        # error never follows a half-written line.
        first = next(deltas, "")
        out.write(args.prompt + first)
        out.flush()
        for delta in deltas:
            out.write(delta)
            out.flush()
        out.write("\n")
    else:
        seq = generate(model, input_ids, config=config, tokenizer=tokenizer, **extra)
        new = seq[0, len(ids) if input_ids is not None else 0:].tolist()
        out.write(args.prompt + tokenizer.decode(new) + "\n")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_model_command(subparsers, "generate", help="continue a prompt with a saved model", description=__doc__)
    p.add_argument("--model", required=True, help="model directory (llmcore or Hugging Face format) or bundled model "
                   "name (llmcore models)")
    p.add_argument("--prompt", default="", help="text to continue (default: empty, start from the BOS token)")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the model directory)")
    p.add_argument("--do-sample", "--sample", dest="sample", action="store_true",
                   help="sample instead of greedy decoding (default: greedy); enables --temperature / --top-k / "
                        "--top-p / --min-p")
    add_dataclass_args(p, GenerationConfig, DECODING, help=HELP)
    p.add_argument("--no-sliding-window", dest="sliding_window", action="store_false", default=True,
                   help="fail (before printing anything) when prompt + --max-new-tokens exceed the model's "
                        "context, instead of sliding the window (default: slide)")
    p.add_argument("--sliding-window", dest="sliding_window", action="store_true",
                   help="slide the window past the model's context (the default)")
    p.add_argument("--stop", action="append", default=None,
                   help="stop once the generated text contains this string; backslash escapes such as \\n, "
                        "\\t, \\\\ and \\uXXXX are interpreted (repeatable)")
    p.add_argument("--add-bos", action="store_true", help="prepend the tokenizer's BOS token to the prompt")
    p.add_argument("--stream", action="store_true", help="print text as it is produced")
    add_quantize_arg(p)
    p.add_argument("--image", default=None, help="an image for a multimodal model: .npy (uint8 (H, W, C)), or PNG / "
                   "JPEG with the vision extra (see 'images' above)")
    p.add_argument("--resize-image", action="store_true",
                   help="resize --image to the size the model takes (bilinear, needs Pillow) instead of failing")
    add_dataclass_args(p, TrainConfig, ["device"])
    p.set_defaults(func=run)
