"""A GPT-2-small training step: llmcore against a nanoGPT-equivalent model and Hugging Face transformers, in
fp32 and in bf16 autocast, on 1 and 2 threads, with MFU against the matmul peak measured in the same run.

* **llmcore**: ``TransformerLM(ModelConfig.from_preset("gpt2"))``, ``training.lm_loss``, the optimizer the
  Trainer builds (``build_optimizer(param_groups(...))``).
* **nanoGPT-equivalent**: a GPT-2 written here the way nanoGPT's ``model.py`` is (one fused ``c_attn``
  projection, ``F.scaled_dot_product_attention(is_causal=True)``, LayerNorm with bias, tied head, loss as
  ``F.cross_entropy`` over the flattened logits, AdamW with nanoGPT's decay groups; nanoGPT only fuses AdamW
  on CUDA). nanoGPT is not a package, so it cannot be pip-installed; this is the same computation.
* **transformers**: ``GPT2LMHeadModel(GPT2Config())``, dropout off, the same loss and optimizer settings.

All three: 124M parameters, random init, one sequence of 1024 tokens per step, AdamW lr 6e-4, betas
(0.9, 0.95), weight decay 0.1, gradient clipping at 1.0, ``zero_grad(set_to_none=True)``. The systems' steps
run interleaved; each figure is the median of ``--steps`` after ``--warmup``. MFU = (6 N + 12 L T d) FLOPs per
token x tokens/s / the peak of a 2048^3 matmul in the same dtype on the same threads. ``--memory`` also runs
each system alone in a child process and reports its peak RSS over two steps.

    python benchmarks/train_gpt2.py                       # fp32 + bf16, 1 and 2 threads (~20 min)
    python benchmarks/train_gpt2.py --layers 2 --seq 128 --steps 1 --warmup 1 --threads 1 --dtypes fp32  # smoke
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


# ------------------------------------------------------------------------------------ nanoGPT-equivalent
class NanoBlock(nn.Module):
    def __init__(self, d: int, h: int) -> None:
        super().__init__()
        self.h = h
        self.ln_1, self.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.c_attn, self.attn_proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.c_fc, self.mlp_proj = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.h, C // self.h).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).contiguous().view(B, T, C)
        x = x + self.attn_proj(y)
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))


class NanoGPT(nn.Module):
    def __init__(self, n_layer: int, vocab: int = 50257, ctx: int = 1024, d: int = 768, h: int = 12) -> None:
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(ctx, d)
        self.h = nn.ModuleList(NanoBlock(d, h) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.wte.weight = self.lm_head.weight
        for name, p in self.named_parameters():
            if p.dim() == 2:
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * n_layer) if name.endswith("proj.weight") else 0.02)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))

    def optimizer(self, lr: float) -> torch.optim.AdamW:
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))


# ------------------------------------------------------------------------------------ the three systems
def build(system: str, layers: int, seq: int):
    """(model, forward(ids) -> logits, optimizer, loss(logits, targets))"""
    torch.manual_seed(0)
    if system == "llmcore":
        from llmcore import ModelConfig, TransformerLM
        from llmcore.training import lm_loss, param_groups
        from llmcore.training.optim import build_optimizer

        model = TransformerLM(ModelConfig.from_preset("gpt2", n_layers=layers, max_seq_len=seq))
        opt = build_optimizer(param_groups(model, 0.1, 6e-4), 6e-4, betas=(0.9, 0.95))
        return model, model, opt, lm_loss
    loss = lambda logits, y: F.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1))  # noqa: E731
    if system == "nanoGPT-equivalent":
        model = NanoGPT(layers, ctx=seq)
        return model, model, model.optimizer(6e-4), loss
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=layers, n_positions=seq, resid_pdrop=0.0, embd_pdrop=0.0,
                                       attn_pdrop=0.0))
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                            lr=6e-4, betas=(0.9, 0.95))
    return model, lambda ids: model(ids).logits, opt, loss


SYSTEMS = ("llmcore", "nanoGPT-equivalent", "transformers")


def stepper(system: str, layers: int, seq: int, dtype: str, compiled: bool = False):
    """(step(i) -> loss, parameter count) of a fresh ``system``; ``compiled``: its forward through
    ``torch.compile`` (``benchmarks/train_compile.py``)."""
    model, forward, opt, loss_fn = build(system, layers, seq)
    model.train()
    if compiled:
        forward = torch.compile(forward)
    g = torch.Generator().manual_seed(1)
    data = torch.randint(0, 50257, (4, seq + 1), generator=g)
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if dtype == "bf16" else contextlib.nullcontext

    def step(i: int) -> float:
        row = data[i % 4:i % 4 + 1]
        with autocast():
            loss = loss_fn(forward(row[:, :-1]), row[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())
    n_params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    return step, n_params


def matmul_peak(dtype: str, n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of an n^3 matmul in ``dtype`` (the ceiling MFU is measured against)."""
    dt = torch.bfloat16 if dtype == "bf16" else torch.float32
    a, b = torch.randn(n, n, dtype=dt), torch.randn(n, n, dtype=dt)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n ** 3 / best


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def child_memory(system: str, layers: int, seq: int, dtype: str, threads: int) -> float:
    """Peak RSS (MB) of a fresh process that builds ``system`` and runs two steps."""
    # VmHWM (the peak resident set of this process image), not ru_maxrss: a child's ru_maxrss starts from the
    # parent's peak on Linux, which would report the parent's memory for every system
    code = (f"import sys, torch; sys.path.insert(0, {str(Path(__file__).parent)!r}); torch.set_num_threads({threads});"
            f"import train_gpt2 as t; step, _ = t.stepper({system!r}, {layers}, {seq}, {dtype!r}); step(0); step(1);"
            "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1]) / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--memory", action="store_true", help="also the peak RSS of each system, in child processes")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    results = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for dtype in args.dtypes:
            peak = matmul_peak(dtype)
            steps = {s: stepper(s, args.layers, args.seq, dtype) for s in SYSTEMS}
            times: dict[str, list[float]] = {s: [] for s in SYSTEMS}
            for i in range(args.warmup + args.steps):
                for s in (SYSTEMS if i % 2 == 0 else SYSTEMS[::-1]):
                    t = time.perf_counter()
                    steps[s][0](i)
                    if i >= args.warmup:
                        times[s].append(time.perf_counter() - t)
            params = {s: steps[s][1] for s in SYSTEMS}
            del steps
            for s in SYSTEMS:
                n = params[s]
                tps = args.seq / statistics.median(times[s])
                flops = 6 * n + 12 * args.layers * args.seq * 768
                results.append({"threads": threads, "dtype": dtype, "system": s, "params": n,
                                "tokens_per_s": tps, "mfu": tps * flops / peak, "peak_flops": peak})
            print(json.dumps(results[-3:]), flush=True)
    if args.memory:
        mem = {s: child_memory(s, args.layers, args.seq, "fp32", 1) for s in SYSTEMS}
    print(f"\nGPT-2 {args.layers} layers, 1 x {args.seq} tokens per step, median of {args.steps} steps after "
          f"{args.warmup} warm-up, torch {torch.__version__}\n")
    print("| threads | dtype | " + " | ".join(f"{s} tok/s (MFU)" for s in SYSTEMS)
          + " | llmcore / nanoGPT-eq. | llmcore / transformers |")
    print("|---|---|" + "---:|" * (len(SYSTEMS) + 2))
    for i in range(0, len(results), 3):
        row = {r["system"]: r for r in results[i:i + 3]}
        r0 = results[i]
        print(f"| {r0['threads']} | {r0['dtype']} | "
              + " | ".join(f"{row[s]['tokens_per_s']:.1f} ({row[s]['mfu']:.0%})" for s in SYSTEMS)
              + f" | {row['llmcore']['tokens_per_s'] / row['nanoGPT-equivalent']['tokens_per_s']:.2f}x"
              + f" | {row['llmcore']['tokens_per_s'] / row['transformers']['tokens_per_s']:.2f}x |")
    if args.memory:
        print("\n| peak RSS over two fp32 steps, MB | " + " | ".join(SYSTEMS) + " |\n|---|" + "---:|" * len(SYSTEMS))
        print("| 1 thread | " + " | ".join(f"{mem[s]:.0f}" for s in SYSTEMS) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
