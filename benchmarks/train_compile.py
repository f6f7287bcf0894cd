"""Is ``torch.compile`` worth it for training on this CPU? A GPT-2-small training step, eager against compiled.

The step is the one ``benchmarks/train_gpt2.py`` times for llmcore (its ``stepper``: one 1024-token sequence,
``lm_loss``, the optimizer the Trainer builds, clipping at 1.0, ``zero_grad(set_to_none=True)``), run two ways
in one process:

* **eager**: the model as it is;
* **compiled**: ``torch.compile(model)`` (default backend, inductor, as ``TrainConfig(compile=True)`` does).

The first compiled step includes the compilation of the forward and backward graphs. Reported: that first
step's time, the median of ``--steps`` steps after it for each mode, the speed-up of a compiled step, and the
number of steps a run needs before compiling has paid for itself (compile overhead / time saved per step).
The two modes' steady steps run interleaved, so a busy machine slows both alike.

    python benchmarks/train_compile.py                     # GPT-2 small, 1 thread (~8 min here)
    python benchmarks/train_compile.py --layers 1 --seq 64 --steps 2   # smoke test
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from train_gpt2 import stepper  # benchmarks/train_gpt2.py, beside this script


def timed(fn, *args) -> float:
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--steps", type=int, default=3, help="steady steps timed per mode, after the first")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    eager = stepper("llmcore", args.layers, args.seq, "fp32")[0]
    compiled = stepper("llmcore", args.layers, args.seq, "fp32", compiled=True)[0]
    first_eager = timed(eager, 0)
    first_compiled = timed(compiled, 0)  # compiles forward and backward
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    for i in range(1, args.steps + 1):
        times["eager"].append(timed(eager, i))
        times["compiled"].append(timed(compiled, i))
    e, c = statistics.median(times["eager"]), statistics.median(times["compiled"])
    overhead = first_compiled - c - (first_eager - e)  # what compiling added to the first step
    tokens = args.seq
    print(f"GPT-2 shapes, {args.layers} layers, {args.seq} tokens per step, {args.threads} thread(s); "
          f"median of {args.steps} steps after the first\n")
    print("| mode | first step (s) | step (s) | tokens/s | vs eager |")
    print("|---|---:|---:|---:|---:|")
    print(f"| eager | {first_eager:.1f} | {e:.2f} | {tokens / e:.1f} | 1.00x |")
    print(f"| torch.compile (inductor) | {first_compiled:.1f} | {c:.2f} | {tokens / c:.1f} | {e / c:.2f}x |")
    saved = e - c
    payback = f"{overhead / saved:,.0f} steps" if saved > 0 else "never (a compiled step is not faster)"
    print(f"\ncompile overhead {overhead:.0f} s; it pays back after {payback}")


if __name__ == "__main__":
    main()
