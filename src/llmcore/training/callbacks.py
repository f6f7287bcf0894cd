"""Callbacks: everything the Trainer does besides the optimisation step itself.

A callback is any object with methods named after events, or a plain function registered with
``trainer.add_callback(event, fn)``. Each is called as ``fn(trainer, info)`` where ``info`` is a dict:

=================  =============================================================================================
``on_train_start``  ``{"resumed_from": path or None}``, after the optimizer is built (and state restored)
``on_step_end``     ``{"step", "train_loss", "lr", "grad_norm", "tokens", "tokens_per_s", "mfu", "epoch"}``
``on_eval``         ``{"step", "val_loss", "val_ppl", "val_acc", "is_best"}`` (val keys only with validation data;
                    ``val_acc`` only when the outputs are scores over the labels' classes)
``on_train_end``    the summary dict that ``fit()`` returns
=================  =============================================================================================

``step`` counts completed optimizer steps. Built-in callbacks (added by the Trainer from its config): a tqdm
progress bar, a ``metrics.jsonl`` logger, early stopping, checkpointing (keep-last-K plus the best) and text
samples at the end of training. Only rank 0 writes files or shows progress; the library never calls ``print``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..errors import TokenizerError
from ..io import read_jsonl
from ..modules import eval_mode
from ..rundir import append_text, write_text
from .checkpoint import list_checkpoints, prune_checkpoints, save_checkpoint, trainer_snapshot
from .distributed import unwrap
from .fsdp import is_sharded, reshard
from .fsdp import save_pretrained as save_sharded_pretrained

logger = logging.getLogger("llmcore.training")

EVENTS = ("on_train_start", "on_step_end", "on_eval", "on_train_end")

# Dense bf16 peak FLOP/s per accelerator, for MFU (Chowdhery et al. 2022, App. B). Matched against the CUDA
# device name; set TrainConfig.peak_flops for anything else (CPUs vary too much to guess).
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "L4": 121e12,
              "4090": 165e12, "3090": 71e12, "V100": 125e12, "T4": 65e12}


def peak_flops(device: torch.device, configured: float | None) -> float | None:
    """Peak FLOP/s of one device: the configured value, else a table lookup for known GPUs, else None."""
    if configured:
        return configured
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return next((v for k, v in PEAK_FLOPS.items() if k in name), None)
    return None


class ProgressBar:
    """tqdm bar with loss, learning rate, tokens/s and (when the peak is known) MFU.

    Evaluation results are written above the bar; without a bar (``enabled=False`` or not rank 0) they go to
    the ``llmcore.training`` logger at INFO level instead.
    """

    def __init__(self, log_interval: int = 10, enabled: bool = True) -> None:
        self.log_interval, self.enabled, self.bar = log_interval, enabled, None

    def on_train_start(self, trainer: Any, info: dict[str, Any]) -> None:
        self.bar = tqdm(total=trainer.config.max_steps, initial=trainer.state["step"], dynamic_ncols=True,
                        disable=not (self.enabled and trainer.env.is_main), desc="train")
        if info.get("resumed_from") and trainer.env.is_main:
            self._write(f"resumed from step {trainer.state['step']} ({info['resumed_from']})")

    def on_step_end(self, trainer: Any, info: dict[str, Any]) -> None:
        self.bar.update(1)
        if info["step"] % self.log_interval == 0:
            post = {"loss": f"{info['train_loss']:.4f}", "lr": f"{info['lr']:.2e}",
                    "tok/s": f"{info['tokens_per_s']:.0f}"}
            if info.get("mfu") is not None:
                post["mfu"] = f"{100 * info['mfu']:.1f}%"
            self.bar.set_postfix(post, refresh=False)

    def on_eval(self, trainer: Any, info: dict[str, Any]) -> None:
        if "val_loss" in info and trainer.env.is_main:
            # Perplexity means something for a loss over tokens only; a loss_fn marked reports_perplexity=False
            # (class labels, llmcore.finetune.classification_loss) shows its loss and accuracy alone.
            ppl = getattr(trainer.loss_fn, "reports_perplexity", True)
            line = (f"step {info['step']}: val loss {info['val_loss']:.4f}"
                    + (f", ppl {info['val_ppl']:.2f}" if ppl else "")
                    + (f", acc {info['val_acc']:.3f}" if "val_acc" in info else "")
                    + (" (best)" if info.get("is_best") else ""))
            self._write(line)

    def _write(self, line: str) -> None:
        """Above the bar, or to the ``llmcore.training`` logger without one."""
        if self.bar.disable:
            logger.info(line)
        else:
            self.bar.write(line)

    def on_train_end(self, trainer: Any, info: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.close()


class MetricsLogger:
    """Appends one JSON object per logged step and per evaluation to ``OUT/metrics.jsonl``."""

    def __init__(self, path: str | Path, log_interval: int = 10) -> None:
        self.path, self.log_interval = Path(path), log_interval

    def _write(self, trainer: Any, record: dict[str, Any]) -> None:
        if trainer.env.is_main:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            append_text(self.path, json.dumps(record) + "\n")  # never through a symlink

    def on_train_start(self, trainer: Any, info: dict[str, Any]) -> None:
        if trainer.env.is_main and (self.path.exists() or self.path.is_symlink()):  # resuming: drop what the killed run logged past the checkpoint
            keep = [r for r in read_jsonl(self.path) if r.get("step", 0) <= trainer.state["step"]]
            write_text(self.path, "".join(json.dumps(r) + "\n" for r in keep))

    def on_step_end(self, trainer: Any, info: dict[str, Any]) -> None:
        if info["step"] % self.log_interval == 0 or info["step"] == trainer.config.max_steps:
            self._write(trainer, {k: v for k, v in info.items() if v is not None})

    def on_eval(self, trainer: Any, info: dict[str, Any]) -> None:
        if "val_loss" in info:
            self._write(trainer, info)


class EarlyStopping:
    """Stop when the validation loss has not improved for ``patience`` evaluations in a row.

    The counter lives in ``trainer.state["evals_since_best"]`` (kept in checkpoints), so resuming continues it.
    """

    def __init__(self, patience: int) -> None:
        self.patience = patience

    def on_eval(self, trainer: Any, info: dict[str, Any]) -> None:
        if "val_loss" in info and trainer.state["evals_since_best"] >= self.patience:
            trainer.should_stop = True
            trainer.state["stopped_early"] = True
            logger.info("early stopping at step %d: no improvement over %.4f (step %s) for %d evaluations",
                        info["step"], trainer.state["best_val_loss"], trainer.state["best_step"], self.patience)


class Checkpointer:
    """Saves a checkpoint at every evaluation and keeps the newest ``keep_last`` plus the best one.

    The run directory also gets ``config.json`` + ``model.safetensors`` (the best model by validation loss, or
    the latest without validation data) and ``tokenizer/``, so ``TransformerLM.from_pretrained(out_dir)`` and
    ``load_tokenizer(out_dir)`` work on it directly.
    """

    def __init__(self, out_dir: str | Path, keep_last: int = 1, keep_best: bool = True) -> None:
        self.out_dir, self.keep_last, self.keep_best = Path(out_dir), keep_last, keep_best

    def on_train_start(self, trainer: Any, info: dict[str, Any]) -> None:
        if trainer.env.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            write_text(self.out_dir / "train_config.json", json.dumps(trainer.config.to_dict(), indent=2) + "\n")
            if trainer.tokenizer is not None and hasattr(trainer.tokenizer, "save"):
                trainer.tokenizer.save(self.out_dir / "tokenizer")

    def on_eval(self, trainer: Any, info: dict[str, Any]) -> None:
        if info.get("is_best"):
            trainer.state["best_checkpoint"] = f"ckpt-{info['step']:06d}"
        snapshot = trainer_snapshot(trainer)  # collective under DDP: every rank takes part
        sharded = is_sharded(trainer.model)  # FSDP: every rank writes its own rows, and gathers for the model
        if not (trainer.env.is_main or sharded):
            return
        path = save_checkpoint(self.out_dir, info["step"], trainer.model, trainer.optimizer,
                               trainer.param_names(), snapshot, trainer.env, trainer.device)
        model = unwrap(trainer.model)
        if hasattr(model, "save_pretrained") and (info.get("is_best") or "val_loss" not in info):
            if sharded:  # streamed from rank 0 one gathered tensor at a time: a normal model directory
                save_sharded_pretrained(trainer.model, self.out_dir, trainer.env, trainer.device)
            else:
                model.save_pretrained(self.out_dir)
        if not trainer.env.is_main:
            return
        best = trainer.state.get("best_checkpoint")
        keep = [self.out_dir / "trainer_state" / best] if self.keep_best and best else []
        prune_checkpoints(self.out_dir, self.keep_last, keep)
        logger.debug("saved %s (%d checkpoints kept)", path, len(list_checkpoints(self.out_dir)))


class SampleGenerator:
    """Generates a few text samples at the end of training (and every ``interval`` steps if set).

    Samples are shown with ``tqdm.write`` on rank 0 and appended to ``OUT/samples.txt`` when there is a run
    directory. Sampling uses its own seeded generator, so it does not disturb the training RNG.
    """

    def __init__(self, tokenizer: Any, num_samples: int = 2, prompt: str = "\n", max_new_tokens: int = 200,
                 temperature: float = 0.8, top_k: int | None = 200, interval: int | None = None,
                 out_dir: str | Path | None = None, seed: int = 0) -> None:
        self.tokenizer, self.num, self.prompt, self.max_new = tokenizer, num_samples, prompt, max_new_tokens
        self.temperature, self.top_k, self.interval, self.seed = temperature, top_k, interval, seed
        self.path = Path(out_dir) / "samples.txt" if out_dir is not None else None
        self.last: list[str] = []

    @torch.no_grad()
    def sample(self, model: torch.nn.Module, device: torch.device) -> list[str]:
        """``num_samples`` continuations of the prompt, decoded to text."""
        from ..generation import generate  # training does not need generation at import time

        try:
            ids = list(self.tokenizer.encode(self.prompt))
        except TokenizerError:  # e.g. the default "\n" with a char vocabulary of a one-line text
            ids = []
        ids = ids or [getattr(self.tokenizer, "bos_id", None) or 0]
        x = torch.tensor([ids], dtype=torch.long, device=device)
        with eval_mode(model):
            outs = [generate(model, x, max_new_tokens=self.max_new, do_sample=True, temperature=self.temperature,
                             top_k=self.top_k, seed=self.seed + i, sliding_window=True)[0].tolist()
                    for i in range(self.num)]
        return [self.tokenizer.decode(o) for o in outs]

    def _emit(self, trainer: Any, step: int) -> None:
        if not (trainer.env.is_main or is_sharded(trainer.model)):
            return  # a sharded model's forward is collective: every rank samples (the same seeds, the same text)
        self.last = self.sample(unwrap(trainer.model), trainer.device)
        if is_sharded(trainer.model):
            reshard(trainer.model)
        if not trainer.env.is_main:
            return
        text = "".join(f"--- sample {i + 1} (step {step}) ---\n{s}\n" for i, s in enumerate(self.last))
        if trainer.config.progress:
            tqdm.write(text.rstrip("\n"))
        else:
            logger.info("%s", text.rstrip("\n"))
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            append_text(self.path, text)

    def on_step_end(self, trainer: Any, info: dict[str, Any]) -> None:
        if self.interval and info["step"] % self.interval == 0 and info["step"] < trainer.config.max_steps:
            self._emit(trainer, info["step"])

    def on_train_end(self, trainer: Any, info: dict[str, Any]) -> None:
        self._emit(trainer, info["steps"])
        info["samples"] = self.last


def default_callbacks(trainer: Any) -> list[Any]:
    """The built-in callbacks a :class:`TrainConfig` asks for."""
    cfg = trainer.config
    cbs: list[Any] = [ProgressBar(cfg.log_interval, enabled=cfg.progress)]
    if cfg.patience:
        cbs.append(EarlyStopping(cfg.patience))
    if cfg.out_dir is not None:
        cbs += [MetricsLogger(Path(cfg.out_dir) / "metrics.jsonl", cfg.log_interval),
                Checkpointer(cfg.out_dir, cfg.keep_last, cfg.keep_best)]
    if trainer.tokenizer is not None and cfg.num_samples > 0:
        cbs.append(SampleGenerator(trainer.tokenizer, cfg.num_samples, cfg.sample_prompt, cfg.sample_tokens,
                                   cfg.sample_temperature, cfg.sample_top_k, cfg.sample_interval, cfg.out_dir,
                                   cfg.seed))
    return cbs


__all__ = ["EVENTS", "ProgressBar", "MetricsLogger", "EarlyStopping", "Checkpointer", "SampleGenerator",
           "default_callbacks", "peak_flops", "PEAK_FLOPS"]
