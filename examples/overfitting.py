"""The overfitting toolkit, measured: dropout, weight decay, early stopping and subword-regularisation.

A small Transformer (4 layers, 128 wide, 4 heads, context 64, 0.8 M parameters) trained for a fixed budget
(600 steps of 8 x 64 tokens, constant lr 2e-3 after 30 warmup steps, evaluated every 25 steps) on a
deliberately small corpus (the first 24 KB of the bundled Shakespeare: 18 KB for training, 8,437 tokens of a
384-piece unigram sentencepiece vocabulary, and the last 6 KB, 3,001 tokens, for validation) memorises it: the training loss keeps falling while the
validation loss turns back up. Each remedy is one run with everything else equal (same tokenizer, initial
weights, data order, step budget):

* ``baseline``      no dropout, no weight decay, no early stopping, deterministic tokenization;
* ``dropout 0.2``   ``ModelConfig.dropout = 0.2`` (attention, residual and embedding dropout);
* ``weight decay``  ``TrainConfig.weight_decay = 0.1`` (AdamW, on weight matrices only);
* ``early stop``    ``TrainConfig.patience = 3`` (stop after 3 evaluations without a new best; the best model
                    is what the run directory keeps);
* ``subword aug``   :class:`~llmcore.data.OnTheFlyTextDataset` re-tokenizes every batch with sentencepiece
                    sampling (unigram, alpha 0.1, nbest -1), so the model never sees the same token sequence
                    twice (Kudo 2018, arXiv:1804.10959);
* ``all``           dropout + weight decay + augmentation + early stopping together.

"train loss" is measured at the end on the *deterministic* encoding of the training text for every run (the
augmented run trains on sampled segmentations, whose loss is not comparable), so the gap val - train is
comparable across rows. Run it::

    python examples/overfitting.py                       # 7 min on a busy 2-core x86 CPU (4 min CPU); a Markdown table
    python examples/overfitting.py --plot docs/images/overfitting.png
    python examples/overfitting.py --quick               # smoke test, < 30 s
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from llmcore import ModelConfig, TrainConfig, Trainer, TransformerLM
from llmcore.data import OnTheFlyTextDataset, TokenDataset, read_text
from llmcore.tokenizer import SentencePieceTokenizer

# table row -> (run directory, model overrides, train overrides, augment with subword sampling)
REMEDIES = {
    "baseline": ("baseline", {}, {}, False),
    "dropout 0.2": ("dropout", {"dropout": 0.2}, {}, False),
    "weight decay 0.1": ("weight_decay", {}, {"weight_decay": 0.1}, False),
    "early stop (patience 3)": ("early_stop", {}, {"patience": 3}, False),
    "subword aug (α 0.1)": ("subword_aug", {}, {}, True),
    "all four": ("all_four", {"dropout": 0.2}, {"weight_decay": 0.1, "patience": 3}, True),
}


def settings(quick: bool) -> dict:
    if quick:
        return dict(kb=16, val_kb=4, vocab=256, steps=20, eval_interval=10, batch=8,
                    model=dict(max_seq_len=32, d_model=32, n_layers=1, n_heads=2))
    return dict(kb=24, val_kb=6, vocab=384, steps=600, eval_interval=25, batch=8,
                model=dict(max_seq_len=64, d_model=128, n_layers=4, n_heads=4))


def run(name: str, cfg: dict, tok: SentencePieceTokenizer, train_text: str, train_ids: np.ndarray,
        val_ids: np.ndarray, out: Path, seed: int) -> dict:
    slug, model_over, train_over, augment = REMEDIES[name]
    block = cfg["model"]["max_seq_len"]
    model_cfg = ModelConfig.from_preset("char-small", vocab_size=tok.vocab_size, **{**cfg["model"], **model_over})
    torch.manual_seed(seed)  # identical initial weights for every remedy
    model = TransformerLM(model_cfg)
    run_dir = out / slug
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run each time (the Trainer refuses old checkpoints)
    train_cfg = TrainConfig(**{
        "max_steps": cfg["steps"], "batch_size": cfg["batch"], "lr": 2e-3, "schedule": "constant",
        "warmup_steps": cfg["steps"] // 20, "weight_decay": 0.0, "eval_interval": cfg["eval_interval"],
        "eval_batches": 50, "seed": seed, "device": "cpu", "out_dir": str(run_dir), "num_samples": 0,
        "progress": False, **train_over})
    if augment:
        tok.alpha, tok.nbest_size = 0.1, -1
        train_data = OnTheFlyTextDataset(train_text, tok, block, sample=True)
    else:
        train_data = TokenDataset(train_ids, block)
    trainer = Trainer(model, train_cfg, train_data, TokenDataset(val_ids, block))
    t0 = time.perf_counter()
    summary = trainer.fit()
    train_loss = trainer.evaluate(TokenDataset(train_ids, block), max_batches=200)["val_loss"]
    return {"name": name, "steps": summary["steps"], "stopped_early": summary["stopped_early"],
            "train": train_loss, "val": summary["final_val_loss"], "best": summary["best_val_loss"],
            "best_step": summary["best_step"], "seconds": time.perf_counter() - t0, "dir": run_dir}


def table(rows: list[dict]) -> str:
    lines = ["| run | steps | final train loss | final val loss | best val loss (step) | gap val − train |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        steps = f"{r['steps']} (stopped early)" if r["stopped_early"] else str(r["steps"])
        lines.append(f"| {r['name']} | {steps} | {r['train']:.3f} | {r['val']:.3f} | "
                     f"{r['best']:.3f} ({r['best_step']}) | {r['val'] - r['train']:+.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (< 30 s)")
    parser.add_argument("--out", default="runs/overfitting", help="parent of the run directories")
    parser.add_argument("--only", nargs="+", choices=list(REMEDIES), help="run only these rows")
    parser.add_argument("--plot", metavar="PNG", help="also plot the validation curves of all runs")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: tiny matmuls gain nothing from more, and lose on a busy CPU)")
    args = parser.parse_args()
    cfg = settings(args.quick)
    torch.set_num_threads(args.threads)

    text = read_text()[: cfg["kb"] * 1024]  # the bundled Shakespeare, cut down to a small corpus on purpose
    cut = text.rindex("\n", 0, len(text) - cfg["val_kb"] * 1024) + 1  # the last val_kb KB, from a line start
    train_text, val_text = text[:cut], text[cut:]
    tok = SentencePieceTokenizer.train([train_text], vocab_size=cfg["vocab"], model_type="unigram",
                                       byte_fallback=False)
    train_ids = np.asarray(tok.encode(train_text, sample=False), dtype=np.int64)
    val_ids = np.asarray(tok.encode(val_text, sample=False), dtype=np.int64)
    print(f"corpus: {len(text):,} characters -> {len(train_ids):,} train / {len(val_ids):,} val tokens "
          f"(unigram vocab {tok.vocab_size}); {cfg['steps']} steps of {cfg['batch']}x{cfg['model']['max_seq_len']}"
          f" tokens = {cfg['steps'] * cfg['batch'] * cfg['model']['max_seq_len'] / len(train_ids):.0f} epochs")

    rows = []
    for name in args.only or REMEDIES:
        rows.append(run(name, cfg, tok, train_text, train_ids, val_ids, Path(args.out), args.seed))
        r = rows[-1]
        print(f"{name}: train {r['train']:.3f}, val {r['val']:.3f}, best {r['best']:.3f} at step {r['best_step']}"
              f" ({r['steps']} steps, {r['seconds']:.0f} s)", flush=True)
    print()
    print(table(rows))
    if args.plot:
        from llmcore.plot import plot_runs

        print(f"\nwrote {plot_runs([r['dir'] for r in rows], args.plot)}")


if __name__ == "__main__":
    main()
