"""Greedy decoding at GPT-2-small shapes: llmcore (fp32, int8, bf16) against Hugging Face transformers (fp32)
and CTranslate2 (fp32, int8), on the same random weights, in one process.

The HF model is built from a config (random weights, no download), converted to llmcore with
``llmcore.models.hf.from_hf`` and to CTranslate2 with its own ``TransformersConverter``, so all three decode
identical weights. Every system decodes exactly ``--new`` tokens after a ``--prompt``-token prompt (no EOS).
Within each (threads, batch) cell the systems run interleaved (a, b, c, a, b, c, ...) so background load hits
all alike, and the median of ``--repeats`` is reported with the load average before and after.

    python benchmarks/decode.py                      # the tables of docs/benchmarks.md (~10 min, 2 cores)
    python benchmarks/decode.py --layers 2 --new 16 --repeats 2    # smoke test (seconds)
    python benchmarks/decode.py --json results.json  # also write the raw numbers

Greedy agreement: llmcore fp32 must reproduce HF's tokens exactly (checked, or the run stops); int8 and bf16
are reported as the share of generated tokens equal to fp32's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from llmcore.generation import generate
from llmcore.models import TransformerLM
from llmcore.models.hf import from_hf


def hf_gpt2(n_layer: int, vocab_size: int = 50257):
    import transformers

    cfg = transformers.GPT2Config(n_layer=n_layer, n_head=12, n_embd=768, n_positions=1024, vocab_size=vocab_size,
                                  bos_token_id=0, eos_token_id=vocab_size - 1, pad_token_id=0,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(cfg).eval()


def ct2_model(hf, directory: Path) -> Path | None:
    """``hf`` converted to a CTranslate2 directory (None when ctranslate2 is not installed: the `bench` extra)."""
    try:
        import ctranslate2
    except ImportError:
        return None
    src = directory / "hf"
    hf.save_pretrained(src)
    # the converter wants a tokenizer: a vocabulary of placeholder tokens "t{i}" (ids are what is compared)
    vocab = {f"t{i}": i for i in range(hf.config.vocab_size - 1)} | {"<|endoftext|>": hf.config.vocab_size - 1}
    (src / "vocab.json").write_text(json.dumps(vocab))
    (src / "merges.txt").write_text("#version: 0.2\n")
    out = directory / "ct2"
    ctranslate2.converters.TransformersConverter(str(src)).convert(str(out), force=True)
    return out


def load_avg() -> float:
    return os.getloadavg()[0]


def median_times(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median wall time of each function over ``repeats`` interleaved rounds (after one warm-up round)."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """Share of positions where two (B, new) greedy outputs agree, up to the first divergence in each row
    counted as agreeing and everything after it not (a later match is luck, not agreement)."""
    same = (a == b).int().cumprod(dim=1)
    return float(same.float().mean())


def cell(models: dict, ct2_dir: Path | None, ids: torch.Tensor, new: int, threads: int, repeats: int) -> dict:
    """One (threads, batch) cell: tokens/s of every system, the int8 / bf16 agreement with fp32."""
    torch.set_num_threads(threads)
    B, T = ids.shape
    prompt_len = T
    hf = models["hf"]

    def ours(m):
        return lambda: generate(m, ids, max_new_tokens=new, eos_token_id=[])[:, prompt_len:]

    fns: dict[str, Callable[[], object]] = {
        "llmcore fp32": ours(models["fp32"]),
        "llmcore int8": ours(models["int8"]),
        "llmcore bf16": ours(models["bf16"]),
        "transformers fp32": lambda: hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                                                 min_new_tokens=new, do_sample=False, use_cache=True,
                                                 pad_token_id=0)[:, prompt_len:],
    }
    if ct2_dir is not None:
        import ctranslate2

        toks = [[f"t{i}" for i in row] for row in ids.tolist()]
        for ctype in ("float32", "int8"):
            g = ctranslate2.Generator(str(ct2_dir), device="cpu", compute_type=ctype, intra_threads=threads,
                                      inter_threads=1)

            def run(g=g):
                r = g.generate_batch(toks, max_length=new, min_length=new, sampling_topk=1, end_token=[],
                                     include_prompt_in_result=False, max_batch_size=B)
                return torch.tensor([x.sequences_ids[0] for x in r])

            fns[f"CTranslate2 {'fp32' if ctype == 'float32' else 'int8'}"] = run
    with torch.inference_mode():
        outs = {k: fn() for k, fn in fns.items()}
        if not torch.equal(outs["llmcore fp32"], outs["transformers fp32"]):
            raise SystemExit("llmcore fp32 and transformers fp32 greedy outputs differ: the comparison is void")
        before = load_avg()
        t = median_times(fns, repeats)
    return {"threads": threads, "batch": B, "prompt": T, "new": new, "load_before": before, "load_after": load_avg(),
            "tokens_per_s": {k: B * new / v for k, v in t.items()},
            "agreement_vs_fp32": {k: agreement(outs[k], outs["llmcore fp32"]) for k in outs if k != "llmcore fp32"}}


def table(results: list[dict]) -> str:
    systems = list(results[0]["tokens_per_s"])
    head = "| threads | batch | " + " | ".join(systems) + " | int8 / transformers fp32 | int8 / CTranslate2 int8 |"
    lines = [head, "|" + "---|" * (len(systems) + 4)]
    for r in results:
        tps = r["tokens_per_s"]
        ct = tps.get("CTranslate2 int8")
        lines.append(f"| {r['threads']} | {r['batch']} | " + " | ".join(f"{tps[s]:.1f}" for s in systems)
                     + f" | {tps['llmcore int8'] / tps['transformers fp32']:.2f}x | "
                     + (f"{tps['llmcore int8'] / ct:.2f}x |" if ct else "– |"))
    agree = results[0]["agreement_vs_fp32"]
    lines.append("")
    lines.append("Greedy agreement with llmcore fp32 (share of tokens before the first divergence, "
                 f"batch {results[0]['batch']}, threads {results[0]['threads']}): "
                 + ", ".join(f"{k} {v:.0%}" for k, v in agree.items()))
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=12, help="GPT-2 layers (12 = GPT-2 small)")
    p.add_argument("--prompt", type=int, default=16)
    p.add_argument("--new", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--json", default=None, help="write the raw results here")
    args = p.parse_args()

    import transformers

    hf = hf_gpt2(args.layers)
    fp32 = from_hf(hf.config.to_dict(), hf.state_dict(), TransformerLM).eval()
    int8 = from_hf(hf.config.to_dict(), hf.state_dict(), TransformerLM).eval().quantize("int8")
    bf16 = from_hf(hf.config.to_dict(), hf.state_dict(), TransformerLM).eval().to(torch.bfloat16)
    models = {"hf": hf, "fp32": fp32, "int8": int8, "bf16": bf16}
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        ct2_dir = ct2_model(hf, Path(tmp))
        try:
            import ctranslate2
            ct2_version = ctranslate2.__version__
        except ImportError:
            ct2_version = None
        print(f"torch {torch.__version__}, transformers {transformers.__version__}, ctranslate2 {ct2_version}; "
              f"GPT-2 {args.layers} layers, prompt {args.prompt} + {args.new} new, greedy, median of "
              f"{args.repeats}\n", flush=True)
        for threads in args.threads:
            for batch in args.batches:
                ids = torch.randint(1, hf.config.vocab_size - 1, (batch, args.prompt),
                                    generator=torch.Generator().manual_seed(batch))
                r = cell(models, ct2_dir, ids, args.new, threads, args.repeats)
                results.append(r)
                print(json.dumps(r), flush=True)
    print()
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "torch": torch.__version__,
                                               "transformers": transformers.__version__, "ctranslate2": ct2_version,
                                               "results": results}, indent=1))


if __name__ == "__main__":
    main()
