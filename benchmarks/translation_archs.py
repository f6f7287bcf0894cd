"""Training-step cost of the three translation architectures on the same batches (issue 14's comparison).

    python benchmarks/translation_archs.py --tokenizer runs/bundled/en-zh/tokenizer [--repeats 6]
    python benchmarks/translation_archs.py --vocab-size 3000 --repeats 2       # trains a small tokenizer first

Builds the encoder-decoder, the decoder-only Transformer and the LSTM exactly as ``scripts/train_bundled.py
en-zh --arch ... --set d_model=128 --set n_layers=2`` does (the LSTM 256 wide), samples the same batches of 48
training pairs for each, and times forward + backward + AdamW step on one thread, alternating the models so
that a change in machine load hits all three alike. Prints milliseconds per step and the ratio to the
encoder-decoder; the first repeat is a warm-up and is not counted.
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
from pathlib import Path

import torch

from llmcore.tokenizer import load_tokenizer
from llmcore.training.loss import default_loss

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train_bundled.py"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokenizer", help="the en-zh tokenizer directory (train_bundled.py's OUT/tokenizer); "
                    "default: train one of --vocab-size on the training pairs")
    ap.add_argument("--vocab-size", type=int, default=6000)
    ap.add_argument("--repeats", type=int, default=6)
    args = ap.parse_args()
    torch.set_num_threads(1)
    spec = importlib.util.spec_from_file_location("train_bundled", SCRIPT)
    tb = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tb)
    recipe = {**tb.RECIPES["en-zh"], "d_model": 128, "n_layers": 2, "vocab_size": args.vocab_size}
    if args.tokenizer:
        tok = load_tokenizer(args.tokenizer)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            tok = tb.tokenizer("en-zh", recipe, Path(tmp))
    models = {}
    for arch, r in (("seq2seq", recipe), ("decoder", recipe), ("lstm", {**recipe, "d_model": 256})):
        model, train, _ = tb.build("en-zh", r, arch, tok, None)
        models[arch] = (model, train, torch.optim.AdamW(model.parameters(), 1e-3))
    times: dict[str, list[float]] = {a: [] for a in models}
    for rep in range(args.repeats):
        for arch, (model, data, opt) in models.items():
            batch = data.sample_batch(48, torch.Generator().manual_seed(rep))
            start = time.perf_counter()
            default_loss(model(**{k: v for k, v in batch.items() if k != "labels"}), batch).backward()
            opt.step()
            opt.zero_grad()
            if rep:
                times[arch].append(time.perf_counter() - start)
    base = sum(times["seq2seq"]) / len(times["seq2seq"])
    for arch, ts in times.items():
        mean = sum(ts) / len(ts)
        print(f"{arch:8s} {models[arch][0].num_parameters() / 1e6:5.2f} M parameters  {mean * 1000:6.0f} ms/step  "
              f"{mean / base:4.2f}x")


if __name__ == "__main__":
    main()
