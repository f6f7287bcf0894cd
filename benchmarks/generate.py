"""Greedy decoding speed: llmcore ``generate`` vs Hugging Face ``generate`` on the same weights, and llmcore
with vs without the KV cache.

Each HF model is built from a config (random weights, no download) and converted with ``llmcore.models.hf.from_hf``,
so both libraries run identical weights in fp32. Runs are interleaved (ours, HF, ours, HF, ...) so background
load hits both alike, and the best of ``--repeats`` is reported. Both decode exactly ``new`` tokens (no EOS).

    python benchmarks/generate.py                 # full tables (~25 min on a busy 2-core CPU)
    python benchmarks/generate.py --quick         # char-small rows only (~1 min)

Goals: >= 1.5x HF on the char-small model, no slower on GPT-2-small, cached >= 5x uncached.
"""

from __future__ import annotations

import argparse
import time

import torch

from llmcore.generation import generate
from llmcore.models import TransformerLM
from llmcore.models.hf import from_hf


def hf_gpt2(n_layer: int, n_head: int, n_embd: int, n_positions: int, vocab_size: int):
    import transformers

    cfg = transformers.GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd, n_positions=n_positions,
                                  vocab_size=vocab_size, bos_token_id=0, eos_token_id=None, pad_token_id=0,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(cfg).eval()


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def best_of(fns: dict[str, callable], repeats: int) -> dict[str, float]:
    """Best wall time of each function, calls interleaved round-robin (the best run is a warm one)."""
    best = {k: float("inf") for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            best[k] = min(best[k], timed(fn))
    return best


def vs_hf(name: str, shapes: dict, batch: int, prompt: int, new: int, repeats: int) -> str:
    hf = hf_gpt2(**shapes)
    ours = from_hf(hf.config.to_dict(), hf.state_dict(), TransformerLM)
    ids = torch.randint(1, shapes["vocab_size"], (batch, prompt), generator=torch.Generator().manual_seed(0))

    def run_ours():
        return generate(ours, ids, max_new_tokens=new, eos_token_id=[])

    def run_hf():
        return hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                           do_sample=False, use_cache=True, pad_token_id=0)

    with torch.inference_mode():
        assert torch.equal(run_ours(), run_hf()), "greedy outputs differ"
        t = best_of({"ours": run_ours, "hf": run_hf}, repeats)
    tok = batch * new
    return (f"| {name} | {batch} | {prompt}+{new} | {tok / t['ours']:,.0f} | {tok / t['hf']:,.0f} "
            f"| {t['hf'] / t['ours']:.2f}x |")


def cached_vs_uncached(name: str, cfg, batch: int, prompt: int, new: int, repeats: int) -> str:
    from llmcore import TransformerLM

    torch.manual_seed(0)
    model = TransformerLM(cfg).eval()
    ids = torch.randint(0, cfg.vocab_size, (batch, prompt), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        t = best_of({
            "cached": lambda: generate(model, ids, max_new_tokens=new, eos_token_id=[]),
            "uncached": lambda: generate(model, ids, max_new_tokens=new, eos_token_id=[], use_cache=False),
        }, repeats)
    tok = batch * new
    return (f"| {name}, ctx {cfg.max_seq_len} | {batch} | {prompt}+{new} | {tok / t['cached']:,.1f} "
            f"| {tok / t['uncached']:,.1f} | {t['uncached'] / t['cached']:.2f}x |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadiest on a shared CPU)")
    p.add_argument("--quick", action="store_true", help="skip the GPT-2-small rows")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    import transformers

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {args.threads} thread(s), "
          f"best of {args.repeats}, fp32 CPU, greedy\n")
    char_small = dict(n_layer=4, n_head=4, n_embd=128, n_positions=64, vocab_size=65)
    gpt2_small = dict(n_layer=12, n_head=12, n_embd=768, n_positions=1024, vocab_size=50257)
    print("| model | batch | prompt+new | llmcore tok/s | HF tok/s | llmcore / HF |\n|---|---|---|---|---|---|")
    for batch in (1, 8):
        print(vs_hf("char-small (4L, 128d)", char_small, batch, 4, 56, args.repeats), flush=True)
    if not args.quick:
        for batch in (1, 8):
            print(vs_hf("GPT-2-small (124M)", gpt2_small, batch, 16, 128, args.repeats), flush=True)
    print("\n| model | batch | prompt+new | cached tok/s | uncached tok/s | cached / uncached |\n"
          "|---|---|---|---|---|---|")
    from llmcore import ModelConfig

    char = ModelConfig.from_preset("nanogpt", max_seq_len=272)
    for batch in (1, 8):
        print(cached_vs_uncached("char-small (4L, 128d)", char, batch, 16, 256, args.repeats), flush=True)
    if not args.quick:  # wider layers: compute, not per-call overhead, dominates a step
        wide = ModelConfig.from_preset("gpt2", n_layers=4, max_seq_len=272)
        print(cached_vs_uncached("GPT-2 width (4L, 768d)", wide, 1, 16, 256, args.repeats), flush=True)


if __name__ == "__main__":
    main()
