"""Copy a trained model into the package as a bundled model (float16 weights) and record it in models.json.

    python scripts/export_bundled.py en-zh runs/bundled/en-zh --trained "2000 steps of 48 pairs, ..."

Reads ``OUT/model`` (written by ``scripts/train_bundled.py``) or the run directory OUT itself (``llmcore
train``), stores its weights in float16 (half the bytes;
the loader casts them back to the model's float32), its config and tokenizer, under
``src/llmcore/bundled/NAME/``, then updates ``src/llmcore/bundled/models.json`` with the model's task,
parameters, size, metrics (``--metrics``: a JSON object of measured figures; default ``OUT/metrics.json``, written by
``scripts/eval_bundled.py``), how it was trained and the command that reproduces it. Refuses a model over 15 MB: the package ships at most 40 MB of models.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

from llmcore.bundled import BUNDLED_DIR, INDEX_FILE
from llmcore.models import load_model
from llmcore.tokenizer import load_tokenizer

MAX_BYTES = 15 * 2**20
SHAKESPEARE_FLAGS = ("--tokenizer sp --vocab-size 2048 --preset char-small --set max_seq_len=128 --set d_model=256 "
                     "--set n_layers=4 --set multiple_of=64 --set dropout=0.1 --set min_lr=1e-4 --batch-size 32 "
                     "--lr 2e-3 --eval-interval 100 --seed 1337")
INFO = {
    "en-zh": dict(task="translation", description="English→Chinese encoder-decoder Transformer (3 + 3 layers, "
                  "d_model 256) with a translation memory: the encoder also reads the Chinese of the nearest "
                  "training sentence (TF-IDF), which it learns to copy, edit or ignore. Trained on the shipped "
                  "Bible, HSK and Tatoeba pairs (training split).",
                  command="python scripts/train_bundled.py en-zh --out runs/bundled/en-zh",
                  try_="llmcore translate \"Hello, how are you?\""),
    "zh-lm": dict(task="text-generation", description="Chinese language model (4 layers, d_model 256) on "
                  "everyday sentences (HSK, Tatoeba) and Chinese Union Version verses (training split).",
                  command="python scripts/train_bundled.py zh-lm --out runs/bundled/zh-lm",
                  try_="llmcore generate --model zh-lm --prompt 我今天去了 --do-sample"),
    "shakespeare": dict(task="text-generation", description="English subword (BPE 2048) language model (4 "
                        "layers, d_model 256) of the complete works of Shakespeare (the first nine tenths).",
                        command=f"llmcore train {SHAKESPEARE_FLAGS} --max-steps 2000 --out runs/bundled/shakespeare",
                        try_="llmcore generate --model shakespeare --prompt \"ROMEO:\" --do-sample"),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", choices=sorted(INFO))
    ap.add_argument("out", help="the --out of scripts/train_bundled.py")
    ap.add_argument("--metrics", help="JSON object of measured figures (default: OUT/metrics.json)")
    ap.add_argument("--trained", required=True, help="how it was trained, one line (steps, batch, data, time)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    model_dir = out / "model" if (out / "model").is_dir() else out  # train_bundled.py's OUT, or a run directory
    metrics_file = Path(args.metrics) if args.metrics else out / "metrics.json"
    metrics = json.loads(metrics_file.read_text(encoding="utf-8")) if metrics_file.is_file() else {}
    model, tok = load_model(model_dir), load_tokenizer(model_dir)
    dest = BUNDLED_DIR / args.name
    tmp = BUNDLED_DIR / f".{args.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.to(torch.float16).save_pretrained(tmp, tokenizer=tok)
    for f in tmp.rglob("*"):
        f.chmod(0o755 if f.is_dir() else 0o644)  # package data: readable by every user of an installation
    size = sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file())
    if size > MAX_BYTES:
        shutil.rmtree(tmp)
        print(f"error: {args.name} is {size / 2**20:.1f} MB, over the 15 MB a bundled model may take", file=sys.stderr)
        return 2
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    index_path = BUNDLED_DIR / INDEX_FILE
    index = json.loads(index_path.read_text(encoding="utf-8")) if index_path.is_file() else {"models": {}}
    info = INFO[args.name]
    index["models"][args.name] = {
        "task": info["task"], "description": info["description"], "architecture": type(model).__name__,
        "parameters": model.num_parameters(), "bytes": size, "metrics": metrics, "trained": args.trained,
        "command": info["command"], "try": info["try_"],
    }
    index["models"] = dict(sorted(index["models"].items()))
    index_path.write_text(json.dumps(index, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    print(f"{args.name}: {model.num_parameters() / 1e6:.2f} M parameters, {size / 2**20:.1f} MB -> {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
