"""Train the models bundled with llmcore (``llmcore models``), one fixed recipe each, resumable.

    python scripts/train_bundled.py en-zh --out runs/bundled/en-zh            # English→Chinese translator
    python scripts/train_bundled.py zh-lm --out runs/bundled/zh-lm            # everyday Chinese LM
    python scripts/train_bundled.py en-zh --out runs/bundled/en-zh --resume   # continue after a kill
    python scripts/eval_bundled.py en-zh runs/bundled/en-zh                   # test split, baselines
    python scripts/export_bundled.py en-zh runs/bundled/en-zh --trained "..." # into the package, fp16

A maintainer's script, not part of the installed library. Every recipe trains for a fixed number of optimizer
steps (never a wall-clock budget, so a rerun gives the same model), on one thread by default, with the
Trainer's atomic checkpoints under ``OUT/run`` so ``--resume`` continues a killed run exactly. The trained
model is written to ``OUT/model`` (``save_pretrained`` with its tokenizer) and its validation figures to
``OUT/result.json``. The data is what ships in the package (the English–Chinese pairs), training split only.

The en-zh recipe is memory-augmented (:mod:`llmcore.translation.fuzzy`, "neural fuzzy repair"): every source
is ``"{English} <fmK> {Chinese of the nearest other training sentence}"``, so the model learns when to copy the
memory's answer, when to edit it and when to ignore it; ``--set memory=0`` trains on the plain sentences.

``--arch``, ``--steps`` and ``--set KEY=VALUE`` (a recipe value, e.g. ``--set d_model=128``) exist for the
architecture comparison in docs/benchmarks.md (encoder-decoder vs decoder-only vs LSTM on the same tokens); the
bundled models use the defaults.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llmcore import ModelConfig, TransformerLM
from llmcore.data import TokenDataset
from llmcore.finetune import PairDataset
from llmcore.models.seq2seq import Seq2SeqConfig, Seq2SeqTransformer
from llmcore.tokenizer import SentencePieceTokenizer, load_tokenizer
from llmcore.training import TrainConfig, Trainer
from llmcore.translation import Seq2SeqPairs, load_parallel, load_zh_text
from llmcore.translation.fuzzy import FUZZY_TAGS, SHIPPED_MEMORY, augment_sources, shipped_memory

TAGS = {"src_lang_tag": "<2en>", "tgt_lang_tag": "<2zh>", "template": "{src}"}
MODERN = dict(pos_encoding="rope", norm="rmsnorm", activation="swiglu", bias=False, tie_embeddings=True)

# One recipe per bundled model. Shapes keep each model under 15 MB in fp16.
RECIPES: dict[str, dict[str, Any]] = {
    # memory=1: the encoder also reads the nearest training pair's Chinese (llmcore.translation.fuzzy), so
    # sources are longer (src_len) than targets (max_len).
    "en-zh": dict(vocab_size=6000, d_model=256, n_layers=3, n_heads=4, dropout=0.1, steps=2000, batch=48,
                  lr=1e-3, warmup=200, label_smoothing=0.1, max_len=96, memory=1, src_len=160),
    "zh-lm": dict(vocab_size=4000, d_model=256, n_layers=4, n_heads=4, dropout=0.1, steps=3000, batch=32,
                  lr=2e-3, warmup=100, block=128),
}
# The third bundled model, shakespeare, is a plain `llmcore train` run; its command is in models.json.


class Log:
    """Prints progress and records the learning curve (step, seconds, target tokens, val loss)."""

    def __init__(self, every: int = 50) -> None:
        self.every, self.start, self.curve, self.tokens = every, time.perf_counter(), [], 0

    def on_step_end(self, trainer: Trainer, info: dict) -> None:
        self.tokens = info["tokens"]  # target tokens seen so far (the loss's tokens)
        if info["step"] % self.every == 0:
            print(f"step {info['step']:5d}  loss {info['train_loss']:.3f}  lr {info['lr']:.2e}  "
                  f"{info['tokens_per_s']:.0f} tok/s  {(time.perf_counter() - self.start) / 60:.1f} min", flush=True)

    def on_eval(self, trainer: Trainer, metrics: dict) -> None:
        if "val_loss" in metrics:
            self.curve.append({"step": metrics["step"], "seconds": round(time.perf_counter() - self.start, 1),
                               "tokens": self.tokens,
                               "val_loss": round(metrics["val_loss"], 4)})
            print(f"eval @ {metrics['step']}: val loss {metrics['val_loss']:.4f}", flush=True)


def pair_rows(split: str) -> list[tuple[str, str]]:
    return [(p.en, p.zh) for p in load_parallel(split)]


def memory_rows(split: str, out: Path) -> list[tuple[str, str]]:
    """The pairs with memory-augmented sources; a training sentence never gets its own group as its match.
    Cached in OUT (searching 55k sentences takes minutes), so a resumed run reads the same inputs."""
    cache = out / f"memory_{split}.json"
    if cache.is_file():
        return [tuple(row) for row in json.loads(cache.read_text(encoding="utf-8"))]
    pairs, memory = load_parallel(split), shipped_memory()
    exclude = [p.split_key for p in pairs] if split == "train" else None
    rows = list(zip(augment_sources(memory, [p.en for p in pairs], exclude), [p.zh for p in pairs]))
    cache.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    return rows


def translator_data(arch: str, tok: Any, r: dict[str, Any], out: Path) -> tuple[Any, Any]:
    """The same pairs, encoded for the encoder-decoder or as prompt-masked sequences for a decoder-only LM."""
    rows = memory_rows if r.get("memory") else (lambda split, _out: pair_rows(split))
    train, val, max_len = rows("train", out), rows("validation", out), r["max_len"]
    if arch == "seq2seq":  # (the LSTM and the decoder-only Transformer both read prompt-masked sequences)
        kw = dict(src_len=r.get("src_len", max_len), tgt_len=max_len, tgt_lang_tag=TAGS["tgt_lang_tag"])
        return Seq2SeqPairs(train, tok, bucket=8, **kw), Seq2SeqPairs(val, tok, **kw)
    kw = dict(template=TAGS["template"], src_lang_tag=TAGS["src_lang_tag"], tgt_lang_tag=TAGS["tgt_lang_tag"],
              max_len=2 * max_len, too_long="truncate")
    return PairDataset(train, tok, bucket=8, **kw), PairDataset(val, tok, **kw)


def build(name: str, r: dict[str, Any], arch: str, tok: Any, out: Path) -> tuple[torch.nn.Module, Any, Any]:
    """The model and its (train, validation) data for one recipe."""
    if name == "en-zh":
        train, val = translator_data(arch, tok, r, out)
        tags = {**TAGS, "memory": SHIPPED_MEMORY} if r.get("memory") else TAGS
        if arch == "seq2seq":
            # Learned absolute positions: cross-attention aligns by position as well as content (see
            # Seq2SeqTransformer's docstring for the copy-task measurement behind this).
            cfg = Seq2SeqConfig(vocab_size=tok.vocab_size, max_seq_len=max(r["max_len"], r.get("src_len", 0)) + 1,
                                d_model=r["d_model"],
                                n_heads=r["n_heads"], n_layers=r["n_layers"], n_encoder_layers=r["n_layers"],
                                **{**MODERN, "pos_encoding": "learned"}, dropout=r["dropout"],
                                decoder_start_token_id=tok.token_to_id(TAGS["tgt_lang_tag"]),
                                extra={"translation": tags})
            return Seq2SeqTransformer(cfg), train, val
        if arch == "lstm":  # the recurrent baseline on the decoder-only route; d_model sets its width
            from llmcore.models.lstm import LSTMLM

            cfg = ModelConfig(vocab_size=tok.vocab_size, max_seq_len=2 * r["max_len"], d_model=r["d_model"],
                              n_heads=1, n_layers=r["n_layers"], dropout=r["dropout"], extra={"translation": tags})
            return LSTMLM(cfg), train, val
        # decoder-only: twice the blocks of one encoder-decoder stack, so about the same parameters
        cfg = ModelConfig(vocab_size=tok.vocab_size, max_seq_len=2 * r["max_len"], d_model=r["d_model"],
                          n_heads=r["n_heads"], n_layers=2 * r["n_layers"], **MODERN, dropout=r["dropout"],
                          extra={"translation": tags})
        return TransformerLM(cfg), train, val
    train, val = (TokenDataset(np.asarray(tok.encode(load_zh_text(s)), dtype=np.int64), block_size=r["block"])
                  for s in ("train", "validation"))
    cfg = ModelConfig(vocab_size=tok.vocab_size, max_seq_len=r["block"], d_model=r["d_model"], n_heads=r["n_heads"],
                      n_layers=r["n_layers"], **MODERN, dropout=r["dropout"])
    return TransformerLM(cfg), train, val


def tokenizer(name: str, r: dict[str, Any], out: Path) -> Any:
    """Trained once per output directory and reused on resume (a checkpoint records its fingerprint)."""
    path = out / "tokenizer"
    if path.is_dir():
        return load_tokenizer(path)
    if name == "en-zh":
        rows = pair_rows("train")
        symbols = [TAGS["src_lang_tag"], TAGS["tgt_lang_tag"], *(FUZZY_TAGS if r.get("memory") else ())]
        texts, extra = [s for row in rows for s in row], dict(user_defined_symbols=symbols)
    else:
        texts, extra = load_zh_text("train").splitlines(), {}
    tok = SentencePieceTokenizer.train(texts, vocab_size=r["vocab_size"], model_type="bpe", **extra)
    tok.save(path)
    return tok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", choices=sorted(RECIPES))
    ap.add_argument("--out", required=True, help="output directory (tokenizer/, run/, model/, result.json)")
    ap.add_argument("--arch", choices=("seq2seq", "decoder", "lstm"), default="seq2seq", help="en-zh only")
    ap.add_argument("--steps", type=int, default=None, help="override the recipe's step count")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe value")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--eval-interval", type=int, default=250)
    ap.add_argument("--resume", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    r = dict(RECIPES[args.name])
    for kv in args.set:
        key, value = kv.split("=", 1)
        r[key] = type(r[key])(value) if key in r else float(value)
    if args.steps:
        r["steps"] = args.steps
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    tok = tokenizer(args.name, r, out)
    model, train, val = build(args.name, r, args.arch, tok, out)
    print(f"{args.name} ({args.arch if args.name == 'en-zh' else 'lm'}): {model.num_parameters() / 1e6:.2f} M "
          f"parameters, {r['steps']} steps of {r['batch']}", flush=True)
    cfg = TrainConfig(max_steps=r["steps"], batch_size=r["batch"], lr=r["lr"], min_lr=r["lr"] / 10,
                      warmup_steps=r["warmup"], weight_decay=0.1, label_smoothing=r.get("label_smoothing", 0.0),
                      eval_interval=args.eval_interval, eval_batches=40, progress=False, num_samples=0,
                      device="cpu", out_dir=str(out / "run"), seed=0)
    log = Log()
    trainer = Trainer(model, cfg, train, val_data=val, callbacks=[log], tokenizer=tok)
    summary = trainer.fit(resume=args.resume)
    full = trainer.evaluate(val, max_batches=None)  # the whole validation split, not the in-training estimate
    model.save_pretrained(out / "model", tokenizer=tok)
    curve_file = out / "curve.jsonl"  # appended across resumes
    with curve_file.open("a", encoding="utf-8") as f:
        for row in log.curve:
            f.write(json.dumps(row) + "\n")
    result = {"name": args.name, "arch": args.arch if args.name == "en-zh" else "lm", "recipe": r, "parameters": model.num_parameters(),
              "steps": summary["steps"], "val_loss": round(full["val_loss"], 4),
              "train_seconds_this_process": round(time.perf_counter() - log.start, 1)}
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
