"""What int8 costs in quality, and buys in speed, on the bundled models: validation perplexity, greedy
agreement with fp32, decode tokens/s (fp32, int8, bf16), in one process.

* **Perplexity**: the loss over every non-overlapping ``max_seq_len`` block of the model's validation text (the
  last 10 % of the bundled Shakespeare corpus; the shipped Chinese validation split for zh-lm), the same
  blocks for each variant. Reported as the int8 / fp32 perplexity ratio (the issue's bar: within 1 %).
* **Greedy agreement**: ``--prompts`` windows of 32 validation tokens (seed 0), ``--new`` greedy tokens each;
  the share of tokens generated before a row first departs from fp32, and the share of rows identical.
* **Speed**: greedy decoding of ``--new`` tokens at batch 1 and 8, median of ``--repeats``, interleaved.

    python benchmarks/quantize.py                 # both bundled models (~3 min on 1 thread)
    python benchmarks/quantize.py --kernels       # also the int8 / int4 kernel candidates (+3 min)
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
from decode import agreement, median_times  # benchmarks/decode.py, beside this script

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
            speed[batch] = {k: batch * new / t for k, t in median_times(fns, repeats).items()}
    size = {k: sum(t.numel() * t.element_size() for t in m.state_dict().values()) for k, m in variants.items()}
    return {
        "model": name, "val_tokens": int(len(ids)), "val_loss": losses,
        "ppl_ratio_vs_fp32": {k: math.exp(v - losses["fp32"]) for k, v in losses.items() if k != "fp32"},
        "greedy_agreement": {k: agreement(outs[k], outs["fp32"]) for k in ("int8", "bf16")},
        "rows_identical": {k: float((outs[k] == outs["fp32"]).all(1).float().mean()) for k in ("int8", "bf16")},
        "tokens_per_s": speed, "state_bytes": size,
    }


def kernel_candidates(batch: int, repeats: int) -> dict[str, float]:
    """ms for the matmuls of one GPT-2-small decode step (12 x [qkv, out, fc, proj] + the 50257-row head) at
    ``batch`` rows, for each int8 / int4 kernel PyTorch (and torchao, when installed) offers on CPU, next to fp32
    through ``F.linear`` and through llmcore's ``Linear``. Every layer
    has its own weights, so they stream from memory as in real decoding instead of sitting in cache."""
    import warnings

    import torch.nn.functional as F

    from llmcore.modules.linear import linear
    from llmcore.modules.quantized import Int8Linear

    shapes = [(768, 2304), (768, 768), (768, 3072), (3072, 768)] * 12 + [(768, 50257)]
    g = torch.Generator().manual_seed(0)
    weights = [torch.randn(o, i, generator=g) * 0.02 for i, o in shapes]
    x = {i: torch.randn(batch, i, generator=g) for i in (768, 3072)}
    xb = {k: v.bfloat16() for k, v in x.items()}
    cands: dict[str, list] = {}
    cands["fp32 F.linear"] = [(lambda w=w: F.linear(x[w.shape[1]], w)) for w in weights]
    # llmcore's own layers: the same product, rows split across threads when there is more than one
    cands["fp32 llmcore Linear (rows split across threads)"] = [(lambda w=w: linear(x[w.shape[1]], w)) for w in weights]
    wb = [w.bfloat16() for w in weights]
    cands["bf16 F.linear"] = [(lambda w=w: F.linear(xb[w.shape[1]], w)) for w in wb]
    q = [Int8Linear.from_linear(_linear(w)) for w in weights]
    cands["int8 fbgemm dynamic (llmcore Int8Linear)"] = [(lambda m=m: m(x[m.in_features])) for m in q]
    wo = [(m.weight, m.scale) for m in q]
    cands["int8 weight-only _weight_int8pack_mm, fp32 x"] = [
        (lambda w=w, s=s: torch._weight_int8pack_mm(x[w.shape[1]], w, s)) for w, s in wo]
    cands["int8 weight-only _weight_int8pack_mm, bf16 x"] = [
        (lambda w=w, s=s: torch._weight_int8pack_mm(xb[w.shape[1]], w, s.bfloat16())) for w, s in wo]
    # int4, groups of 64 (the CPU kernel needs the output size divisible by 16: the 50257-row head is not, so it
    # runs in fbgemm int8 in this row)
    int4 = []
    for w, m in zip(weights, q):
        o, i = w.shape
        if o % 16:
            int4.append(lambda m=m: m(x[m.in_features]))
            continue
        groups = w.reshape(o, i // 64, 64)
        s4 = groups.abs().amax(-1) / 7
        q4 = (torch.clamp(torch.round(groups / s4[..., None]), -8, 7).to(torch.int32) + 8).reshape(o, i)
        packed = torch._convert_weight_to_int4pack_for_cpu(q4, 1)
        sz = torch.stack([s4.t(), torch.zeros_like(s4.t())], -1).bfloat16().contiguous()
        int4.append(lambda p=packed, sz=sz, i=i: torch._weight_int4pack_mm_for_cpu(xb[i], p, 64, sz))
    cands["int4 weight-only _weight_int4pack_mm_for_cpu (g64), bf16 x"] = int4
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torchao.quantization import Int8WeightOnlyConfig, quantize_
        mods = []
        for w in weights:
            m = torch.nn.Sequential(_linear(w))
            quantize_(m, Int8WeightOnlyConfig())
            mods.append(m)
        cands["torchao Int8WeightOnlyConfig (eager)"] = [(lambda m=m: m(x[m[0].in_features])) for m in mods]
    except ImportError:
        pass
    with torch.inference_mode():
        out = {}
        for name, fns in cands.items():
            for f in fns:
                f()
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                for f in fns:
                    f()
                times.append(time.perf_counter() - t)
            out[name] = statistics.median(times) * 1e3
    return out


def _linear(w: torch.Tensor) -> torch.nn.Linear:
    lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
    lin.weight.data = w
    return lin


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
    p.add_argument("--models", nargs="*", default=["shakespeare", "zh-lm"], help="bundled names or model "
                   "directories (none: --kernels alone)")
    p.add_argument("--prompts", type=int, default=20)
    p.add_argument("--new", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    p.add_argument("--kernels", action="store_true",
                   help="also time the candidate int8 kernels on one GPT-2-small decode step's matmuls")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.kernels:
        rows = {b: kernel_candidates(b, max(args.repeats, 3)) for b in (1, 8)}
        print(f"| kernel ({args.threads} thread(s)), ms per GPT-2-small decode step | batch 1 | batch 8 |\n|---|---:|---:|")
        for name in rows[1]:
            print(f"| {name} | {rows[1][name]:.1f} | {rows[8][name]:.1f} |")
        print()
    if not args.models:
        return
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
