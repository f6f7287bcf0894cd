"""Measure a model trained by ``scripts/train_bundled.py``: the figures docs/benchmarks.md and models.json quote.

    python scripts/eval_bundled.py en-zh runs/bundled/en-zh          # test split, per source, with baselines
    python scripts/eval_bundled.py zh-lm runs/bundled/zh-lm          # full validation loss, sampled continuations
    python scripts/eval_bundled.py shakespeare runs/bundled/shakespeare

Writes ``OUT/metrics.json`` (what ``scripts/export_bundled.py`` records) and ``OUT/report.md`` (tables and
samples, pasted into docs/benchmarks.md). Translation: corpus BLEU (sacrebleu ``zh`` tokenizer) and chrF on the
test split, overall and per source (Bible, HSK, Tatoeba), for the model (4 beams, no repeated trigram) and the
four baselines of :func:`llmcore.translation.baselines.baseline_systems`; the seed sentences and 20 random test
sentences (seed 0) with their references. Language models: the loss over the whole validation split (nats per
token, and per character), and continuations of a prompt under five sampling seeds and greedily.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from llmcore import generate_text
from llmcore.data import TokenDataset
from llmcore.models import load_model
from llmcore.tokenizer import load_tokenizer
from llmcore.training import TrainConfig, Trainer
from llmcore.translation import baseline_systems, evaluate_by_source, load_parallel, load_zh_text
from llmcore.translation.translator import Translator

SEED_SENTENCES = ["Hello, how are you?", "Thank you very much.", "Where is the train station?",
                  "I went to the park today."]
PROMPTS = {"zh-lm": "我今天去了", "shakespeare": "ROMEO:"}
DECODE = dict(num_beams=4, no_repeat_ngram_size=3)


def score(hyps: list[str], test: list) -> dict[str, float]:
    row = {}
    scores = evaluate_by_source(hyps, [p.zh for p in test], [p.source for p in test])
    for subset, m in scores.items():
        row[f"bleu_{subset}"], row[f"chrf_{subset}"] = round(m["bleu"], 2), round(m["chrf"], 2)
    return row


def translation(model_dir: Path, skip_baselines: bool) -> tuple[dict, str]:
    test = load_parallel("test")
    translator = Translator.from_pretrained(model_dir)
    t0 = time.perf_counter()
    hyps = translator.translate([p.en for p in test], batch_size=64, **DECODE)
    rows = {"model (4 beams, no repeated trigram)": score(hyps, test)}
    rows["model, greedy"] = score(translator.translate([p.en for p in test], batch_size=64), test)
    seconds = time.perf_counter() - t0
    if not skip_baselines:
        for name, system in baseline_systems().items():
            rows[name] = score(system([p.en for p in test]), test)
    cols = [f"{m}_{s}" for s in ("all", "bible", "hsk", "tatoeba") for m in ("bleu", "chrf")]
    lines = ["| system | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    lines += [f"| {name} | " + " | ".join(str(r[c]) for c in cols) + " |" for name, r in rows.items()]
    lines += ["", "| English | model |", "|---|---|"]
    lines += [f"| {s} | {t} |" for s, t in zip(SEED_SENTENCES, translator.translate(SEED_SENTENCES, **DECODE))]
    pick = random.Random(0).sample(range(len(test)), 20)
    lines += ["", "| source | English | reference | model |", "|---|---|---|---|"]
    lines += [f"| {test[i].source} | {test[i].en} | {test[i].zh} | {hyps[i]} |" for i in pick]
    metrics = {k: v for k, v in rows["model (4 beams, no repeated trigram)"].items()}
    metrics["test_decode_seconds_both"] = round(seconds)
    return metrics, "\n".join(lines)


def language_model(name: str, model_dir: Path) -> tuple[dict, str]:
    model, tok = load_model(model_dir), load_tokenizer(model_dir)
    if name == "zh-lm":
        text = load_zh_text("validation")
    else:
        from llmcore.data.corpora import read_text

        full = read_text(None)
        text = full[int(len(full) * 0.9):]
    ids = np.asarray(tok.encode(text), dtype=np.int64)
    block = model.config.max_seq_len
    data = TokenDataset(ids, block_size=block)
    trainer = Trainer(model, TrainConfig(batch_size=32, device="cpu", progress=False, num_samples=0), data, data)
    val = trainer.evaluate(data, max_batches=None)["val_loss"]
    metrics = {"val_loss": round(val, 4), "val_loss_per_char": round(val * len(ids) / len(text), 4),
               "chars_per_token": round(len(text) / len(ids), 3)}
    prompt = PROMPTS[name]
    lines = [f"validation: {val:.4f} nats per token, {metrics['val_loss_per_char']:.4f} per character "
             f"({len(ids):,} tokens, {len(text):,} characters)", "",
             f"greedy: {prompt}{generate_text(model, prompt, tok, max_new_tokens=60)}"]
    for seed in range(5):
        out = generate_text(model, prompt, tok, max_new_tokens=60, do_sample=True, temperature=0.8, top_k=50, seed=seed)
        lines.append(f"seed {seed}: {prompt}{out}")
    return metrics, "\n\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", choices=["en-zh", "zh-lm", "shakespeare"])
    ap.add_argument("out", help="the --out of scripts/train_bundled.py (its model/ is measured), or a model dir")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-baselines", action="store_true", help="translation: skip the baselines")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    model_dir = out / "model" if (out / "model").is_dir() else out
    if args.name == "en-zh":
        metrics, report = translation(model_dir, args.no_baselines)
    else:
        metrics, report = language_model(args.name, model_dir)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    (out / "report.md").write_text(report + "\n", encoding="utf-8")
    print(report)
    print(json.dumps(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
