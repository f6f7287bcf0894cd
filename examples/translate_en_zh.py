"""English→Chinese translation on a CPU budget, three ways, scored with BLEU/chrF next to trivial baselines.

1. Train one sentencepiece tokenizer (BPE, joint English+Chinese vocabulary) on the training pairs, with the
   language tags ``<2en>`` and ``<2zh>`` as single tokens.
2. **Encoder-decoder**: a :class:`Seq2SeqTransformer` trained with label-smoothed cross-entropy for
   ``--minutes`` of wall-clock time (the learning rate decays over the time budget, not over a step count).
3. **Decoder-only**: a :class:`TransformerLM` of about the same size trained on the same pairs as prompts
   ``<bos> <2en> English <2zh>`` → ``Chinese <eos>`` with the loss on the Chinese only (:class:`PairDataset`),
   for ``--lm-minutes``; with ``--lm-pretrain-minutes`` it is first pretrained as a plain language model on
   both sides of the training pairs (ULMFiT's order: general LM, then the task). ``--decoder lstm`` trains
   the :class:`LSTMLM` baseline with the same recipe and budget instead.
4. Each translates the test split (Bible chapters never seen in training, HSK and Tatoeba everyday sentences) with beam
   search (``--num-beams``, 4 by default; no repeated token trigram, ``--no-repeat-ngram-size``);
   corpus BLEU (character-tokenized) and chrF are reported next to a word-by-word CC-CEDICT dictionary
   baseline and the copy-the-source baseline, plus sample translations including "Hello, how are you?".

The models are saved under ``--out`` with their tokenizer, so ``llmcore translate --model runs/dec52/decoder_only
"Hello, how are you?"`` works afterwards. Data: ``llmcore/translation/data`` (see its README for licences).
The reported runs (docs/benchmarks.md), 52 minutes of training each on one core, two at a time:

    python examples/translate_en_zh.py --minutes 0 --lm-pretrain-minutes 12 --lm-minutes 40 --threads 1 --out runs/dec52
    python examples/translate_en_zh.py --minutes 52 --lm-minutes 0 --threads 1 --out runs/s2s52
    python examples/translate_en_zh.py --minutes 0 --decoder lstm --lm-pretrain-minutes 12 --lm-minutes 40 \\
        --threads 1 --out runs/lstm52
    python examples/translate_en_zh.py --quick                          # smoke test, about a minute
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from llmcore import ModelConfig, TransformerLM
from llmcore.data import TokenDataset
from llmcore.finetune import PairDataset
from llmcore.models.lstm import LSTMLM
from llmcore.models.seq2seq import Seq2SeqConfig, Seq2SeqTransformer
from llmcore.tokenizer import SentencePieceTokenizer
from llmcore.training import TrainConfig, Trainer
from llmcore.translation import (
    DictionaryBaseline,
    Seq2SeqPairs,
    copy_source,
    evaluate_by_source,
    load_dictionary,
    load_parallel,
)
from llmcore.translation.translator import Translator

TAGS = {"src_lang_tag": "<2en>", "tgt_lang_tag": "<2zh>", "template": "{src}"}
SAMPLES = ["Hello, how are you?", "Thank you very much!", "Where is the train station?",
           "I went to the store with my mother today.", "In the beginning, God created the heavens and the earth."]


class TimeBudget:
    """Linear warmup, then cosine decay over *elapsed wall-clock time*; stops the Trainer when time is up."""

    def __init__(self, seconds: float, warmup_steps: int = 200, min_ratio: float = 0.1, log_every: int = 100):
        self.seconds, self.warmup, self.min_ratio, self.log_every = seconds, warmup_steps, min_ratio, log_every
        self.start: float | None = None

    def elapsed(self) -> float:
        if self.start is None:
            self.start = time.perf_counter()
        return time.perf_counter() - self.start

    def schedule(self, step: int) -> float:
        frac = min(1.0, self.elapsed() / self.seconds)
        cosine = self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * frac))
        return min(1.0, (step + 1) / self.warmup) * cosine

    def on_step_end(self, trainer: Trainer, info: dict) -> None:
        if info["step"] % self.log_every == 0:
            print(f"  step {info['step']:5d}  loss {info['train_loss']:.3f}  lr {info['lr']:.2e}  "
                  f"{info['tokens_per_s']:.0f} tok/s  {self.elapsed() / 60:.1f} min", flush=True)
        if self.elapsed() >= self.seconds:
            trainer.should_stop = True

    def on_eval(self, trainer: Trainer, metrics: dict) -> None:
        if "val_loss" in metrics:
            print(f"  eval @ {metrics['step']}: val loss {metrics['val_loss']:.3f}  acc {metrics['val_acc']:.3f}",
                  flush=True)


def train(model: torch.nn.Module, data, val, minutes: float, lr: float, batch_size: int, quick: bool,
          label_smoothing: float = 0.1) -> dict:
    budget = TimeBudget(minutes * 60, warmup_steps=20 if quick else 100)
    cfg = TrainConfig(max_steps=10**7, batch_size=batch_size, lr=lr, min_lr=lr * 0.1, schedule=budget.schedule,
                      weight_decay=0.01, label_smoothing=label_smoothing, eval_interval=100 if quick else 500,
                      eval_batches=4 if quick else 20, progress=False, num_samples=0, device="cpu")
    summary = Trainer(model, cfg, data, val_data=val, callbacks=[budget]).fit()
    summary["minutes"] = budget.elapsed() / 60
    return summary


def score(name: str, hyps: list[str], test) -> dict:
    row = {"system": name}
    scores = evaluate_by_source(hyps, [p.zh for p in test], [p.source for p in test])
    for subset, m in scores.items():
        row[f"bleu_{subset}"], row[f"chrf_{subset}"] = round(m["bleu"], 2), round(m["chrf"], 2)
    return row


def monolingual(pairs, tok) -> TokenDataset:
    """Both sides of the pairs as separate sentences, ``<2en> English <eos>`` / ``<2zh> Chinese <eos>``, in a
    shuffled stream of 128-token windows: the language-model pretraining text of the decoder-only route.
    Built from the given split only, so no test sentence is seen."""
    tag = {lang: tok.token_to_id(TAGS[f"{side}_lang_tag"]) for lang, side in (("en", "src"), ("zh", "tgt"))}
    lines = [(lang, getattr(p, lang)) for p in pairs for lang in ("en", "zh")]
    order = torch.randperm(len(lines), generator=torch.Generator().manual_seed(0)).tolist()
    encoded = tok.encode([lines[i][1] for i in order])
    ids = [t for i, e in zip(order, encoded) for t in [tag[lines[i][0]], *e, tok.eos_id]]
    return TokenDataset(np.asarray(ids, dtype=np.int64), block_size=128)


def train_decoder_only(lm: torch.nn.Module, name: str, rows, train_pairs, val_pairs, tok,
                       args: argparse.Namespace) -> tuple[str, dict]:
    """Prompt-masked pair training ``<2en> English <2zh> → Chinese <eos>`` (loss on the Chinese only), after
    ``--lm-pretrain-minutes`` of plain LM pretraining on both sides of the training pairs (ULMFiT's order:
    a language model of both languages first, then the task)."""
    pair_kw = dict(template=TAGS["template"], src_lang_tag=TAGS["src_lang_tag"], tgt_lang_tag=TAGS["tgt_lang_tag"],
                   max_len=192, too_long="drop")
    data = PairDataset(rows, tok, bucket=args.bucket, **pair_kw)
    val = PairDataset([(p.en, p.zh) for p in val_pairs], tok, **pair_kw)
    params = lm.num_parameters() / 1e6
    if args.lm_pretrain_minutes > 0:
        print(f"\n{name}: {params:.1f} M parameters, LM pretraining {args.lm_pretrain_minutes} min on both sides "
              "of the training pairs")
        mono, mono_val = monolingual(train_pairs, tok), monolingual(val_pairs, tok)
        pre = train(lm, mono, mono_val, args.lm_pretrain_minutes, 2e-3, 16, args.quick, label_smoothing=0.0)
        name = f"{name}, LM-pretrained {pre['minutes']:.1f} min"
    print(f"\n{name}: {params:.1f} M parameters, {args.lm_minutes} min on pairs")
    return name, train(lm, data, val, args.lm_minutes, 2e-3, 32, args.quick)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="training time of the encoder-decoder")
    ap.add_argument("--lm-minutes", type=float, default=8.0, help="training time of the decoder-only model on pairs (0 skips it)")
    ap.add_argument("--decoder", choices=("transformer", "lstm"), default="transformer",
                    help="architecture of the decoder-only route (lstm: the LSTMLM baseline, same recipe and budget)")
    ap.add_argument("--lm-pretrain-minutes", type=float, default=0.0,
                    help="pretrain the decoder-only model as a plain LM on both sides of the training pairs first")
    ap.add_argument("--vocab-size", type=int, default=4000, help="joint BPE vocabulary (the output layer is a large part of the compute)")
    ap.add_argument("--hsk-repeat", type=int, default=3, help="HSK pairs are this many times in the training mix")
    ap.add_argument("--dict-repeat", type=int, default=0,
                    help="add the dictionary's word pairs (the baseline's own lexicon) this many times to the pairs")
    ap.add_argument("--num-beams", type=int, default=4, help="beam width for the test translations (1 = greedy)")
    ap.add_argument("--no-repeat-ngram-size", "--no-repeat-ngram", type=int, default=3,
                    help="forbid repeating any n-gram of this many tokens in a translation (0 = off; 3 chosen on the validation split)")
    ap.add_argument("--bucket", type=int, default=8,
                    help="length bucketing of training batches (1 = off; see ExampleDataset)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--out", default="runs/translate_en_zh")
    ap.add_argument("--quick", action="store_true", help="tiny models, 2k pairs, 0.5 min each: a smoke test")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    out = Path(args.out)
    train_pairs, val_pairs, test = load_parallel("train"), load_parallel("validation"), load_parallel("test")
    if args.quick:
        train_pairs, val_pairs, test = train_pairs[::15], val_pairs[::10], test[::15]
        args.minutes, args.lm_minutes = min(args.minutes, 0.5), 0.5
        args.lm_pretrain_minutes = min(args.lm_pretrain_minutes, 0.3)
        args.vocab_size = min(args.vocab_size, 3000)
    hsk = [p for p in train_pairs if p.source == "hsk"]
    rows = [(p.en, p.zh) for p in train_pairs] + [(p.en, p.zh) for p in hsk] * (args.hsk_repeat - 1)
    dictionary_rows = list(load_dictionary().items()) * args.dict_repeat
    rows += dictionary_rows
    print(f"pairs: train {len(train_pairs)} (+{len(hsk) * (args.hsk_repeat - 1)} repeated HSK, "
          f"+{len(dictionary_rows)} dictionary), "
          f"validation {len(val_pairs)}, test {len(test)}")

    t0 = time.perf_counter()
    tok = SentencePieceTokenizer.train([p.en for p in train_pairs] + [p.zh for p in train_pairs],
                                       vocab_size=args.vocab_size, model_type="bpe",
                                       user_defined_symbols=[TAGS["src_lang_tag"], TAGS["tgt_lang_tag"]])
    print(f"tokenizer: {tok.vocab_size} pieces in {time.perf_counter() - t0:.0f} s")
    d, layers = (64, 1) if args.quick else (192, 2)
    results, systems = [], {}

    # ---- encoder-decoder (--minutes 0 skips it)
    if args.minutes > 0:
        # Learned absolute positions: with RoPE alone the encoder output carries no absolute position, which
        # cross-attention would need to learn alignment from content only (much slower on a copy task).
        # No dropout: in this budget the models see each pair about once, so they underfit rather than overfit.
        cfg = Seq2SeqConfig(vocab_size=tok.vocab_size, max_seq_len=128, d_model=d, n_heads=4, n_layers=layers,
                            n_encoder_layers=layers, pos_encoding="learned", norm="layernorm", activation="gelu",
                            bias=False, dropout=0.0, extra={"translation": TAGS})
        s2s = Seq2SeqTransformer(cfg)
        data = Seq2SeqPairs(rows, tok, src_len=96, tgt_len=96, tgt_lang_tag=TAGS["tgt_lang_tag"], bucket=args.bucket)
        val = Seq2SeqPairs([(p.en, p.zh) for p in val_pairs], tok, src_len=96, tgt_len=96)
        print(f"\nencoder-decoder: {s2s.num_parameters() / 1e6:.1f} M parameters, {args.minutes} min "
              f"({data.truncated} training pairs cut at 96 tokens)")
        s = train(s2s, data, val, args.minutes, 2e-3, 32, args.quick)  # dict batches: no adapter
        s2s.save_pretrained(out / "seq2seq", tokenizer=tok)
        systems["encoder-decoder"] = (Translator(s2s, tok), s)

    # ---- decoder-only (--lm-minutes 0 skips it): a Transformer, or with --decoder lstm the LSTM baseline
    if args.lm_minutes > 0:
        if args.decoder == "lstm":
            # 2 x 304: about the Transformer's parameter count (2.6 M), with fewer multiply-adds per token.
            lm = LSTMLM(ModelConfig(vocab_size=tok.vocab_size, max_seq_len=192, d_model=304, n_heads=1,
                                    n_layers=2, dropout=0.0, extra={"translation": TAGS}))
            name, subdir = "LSTM decoder-only", "lstm"
        else:
            lm = TransformerLM(ModelConfig(vocab_size=tok.vocab_size, max_seq_len=192, d_model=d, n_heads=4,
                                           n_layers=2 * layers, pos_encoding="learned", norm="layernorm",
                                           activation="gelu", bias=False, dropout=0.0, extra={"translation": TAGS}))
            name, subdir = "decoder-only", "decoder_only"
        name, summary = train_decoder_only(lm, name, rows, train_pairs, val_pairs, tok, args)
        lm.save_pretrained(out / subdir, tokenizer=tok)
        systems[name] = (Translator(lm, tok), summary)

    # ---- evaluation
    sources = [p.en for p in test]
    decode = dict(num_beams=args.num_beams, no_repeat_ngram_size=args.no_repeat_ngram_size)
    print(f"\ntranslating {len(test)} test sentences ...")
    hypotheses = {}
    for name, (translator, summary) in systems.items():
        t0 = time.perf_counter()
        hyps = hypotheses[name] = translator.translate(sources, batch_size=64, **decode)
        row = score(name, hyps, test)
        row.update(train_min=round(summary["minutes"], 1), steps=summary["steps"],
                   val_loss=round(summary["final_val_loss"], 3), decode_s=round(time.perf_counter() - t0))
        results.append(row)
        if args.num_beams > 1:  # greedy too, to show what the beam adds
            results.append(score(f"{name}, greedy", translator.translate(sources, batch_size=64), test))
    results.append(score("dictionary (CC-CEDICT)", DictionaryBaseline()(sources), test))
    results.append(score("copy source", copy_source(sources), test))

    cols = ["system", "bleu_all", "chrf_all", "bleu_bible", "chrf_bible", "bleu_hsk", "chrf_hsk", "bleu_tatoeba",
            "chrf_tatoeba", "train_min", "steps", "val_loss"]
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in results:
        print("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    print("\nsamples:")
    samples = {name: tr.translate(SAMPLES, **decode) for name, (tr, _) in systems.items()}
    samples["dictionary"] = DictionaryBaseline()(SAMPLES)
    for i, src in enumerate(SAMPLES):
        print(f"  {src}")
        for name, outs in samples.items():
            print(f"    {name:16s} {outs[i]}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"args": vars(args), "results": results, "samples": samples,
                                                  "test_hypotheses": hypotheses}, ensure_ascii=False, indent=2),
                                      encoding="utf-8")
    print(f"\nsaved models and results.json under {out}")


if __name__ == "__main__":
    main()
