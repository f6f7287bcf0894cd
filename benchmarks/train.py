"""Training-step wall time: llmcore's nanogpt preset (char-small shapes, GPT-2 layout) vs an equivalent Hugging Face GPT2LMHeadModel.

    python benchmarks/train.py                 # 50 measured steps each, after 10 warm-up steps
    python benchmarks/train.py --steps 100 --threads 1
    python benchmarks/train.py --distributed   # one process vs 2-process DDP vs 2-process FSDP (gloo on CPU)

``--distributed`` times full ``Trainer`` steps on the same global batch three ways: one process, DDP on 2
processes and FSDP on 2 processes (each process spawned fresh, one thread each, gloo on CPU or NCCL on GPUs),
and reports per rank the median step time, the bytes of model state it holds (parameters + gradients + AdamW
moments, local shards only) and its peak memory (peak RSS on CPU, ``torch.cuda.max_memory_allocated`` on GPU).

Both models: 4 layers, 4 heads, width 128, context 64, vocabulary 65, no dropout, fp32, batch 12 × 64 tokens,
AdamW (lr 1e-3, betas (0.9, 0.99), weight decay 0.1 on weight matrices via ``training.param_groups``),
gradient clipping at 1.0, the loss computed outside the model with ``training.lm_loss``. The steps are
interleaved (ours, theirs, theirs, ours, ...) so background load hits both alike; the table reports medians.
A third row times a full ``Trainer`` step (data sampling, accumulation bookkeeping, logging sync included).

Differences that remain: the preset has no biases and uses exact GELU (nanoGPT's shakespeare-char setting,
``bias=False``); GPT-2 has biases and tanh-GELU. Needs ``transformers`` (the ``dev`` extra).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=None, help="measured steps (default 50; 10 with --distributed)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps (default 10; 3 with --distributed)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="batch (default 12; with --distributed the global batch, default 2 per process)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--distributed", action="store_true", help="one process vs DDP vs FSDP on 2 processes")
    p.add_argument("--preset", default="llama-tiny", help="model preset for --distributed")
    p.add_argument("--seq-len", type=int, default=64, help="context for --distributed")
    p.add_argument("--nproc", type=int, default=2, help="processes for --distributed")
    p.add_argument("--device", default="cpu", help="cpu or cuda, for --distributed")
    args = p.parse_args(argv)
    if args.distributed:
        return distributed(args)
    args.steps, args.warmup, args.batch_size = args.steps or 50, args.warmup or 10, args.batch_size or 12
    if args.threads:
        torch.set_num_threads(args.threads)

    from transformers import GPT2Config, GPT2LMHeadModel

    from llmcore import ModelConfig, TransformerLM
    from llmcore.training import TrainConfig, Trainer, lm_loss, param_groups
    from llmcore.training.optim import build_optimizer

    B, T, V = args.batch_size, 64, 65
    torch.manual_seed(0)
    ours = TransformerLM(ModelConfig.from_preset("nanogpt", vocab_size=V, max_seq_len=T))
    theirs = GPT2LMHeadModel(GPT2Config(n_layer=4, n_head=4, n_embd=128, n_positions=T, vocab_size=V,
                                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0,
                                        eos_token_id=0))
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, V, (64, T + 1), generator=g)

    def stepper(model, forward):
        opt = build_optimizer(param_groups(model, 0.1, 1e-3), 1e-3, betas=(0.9, 0.99))
        model.train()

        def step(i: int) -> None:
            x, y = data[(i % 5) * B:(i % 5) * B + B, :-1], data[(i % 5) * B:(i % 5) * B + B, 1:]
            loss = lm_loss(forward(model, x), y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
        return step

    class Windows:  # what TokenDataset gives the Trainer
        def sample_batch(self, n, generator=None):
            idx = torch.randint(len(data), (n,), generator=generator)
            return {"input_ids": data[idx, :-1], "labels": data[idx, 1:]}

    torch.manual_seed(0)
    trainer_model = TransformerLM(ModelConfig.from_preset("nanogpt", vocab_size=V, max_seq_len=T))
    trainer = Trainer(trainer_model, TrainConfig(max_steps=1, batch_size=B, progress=False, num_samples=0,
                                                 device="cpu"), Windows())
    trainer.fit()  # builds the optimizer; then time its step directly
    runs = {
        "llmcore TransformerLM (nanogpt preset)": stepper(ours, lambda m, x: m(x)),
        "HF GPT2LMHeadModel": stepper(theirs, lambda m, x: m(x).logits),
        "llmcore Trainer step (incl. data)": lambda i: trainer._train_step(i),
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    names = list(runs)
    for i in range(args.warmup + args.steps):
        order = names if i % 2 == 0 else names[::-1]
        for name in order:
            t0 = time.perf_counter()
            runs[name](i)
            if i >= args.warmup:
                times[name].append(time.perf_counter() - t0)

    params = {names[0]: ours.num_parameters(), names[1]: theirs.num_parameters(),
              names[2]: trainer_model.num_parameters()}
    ref = statistics.median(times[names[1]])
    out = [f"Training step, batch {B} x {T} tokens, fp32, {torch.get_num_threads()} threads, torch "
           f"{torch.__version__}, median of {args.steps} steps after {args.warmup} warm-up\n",
           "| model | parameters | ms/step | tokens/s | time vs HF |", "|---|---:|---:|---:|---:|"]
    for name in names:
        med = statistics.median(times[name])
        out.append(f"| {name} | {params[name]:,} | {1000 * med:.1f} | {B * T / med:,.0f} | {med / ref:.2f}x |")
    sys.stdout.write("\n".join(out) + "\n")
    return 0


def _rank_run(rank: int, world: int, port: int, mode: str, args: argparse.Namespace, out: str) -> None:
    """One rank of one configuration: ``warmup + steps`` Trainer steps; writes its figures to ``out``."""
    import json
    import os
    import resource

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(args.threads or 1)
    from llmcore import ModelConfig, TransformerLM
    from llmcore.data import TokenDataset
    from llmcore.training import TrainConfig, Trainer

    torch.manual_seed(0)
    model = TransformerLM(ModelConfig.from_preset(args.preset, max_seq_len=args.seq_len))
    V = model.config.vocab_size
    data = TokenDataset(torch.randint(0, V, (200_000,), generator=torch.Generator().manual_seed(0)), args.seq_len)
    per_rank = args.global_batch // world
    cfg = TrainConfig(max_steps=args.warmup + args.steps, batch_size=per_rank, warmup_steps=1, progress=False,
                      num_samples=0, device=args.device, distributed=mode, eval_interval=10**6)
    times: list[float] = []
    figures: dict = {}
    trainer = Trainer(model, cfg, data)
    trainer.add_callback("on_step_end", lambda t, info: times.append(
        args.global_batch * args.seq_len / info["tokens_per_s"]))

    def state_bytes(t: Trainer, info: dict) -> None:  # this rank's share of parameters, gradients, moments
        local = [getattr(p, "_local_tensor", p) for p in model.parameters()]
        moments = [getattr(v, "_local_tensor", v) for s in t.optimizer.state.values() for v in s.values()
                   if torch.is_tensor(v) and v.dim() > 0]
        figures["state_mb"] = sum(x.numel() * x.element_size() for x in [*local, *local, *moments]) / 2**20
        figures["params"] = sum(p.numel() for p in model.parameters())

    trainer.add_callback("on_train_end", state_bytes)
    trainer.fit()
    cuda = args.device == "cuda"
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    figures.update(ms=1000 * statistics.median(times[args.warmup:]), peak_mb=peak, per_rank=per_rank)
    with open(os.path.join(out, f"{mode}-{world}-{rank}.json"), "w") as f:
        json.dump(figures, f)


def distributed(args: argparse.Namespace) -> int:
    """One process, DDP and FSDP on ``--nproc`` processes, on the same global batch; prints a markdown table."""
    import json
    import socket
    import tempfile

    import torch.multiprocessing as mp

    n = args.nproc
    args.steps, args.warmup = args.steps or 10, args.warmup if args.warmup is not None else 3
    args.global_batch = args.batch_size or 2 * n
    rows = []
    with tempfile.TemporaryDirectory() as out:
        for mode, world in (("none", 1), ("ddp", n), ("fsdp", n)):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            mp.start_processes(_rank_run, args=(world, port, mode, args, out), nprocs=world, start_method="spawn")
            ranks = [json.load(open(os.path.join(out, f"{mode}-{world}-{r}.json"))) for r in range(world)]
            rows.append((mode, world, ranks))
    ref = max(r["ms"] for r in rows[0][2])
    mem = "peak CUDA memory" if args.device == "cuda" else "peak RSS"
    lines = [f"Trainer step, {args.preset} ({rows[0][2][0]['params']:,} parameters), global batch "
             f"{args.global_batch} x {args.seq_len} tokens, fp32, AdamW, {args.threads or 1} thread(s) per process, "
             f"{args.device}, torch {torch.__version__}, median of {args.steps} steps after {args.warmup}\n",
             f"| run | processes | batch per rank | ms/step | vs one process | model state per rank (MB) | "
             f"{mem} per rank (MB) |", "|---|---:|---:|---:|---:|---:|---:|"]
    names = {"none": "one process", "ddp": "DDP", "fsdp": "FSDP (FULL_SHARD)"}
    for mode, world, ranks in rows:
        ms = max(r["ms"] for r in ranks)  # a step ends when the slowest rank ends it
        state = " / ".join(f"{r['state_mb']:.1f}" for r in ranks)
        peak = " / ".join(f"{r['peak_mb']:.0f}" for r in ranks)
        lines.append(f"| {names[mode]} | {world} | {ranks[0]['per_rank']} | {ms:.0f} | {ms / ref:.2f}x | {state} | "
                     f"{peak} |")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
