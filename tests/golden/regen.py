"""Regenerate ``tests/golden/losses.json``: ``python tests/golden/regen.py``.

Ten optimizer steps of the ``debug`` preset on one fixed synthetic batch with a fixed seed, through the real
Trainer (loss with label smoothing and z-loss, AdamW groups, warm-up + cosine schedule, gradient accumulation
over two micro-batches, clipping). Any change to init, loss, schedule, accumulation or the optimizer moves
these numbers; regenerate only when such a change is intended, and say why in the commit.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from llmcore import ModelConfig, TransformerLM
from llmcore.training import TrainConfig, Trainer

GOLDEN = Path(__file__).with_name("losses.json")
SEED = 1337
TRAIN = dict(max_steps=10, batch_size=4, grad_accum=2, lr=1e-2, min_lr=1e-3, warmup_steps=2, schedule="cosine",
             weight_decay=0.1, grad_clip=1.0, label_smoothing=0.05, z_loss=1e-4, seed=SEED, device="cpu",
             eval_interval=100, progress=False, num_samples=0)


class FixedBatch:
    """Always the same (8, 32) batch: x random ids, y = x shifted by one (the next-token targets)."""

    def __init__(self, vocab_size: int) -> None:
        g = torch.Generator().manual_seed(SEED)
        ids = torch.randint(0, vocab_size, (8, 33), generator=g)
        self.x, self.y = ids[:, :-1], ids[:, 1:]

    def sample_batch(self, batch_size: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        assert batch_size == len(self.x)
        return {"input_ids": self.x, "labels": self.y}


def trajectory() -> list[float]:
    """The ten training losses."""
    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    config = ModelConfig.from_preset("debug")
    model = TransformerLM(config)
    losses: list[float] = []
    trainer = Trainer(model, TrainConfig(**TRAIN), FixedBatch(config.vocab_size))
    trainer.add_callback("on_step_end", lambda t, info: losses.append(info["train_loss"]))
    trainer.fit()
    return losses


def main() -> int:
    losses = trajectory()
    GOLDEN.write_text(json.dumps({"losses": losses, "preset": "debug", "train": TRAIN,
                                  "torch": torch.__version__, "regenerate": "python tests/golden/regen.py"},
                                 indent=2) + "\n", encoding="utf-8")
    sys.stdout.write(f"wrote {GOLDEN}: {[round(x, 4) for x in losses]}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
