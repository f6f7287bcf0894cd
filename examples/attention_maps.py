"""Attention maps of a trained model, for an English sentence and a Chinese one.

Every (layer, head) map shows, for each query token (row), how its attention is spread over the tokens before
it (columns); see ``docs/concepts/self-attention.md``. Typical patterns in a small character model: heads that
look at the previous character, heads that look back to the last space or punctuation mark, and heads that
park their attention on the first token when nothing else is useful.

Run it on a trained run directory, or let it train tiny character models first (a few minutes on a CPU)::

    llmcore train --max-steps 500 --out runs/shakespeare
    python examples/attention_maps.py --run runs/shakespeare            # English from the run, Chinese trained
    python examples/attention_maps.py                                    # trains both tiny models itself
    python examples/attention_maps.py --quick                            # smoke test

The Chinese map uses the run's model when its tokenizer covers the sentence. Otherwise a tiny character model
is trained on Chinese text: the Chinese Union Version shipped with llmcore (``llmcore.translation.data``) or
``--zh-text-file FILE``. Needs the ``plot`` extra (matplotlib) and, for readable Chinese, a CJK font (e.g.
``apt-get install fonts-noto-cjk``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from llmcore import ModelConfig, TrainConfig, Trainer, TransformerLM, load_tokenizer
from llmcore.data import TokenDataset, read_text
from llmcore.errors import LLMCoreError
from llmcore.plot import plot_attention
from llmcore.tokenizer import CharTokenizer

EN = "To be, or not to be: that is"
ZH = "起初，神创造天地。地是空虚混沌，渊面黑暗；"


def covers(tokenizer, text: str) -> bool:
    """True when the tokenizer encodes ``text`` without unknown tokens."""
    try:
        ids = tokenizer.encode(text)
    except LLMCoreError:  # a character tokenizer refuses characters it has never seen
        return False
    return getattr(tokenizer, "unk_id", None) not in ids


def train_char_model(text: str, steps: int, quick: bool) -> tuple[TransformerLM, CharTokenizer]:
    """A tiny character-level model trained for ``steps`` steps on ``text`` (nothing written to disk)."""
    tok = CharTokenizer.from_text(text)
    ids = np.asarray(tok.encode(text), dtype=np.int64)
    cfg = ModelConfig.from_preset("char-small", vocab_size=tok.vocab_size, max_seq_len=64,
                                  d_model=32 if quick else 96, n_layers=2 if quick else 3, n_heads=4)
    torch.manual_seed(0)
    model = TransformerLM(cfg)
    Trainer(model, TrainConfig(max_steps=steps, batch_size=16, lr=2e-3, warmup_steps=steps // 10, device="cpu",
                               eval_interval=steps, progress=False, num_samples=0),
            TokenDataset(ids, cfg.max_seq_len)).fit()
    return model.eval(), tok


def chinese_text(path: str | None, quick: bool) -> str | None:
    if path:
        return read_text(path)
    try:
        from llmcore.translation.data import load_cuv_text
    except ImportError:
        return None
    return load_cuv_text()[: 50_000 if quick else 400_000]  # Genesis onwards; the sentence's verses included


def main() -> None:
    parser = argparse.ArgumentParser(description="Draw attention maps for an English and a Chinese sentence.")
    parser.add_argument("--run", help="trained run directory (default: train a tiny English model)")
    parser.add_argument("--zh-run", help="trained run directory for the Chinese sentence")
    parser.add_argument("--zh-text-file", help="Chinese text to train the tiny Chinese model on")
    parser.add_argument("--steps", type=int, default=400, help="training steps of the tiny models")
    parser.add_argument("--layers", help="layers to draw, e.g. 0,3 (default: all)")
    parser.add_argument("--out-dir", help="where attention_en.png / attention_zh.png go (default: the repository's "
                                          "docs/images; with --quick: runs/attention_maps_quick)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 20 steps, tiny models")
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny matmuls: more threads only add overhead
    steps = 20 if args.quick else args.steps
    layers = [int(i) for i in args.layers.split(",")] if args.layers else None
    docs_images = Path(__file__).resolve().parents[1] / "docs" / "images"
    out = Path(args.out_dir or ("runs/attention_maps_quick" if args.quick else docs_images))

    if args.run:
        model, tok = TransformerLM.from_pretrained(args.run).eval(), load_tokenizer(args.run)
    else:
        print(f"no --run: training a tiny English character model for {steps} steps")
        model, tok = train_char_model(read_text()[:300_000], steps, args.quick)
    print(f"wrote {plot_attention(model, tok, EN, out / 'attention_en.png', layers=layers)}")

    if args.zh_run:
        zh_model, zh_tok = TransformerLM.from_pretrained(args.zh_run).eval(), load_tokenizer(args.zh_run)
    elif covers(tok, ZH):
        zh_model, zh_tok = model, tok
    else:
        text = chinese_text(args.zh_text_file, args.quick)
        if text is None or not covers(CharTokenizer.from_text(text), ZH):
            print("The English model's tokenizer does not cover Chinese and no Chinese text was found: "
                  "English map only (pass --zh-text-file or --zh-run).")
            return
        print(f"the model's tokenizer does not cover Chinese: training a tiny Chinese character model ({steps} steps)")
        zh_model, zh_tok = train_char_model(text, steps, args.quick)
    print(f"wrote {plot_attention(zh_model, zh_tok, ZH, out / 'attention_zh.png', layers=layers)}")


if __name__ == "__main__":
    main()
