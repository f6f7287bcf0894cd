"""Copy a trained model into the package as a bundled model (float16 weights) and record it in models.json.

    python scripts/export_bundled.py en-zh runs/bundled/en-zh [--metrics runs/bundled/en-zh/metrics.json]

Reads ``OUT/model`` (written by ``scripts/train_bundled.py``), stores its weights in float16 (half the bytes;
the loader casts them back to the model's float32), its config and tokenizer, under
``src/llmcore/bundled/NAME/``, then updates ``src/llmcore/bundled/models.json`` with the model's task,
parameters, size, metrics (``--metrics``: a JSON object of measured figures; default ``OUT/metrics.json``)
and the command that trained it. Refuses a model over 15 MB: the package ships at most 40 MB of models.
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
INFO = {
    "en-zh": dict(task="translation", description="English→Chinese encoder-decoder Transformer, trained on the "
                  "shipped Bible, HSK and Tatoeba pairs (training split).",
                  try_="llmcore translate \"Hello, how are you?\""),
    "zh-lm": dict(task="text-generation", description="Chinese language model on everyday sentences (HSK, "
                  "Tatoeba) and the Chinese Union Version Bible (training split).",
                  try_="llmcore generate --model zh-lm --prompt 我今天去了 --do-sample"),
    "shakespeare": dict(task="text-generation", description="English subword language model of the complete "
                        "works of Shakespeare (the first nine tenths).",
                        try_="llmcore generate --model shakespeare --prompt \"ROMEO:\" --do-sample"),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", choices=sorted(INFO))
    ap.add_argument("out", help="the --out of scripts/train_bundled.py")
    ap.add_argument("--metrics", help="JSON object of measured figures (default: OUT/metrics.json)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    result = json.loads((out / "result.json").read_text(encoding="utf-8"))
    metrics_file = Path(args.metrics) if args.metrics else out / "metrics.json"
    metrics = json.loads(metrics_file.read_text(encoding="utf-8")) if metrics_file.is_file() else {}
    metrics.setdefault("val_loss", result["val_loss"])
    model, tok = load_model(out / "model"), load_tokenizer(out / "model")
    dest = BUNDLED_DIR / args.name
    tmp = BUNDLED_DIR / f".{args.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.to(torch.float16).save_pretrained(tmp, tokenizer=tok)
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
    steps, recipe = result["steps"], result["recipe"]
    index["models"][args.name] = {
        "task": info["task"], "description": info["description"], "architecture": type(model).__name__,
        "parameters": model.num_parameters(), "bytes": size, "metrics": metrics,
        "trained": f"{steps} steps of {recipe['batch']} (lr {recipe['lr']}, one CPU thread), training split only",
        "command": f"python scripts/train_bundled.py {args.name} --out {args.out} && "
                   f"python scripts/export_bundled.py {args.name} {args.out}",
        "try": info["try_"],
    }
    index["models"] = dict(sorted(index["models"].items()))
    index_path.write_text(json.dumps(index, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    print(f"{args.name}: {model.num_parameters() / 1e6:.2f} M parameters, {size / 2**20:.1f} MB -> {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
