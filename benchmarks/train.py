"""Training-step wall time: llmcore's nanogpt preset (char-small shapes, GPT-2 layout) vs an equivalent Hugging Face GPT2LMHeadModel.

    python benchmarks/train.py                 # 50 measured steps each, after 10 warm-up steps
    python benchmarks/train.py --steps 100 --threads 1

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
import statistics
import sys
import time

import torch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=12)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = p.parse_args(argv)
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


if __name__ == "__main__":
    raise SystemExit(main())
