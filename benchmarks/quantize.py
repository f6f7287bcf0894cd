"""What int8 costs in quality, and buys in speed, on the bundled models: validation perplexity, greedy
agreement with fp32, decode tokens/s (fp32, int8, bf16), in one process.

* **Perplexity**: the loss over every non-overlapping ``max_seq_len`` block of the model's validation text (the
  last 10 % of the bundled Shakespeare corpus; the shipped Chinese validation split for zh-lm), the same
  blocks for each variant. Reported as the int8 / fp32 perplexity ratio (the issue's bar: within 1 %).
* **Greedy agreement**: ``--prompts`` windows of 32 validation tokens (seed 0), ``--new`` greedy tokens each;
  the share of tokens generated before a row first departs from fp32, and the share of rows identical.
* **Speed**: greedy decoding of ``--new`` tokens at batch 1 and 8, median of ``--repeats``, interleaved.

    python benchmarks/quantize.py                 # both bundled models (~3 min on 1 thread)
    python benchmarks/quantize.py --models shakespeare --prompts 4 --new 16 --repeats 1   # smoke test
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import numpy as np
import torch

from llmcore.data import TokenDataset
from llmcore.generation import generate
from llmcore.models import load_model
from llmcore.tokenizer import load_tokenizer
from llmcore.training import TrainConfig, Trainer


def validation_text(name: str) -> str:
    if name == "zh-lm":
        from llmcore.translation import load_zh_text

        return load_zh_text("validation")
    from llmcore.data.corpora import read_text

    full = read_text(None)
    return full[int(len(full) * 0.9):]


def val_loss(model, data: TokenDataset) -> float:
    trainer = Trainer(model, TrainConfig(batch_size=32, device="cpu", progress=False, num_samples=0), data, data)
    return trainer.evaluate(data, max_batches=None)["val_loss"]


def first_divergence_share(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean share of each row's tokens generated before the row first departs from the reference."""
    return float((a == b).int().cumprod(dim=1).float().mean())


def measure(name: str, n_prompts: int, new: int, repeats: int) -> dict:
    fp32 = load_model(name)
    tok = load_tokenizer(name)
    variants = {"fp32": fp32, "int8": load_model(name).quantize("int8"), "bf16": load_model(name).to(torch.bfloat16)}
    ids = np.asarray(tok.encode(validation_text(name)), dtype=np.int64)
    data = TokenDataset(ids, block_size=fp32.config.max_seq_len)
    with torch.inference_mode():
        losses = {k: val_loss(m, data) for k, m in variants.items()}
        rng = np.random.default_rng(0)
        starts = rng.integers(0, len(ids) - 32, n_prompts)
        prompts = torch.tensor(np.stack([ids[s:s + 32] for s in starts]))
        outs = {k: generate(m, prompts, max_new_tokens=new, eos_token_id=[])[:, 32:] for k, m in variants.items()}
        speed = {}
        for batch in (1, 8):
            p = prompts[:batch] if batch <= n_prompts else prompts[:1].repeat(batch, 1)
            fns = {k: (lambda m=m, p=p: generate(m, p, max_new_tokens=new, eos_token_id=[]))
                   for k, m in variants.items()}
            times: dict[str, list[float]] = {k: [] for k in fns}
            for fn in fns.values():
                fn()
            for _ in range(repeats):
                for k, fn in fns.items():
                    t = time.perf_counter()
                    fn()
                    times[k].append(time.perf_counter() - t)
            speed[batch] = {k: batch * new / statistics.median(v) for k, v in times.items()}
    size = {k: sum(t.numel() * t.element_size() for t in m.state_dict().values()) for k, m in variants.items()}
    return {
        "model": name, "val_tokens": int(len(ids)), "val_loss": losses,
        "ppl_ratio_vs_fp32": {k: math.exp(v - losses["fp32"]) for k, v in losses.items() if k != "fp32"},
        "greedy_agreement": {k: first_divergence_share(outs[k], outs["fp32"]) for k in ("int8", "bf16")},
        "rows_identical": {k: float((outs[k] == outs["fp32"]).all(1).float().mean()) for k in ("int8", "bf16")},
        "tokens_per_s": speed, "state_bytes": size,
    }


def table(results: list[dict]) -> str:
    lines = ["| model | val ppl fp32 | int8 | bf16 | int8 / fp32 ppl | greedy agreement int8 (rows identical) "
             "| bf16 (rows identical) | decode tok/s b1 fp32 / int8 | b8 fp32 / int8 | weights MB fp32 / int8 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        ppl = {k: math.exp(v) for k, v in r["val_loss"].items()}
        s1, s8 = r["tokens_per_s"][1], r["tokens_per_s"][8]
        lines.append(
            f"| {r['model']} | {ppl['fp32']:.3f} | {ppl['int8']:.3f} | {ppl['bf16']:.3f} "
            f"| {r['ppl_ratio_vs_fp32']['int8']:.4f} | {r['greedy_agreement']['int8']:.0%} "
            f"({r['rows_identical']['int8']:.0%}) | {r['greedy_agreement']['bf16']:.0%} "
            f"({r['rows_identical']['bf16']:.0%}) | {s1['fp32']:.0f} / {s1['int8']:.0f} "
            f"| {s8['fp32']:.0f} / {s8['int8']:.0f} | {r['state_bytes']['fp32'] / 1e6:.1f} / "
            f"{r['state_bytes']['int8'] / 1e6:.1f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["shakespeare", "zh-lm"])
    p.add_argument("--prompts", type=int, default=20)
    p.add_argument("--new", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    results = [measure(m, args.prompts, args.new, args.repeats) for m in args.models]
    for r in results:
        print(json.dumps(r))
    print(f"\n{args.threads} thread(s), {args.prompts} prompts x {args.new} greedy tokens, median of {args.repeats}\n")
    print(table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
