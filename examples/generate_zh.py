"""A small Chinese language model: train on the Chinese Union Version (+ HSK sentences), continue "我今天去了".

Characters are the tokens (:class:`CharTokenizer`): Chinese writes no spaces and a character carries most of
a word's meaning, so a character model is the simplest sound choice (about 4,500 distinct characters here).
The text is the whole 1919 Chinese Union Version Bible in Simplified characters (public domain, ~1.05 M
characters) plus the Chinese side of the HSK training sentences for some modern everyday language
(CC-BY-SA-4.0, "hsk-sentences-audio contributors"). Expect fluent-looking, biblical-style continuations.

    python examples/generate_zh.py --minutes 5          # the reported run
    python examples/generate_zh.py --quick              # smoke test, under a minute
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from llmcore import ModelConfig, TransformerLM
from llmcore.data import TokenDataset, prepare
from llmcore.tokenizer import CharTokenizer
from llmcore.training import TrainConfig, Trainer
from llmcore.translation import load_cuv_text, load_parallel

sys.path.insert(0, str(Path(__file__).parent))
from translate_en_zh import TimeBudget  # noqa: E402  (the wall-clock LR schedule shared by the examples)

PROMPT = "我今天去了"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--block-size", type=int, default=64)
    ap.add_argument("--prompt", default=PROMPT)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="runs/generate_zh")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    # HSK first: prepare() holds out the END of the text for validation, which is then the last 5% of the Bible
    # (Revelation), not the differently styled HSK sentences.
    text = "\n".join(p.zh for p in load_parallel("train", sources=("hsk",))) + "\n" + load_cuv_text()
    if args.quick:
        text, args.minutes, args.block_size = text[:100_000] + PROMPT, 0.3, 64
    tok = CharTokenizer.from_text(text + args.prompt)
    prepare(text, tok, Path(args.out) / "data", val_fraction=0.05)
    train = TokenDataset(Path(args.out) / "data", args.block_size, split="train")
    val = TokenDataset(Path(args.out) / "data", args.block_size, split="val")
    print(f"{len(text):,} characters, {tok.vocab_size} distinct tokens (characters + specials)")

    # The "small" preset (RoPE, RMSNorm, SwiGLU, tied head) narrowed to 128 so that a few minutes on a shared
    # CPU still give a few hundred steps; use d_model=256 (the preset) when there is time.
    cfg = ModelConfig.from_preset("small", vocab_size=tok.vocab_size, max_seq_len=args.block_size, d_model=128)
    if args.quick:
        cfg = cfg.replace(d_model=64, n_layers=2)
    model = TransformerLM(cfg)
    print(f"TransformerLM ({cfg.n_layers} layers, d_model {cfg.d_model}): {model.num_parameters() / 1e6:.1f} M "
          f"parameters, {args.minutes} min of training")
    budget = TimeBudget(args.minutes * 60, warmup_steps=20 if args.quick else 100)
    tcfg = TrainConfig(max_steps=10**7, batch_size=32, lr=2e-3, min_lr=2e-4, schedule=budget.schedule,
                       eval_interval=250, eval_batches=10 if args.quick else 40, progress=False, num_samples=0,
                       device="cpu")
    t0 = time.perf_counter()
    summary = Trainer(model, tcfg, train, val_data=val, callbacks=[budget]).fit()
    print(f"trained {summary['steps']} steps in {(time.perf_counter() - t0) / 60:.1f} min: "
          f"val loss {summary['final_val_loss']:.3f} (perplexity {2.718281828 ** summary['final_val_loss']:.1f} "
          "per character)")
    model.save_pretrained(Path(args.out) / "model", tokenizer=tok)

    prompt = torch.tensor([tok.encode(args.prompt)])
    n = min(60, args.block_size - prompt.shape[1])
    greedy = model.generate(prompt, max_new_tokens=n, repetition_penalty=1.2)
    print("\n(verse breaks shown as ' / ')")
    print(f"greedy (repetition_penalty 1.2):\n  {tok.decode(greedy[0]).replace(chr(10), ' / ')}")
    print("sampled (temperature 0.8, top_k 50):")
    for seed in range(3):
        out = model.generate(prompt, max_new_tokens=n, do_sample=True, temperature=0.8, top_k=50, seed=seed)
        print(f"  {tok.decode(out[0]).replace(chr(10), ' / ')}")


if __name__ == "__main__":
    main()
