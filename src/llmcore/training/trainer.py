"""The Trainer: a thin loop that wires a model, data, the loss, AdamW and callbacks together.

It knows nothing about Transformers. A batch is a ``dict[str, Tensor]``: ``batch["labels"]`` is what the loss
reads, every other entry is passed to the model as a keyword, ``outputs = model(**inputs)``, and
``loss = loss_fn(outputs, batch)`` (summed over targets). So a language model (``input_ids``), an
encoder-decoder (``tgt_ids``, ``src_ids``, ``src_mask``) and a classifier (``input_ids``, ``attention_mask``)
all train unchanged, with no adapter. ``train_data`` needs ``sample_batch(batch_size, generator, rows=None)``
and ``val_data`` needs ``iter_eval(batch_size, max_batches)``, both giving such dicts; every llmcore dataset
(:class:`llmcore.data.TokenDataset`, ``PairDataset``, ``Seq2SeqPairs``, ``ClassificationDataset``) has both.
Everything else lives elsewhere: :class:`TrainConfig` in ``config.py``, the per-rank batch in ``batches.py``,
the loss in ``loss.py``, groups and schedules in ``optim.py``, saving in ``checkpoint.py``, logging / early
stopping / checkpointing / samples in ``callbacks.py``.

One optimizer step, exactly:

1. every strategy's ``on_step(step)``; the learning rate of each group is set to
   ``initial_lr · schedule(step)`` (``step`` = 0-based index of the step being taken);
2. the *global* batch of ``batch_size · grad_accum · world_size`` rows is drawn with one generator seeded
   from ``config.seed`` and identical on every rank; micro-batch i of rank r is the slice
   ``[(i·world + r)·batch_size, ... + batch_size)``, and each rank builds only its own rows (``batches.py``).
   The data stream is thus independent of how the batch is split, so k accumulated micro-batches equal one
   k-times larger batch, and N ranks equal one process;
3. each micro-batch's summed loss is divided by the number of targets (``labels != IGNORE_INDEX``) in the
   global batch (each rank counts its rows; one all-reduce per step) and back-propagated (``no_sync`` until the
   last one under DDP; under FSDP every micro-batch is reduce-scattered into the sharded gradients);
4. a non-finite loss or gradient norm stops the run with a :class:`TrainingError` before the weights change;
   gradients are clipped, AdamW steps.

Fine-tuning strategies (``llmcore.finetune``) hook in with ``setup(model, trainer)`` (start of ``fit``, before
the optimizer exists), ``param_groups(model, base_lr, weight_decay)`` (the first non-None result replaces the
default groups; groups need ``lr_mult``), ``schedule(step, max_steps)`` (replaces the LR schedule),
``on_step(step)`` and ``on_epoch(epoch)`` (after the step that completes epoch ``epoch`` = 1, 2, ...; epochs
are counted in tokens when the training data defines ``num_tokens`` or ``__len__`` in tokens). A strategy that
unfreezes parameters calls ``trainer.rebuild_optimizer()``: new parameters join as extra groups with fresh
state, the others keep their AdamW moments.

Under torchrun, ``config.distributed`` picks DDP (the default) or FSDP2 (``fsdp.py``: the model is sharded in
place, checkpoints are written by every rank, ``sharded.py``); ``activation_checkpointing`` recomputes each block
in the backward pass, with either engine or none.

``fit`` puts the model in train mode (after the strategies' ``setup``): a model from ``from_pretrained`` is in
eval mode, and fine-tuning it must not run with dropout off. ``evaluate`` restores the mode it found.
"""

from __future__ import annotations

import functools
import math
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

from .. import rundir
from ..errors import CheckpointError, ConfigError, DataError, TrainingError, TrainingInterrupted
from ..modules.quantized import has_quantized
from . import checkpoint as ckpt
from . import distributed as dist
from . import fsdp
from .batches import draw_batch, global_targets, micro_batches, rank_share, row_tokens
from .callbacks import EVENTS, default_callbacks, peak_flops
from .config import TrainConfig
from .loss import LossFn, default_loss, eval_metrics, eval_sums, model_inputs
from .optim import build_optimizer, build_schedule, check_groups, param_groups, set_lr


class Trainer:
    """Trains ``model`` on ``train_data``; see the module docstring for the exact step and the hooks.

    Args:
        model: any module called as ``model(**inputs)`` (the batch without ``"labels"``).
        config: a :class:`TrainConfig` (or a dict of its fields).
        train_data: ``sample_batch(batch_size, generator, rows=None) -> dict``; ``num_tokens`` enables epochs.
        val_data: ``iter_eval(batch_size, max_batches)`` yielding dicts; None = no evaluation.
        tokenizer: saved into the run directory and used for text samples.
        strategies: fine-tuning strategies (``llmcore.finetune``).
        callbacks: objects with ``on_train_start`` / ``on_step_end`` / ``on_eval`` / ``on_train_end`` methods.
        loss_fn: ``loss_fn(outputs, batch)`` returning the loss SUMMED over the batch's targets (the Trainer
            divides by the global target count); training and :meth:`evaluate` both use it. Default:
            :func:`~llmcore.training.loss.default_loss` (cross-entropy against ``batch["labels"]``) with the
            config's label smoothing and z-loss in training, and plain cross-entropy in evaluation, so the
            validation perplexity is the true one.
    """

    def __init__(self, model: nn.Module, config: TrainConfig | dict[str, Any], train_data: Any,
                 val_data: Any = None, tokenizer: Any = None, strategies: Iterable[Any] = (),
                 callbacks: Iterable[Any] = (), loss_fn: LossFn | None = None) -> None:
        self.config = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
        if not hasattr(train_data, "sample_batch"):
            raise DataError(f"train_data ({type(train_data).__name__}) needs sample_batch(batch_size, generator).")
        self.model, self.train_data, self.val_data, self.tokenizer = model, train_data, val_data, tokenizer
        self.strategies = list(strategies)
        self.loss_fn = loss_fn or functools.partial(default_loss, label_smoothing=self.config.label_smoothing,
                                                    z_loss=self.config.z_loss)
        self.eval_loss_fn = loss_fn or default_loss  # the default without smoothing / z-loss: true perplexity
        self.env = dist.detect()
        self.device = dist.resolve_device(self.config.device, self.env)
        self.generator = torch.Generator().manual_seed(self.config.seed)  # data order; same on every rank
        self.optimizer: torch.optim.Optimizer | None = None
        self.tokenizer_sha256: str | None = None  # recorded in checkpoints; a resume with another one is refused
        self.wrapped: nn.Module = model  # the module called in training: maybe compiled, maybe DDP
        self.mode = "none"  # the engine fit() runs on: none (one process), ddp or fsdp (TrainConfig.distributed)
        self._eval_model, self._seq_len = model, None
        self.should_stop = False
        self.state: dict[str, Any] = {"step": 0, "tokens_seen": 0, "epoch": 0, "best_val_loss": None,
                                      "best_step": None, "evals_since_best": 0, "best_checkpoint": None,
                                      "last_val_loss": None, "stopped_early": False}
        self._callbacks: dict[str, list[Callable]] = defaultdict(list)
        for cb in [*default_callbacks(self), *callbacks]:
            for event in EVENTS:
                if callable(getattr(cb, event, None)):
                    self.add_callback(event, getattr(cb, event))

    # ------------------------------------------------------------------ hooks
    def add_callback(self, event: str, fn: Callable[[Trainer, dict[str, Any]], None]) -> None:
        """Call ``fn(trainer, info)`` on ``event`` (one of :data:`callbacks.EVENTS`)."""
        if event not in EVENTS:
            raise ConfigError(f"Unknown callback event {event!r}; events are: {', '.join(EVENTS)}.")
        self._callbacks[event].append(fn)

    def _fire(self, event: str, info: dict[str, Any]) -> None:
        for fn in self._callbacks[event]:
            fn(self, info)

    def _hooks(self, name: str) -> list[Callable[..., Any]]:
        """The strategies' methods called ``name``, in strategy order (a strategy may define any of them)."""
        return [getattr(s, name) for s in self.strategies if callable(getattr(s, name, None))]

    def param_names(self) -> dict[int, str]:
        """{id(parameter): name} for the plain model (tied parameters under their first name)."""
        return {id(p): n for n, p in dist.unwrap(self.model).named_parameters()}

    def _groups(self) -> list[dict[str, Any]]:
        cfg, model = self.config, dist.unwrap(self.model)
        for hook in self._hooks("param_groups"):
            groups = hook(model, cfg.lr, cfg.weight_decay)
            if groups is not None:
                return check_groups(model, groups, cfg.lr)
        return param_groups(model, cfg.weight_decay, cfg.lr)

    def _schedule(self) -> Callable[[int], float]:
        cfg = self.config
        hooks = self._hooks("schedule")  # the first strategy with a schedule replaces the config's
        if hooks:
            return lambda step: hooks[0](step, cfg.max_steps)
        return build_schedule(cfg.schedule, cfg.warmup_steps, cfg.max_steps, cfg.min_lr / cfg.lr)

    def _wrap(self) -> None:
        cfg = self.config
        if cfg.activation_checkpointing and not fsdp.checkpoint_activations(dist.unwrap(self.model)):
            raise ConfigError(f"activation_checkpointing=True needs the model's blocks in an nn.ModuleList; "
                              f"{type(dist.unwrap(self.model)).__name__} has none. Set it to False.")
        model = torch.compile(self.model) if cfg.compile else self.model
        self._eval_model = model  # evaluation skips DDP: no gradients, batches are shared out by hand
        if self.mode == "fsdp":  # in place: a compile wrapper around the model stays valid
            fsdp.shard(dist.unwrap(model), self.env, self.device, bf16=cfg.dtype == "bfloat16")
            self.wrapped = model
        else:
            self.wrapped = dist.wrap(model, self.env, self.device)

    def rebuild_optimizer(self) -> None:
        """Add parameters that became trainable (fresh state) to the optimizer; others keep their state."""
        if self.optimizer is None:
            return  # fit() has not built it yet; it will include them
        present = {id(p) for g in self.optimizer.param_groups for p in g["params"]}
        names = self.param_names()
        for g in self._groups():
            new = [p for p in g["params"] if id(p) not in present]
            if new:
                self.optimizer.add_param_group({**g, "params": new, "names": [names[id(p)] for p in new]})
        if self.mode == "ddp":  # DDP only reduces gradients of parameters trainable when it was built
            self._wrap()  # (FSDP2 follows requires_grad as it changes: nothing to redo)

    # ------------------------------------------------------------------ training
    def fit(self, resume: bool = False) -> dict[str, Any]:
        """Train for ``max_steps`` (or until early stopping / ``max_epochs``); returns a summary dict.

        ``resume=True`` continues the newest complete checkpoint in ``out_dir`` exactly where it stopped.
        """
        cfg = self.config
        if has_quantized(self.model):  # evaluate() works on one; training has nothing to update
            raise TrainingError(f"{type(self.model).__name__} is quantized (int8 layers have no gradient); train "
                                "the float model and quantize it after training (model.quantize('int8')).")
        owner = cfg.out_dir is not None and self.env.is_main  # only rank 0 writes, so only it locks
        if owner:
            rundir.claim_dir(cfg.out_dir, "llmcore Trainer.fit")
            rundir.lock_dir(cfg.out_dir)
        try:
            return self._fit(resume)
        finally:
            # Drop the DDP wrapper while the process group is up: its Reducer holds the group, and a Reducer freed
            # after destroy_process_group frees the group itself, joining gloo threads that wait for the GIL it
            # holds (a hang at exit, seen under torchrun). evaluate() never used it.
            self.wrapped = self._eval_model
            if owner:
                rundir.unlock_dir(cfg.out_dir)

    def _fit(self, resume: bool) -> dict[str, Any]:
        cfg = self.config
        # Joins the process group under torchrun and leaves it up: evaluate() after fit, a second Trainer and the
        # caller's own collectives need it, and a group the caller created is not ours to destroy (distributed.py)
        self.env, _ = dist.setup(self.device, self.env)
        torch.manual_seed(cfg.seed + self.env.rank)  # model-side randomness (dropout) differs per rank
        self.mode = dist.check_mode(cfg.distributed, self.env)
        if self.mode != "fsdp":  # FSDP moves each rank's shard to the device as it shards (fsdp.shard)
            self.model.to(self.device)
        for s in self.strategies:
            s.setup(self.model, self)
        self.model.train()  # a from_pretrained model is in eval mode; fine-tuning needs dropout on
        path = ckpt.find_resume_checkpoint(cfg.out_dir) if resume else None
        if path is None and cfg.out_dir is not None and ckpt.latest_checkpoint(cfg.out_dir) is not None:
            raise CheckpointError(f"{cfg.out_dir} already holds checkpoints of an earlier run "
                                  f"({ckpt.latest_checkpoint(cfg.out_dir).name}); pass --resume (resume=True) "
                                  "to continue it, or use another --out directory.")
        meta = ckpt.read_checkpoint(path) if path else None  # schema-checked before anything is written
        self.tokenizer_sha256 = ckpt.tokenizer_fingerprint(self.tokenizer) if cfg.out_dir is not None else None
        if meta is not None:
            ckpt.check_tokenizer(path, meta, self.tokenizer_sha256)
            ckpt.check_strategies(path, meta, self.strategies)  # values, not only types (set up above)
            ckpt.check_trainable(path, self.model, meta)
            ckpt.restore_trainable(self.model, meta)  # before DDP registers its hooks
        self._wrap()
        if meta is not None:  # after wrapping: a sharded model reads only its rows (any saved world size)
            ckpt.load_model_weights(path, self.model, meta, self.env, self.device)
        self.optimizer = build_optimizer(self._groups(), cfg.lr, cfg.betas, cfg.eps, self.device.type)
        if meta is not None:
            ckpt.load_optimizer(path, self.optimizer, self.param_names(), meta["optimizer"], self.env,
                                self.device)
            ckpt.restore_trainer(self, meta)
        self._fire("on_train_start", {"resumed_from": str(path) if path else None})
        try:
            summary = self._loop()
        except KeyboardInterrupt as e:  # Ctrl-C: say where the run stopped and what a resume continues from
            if isinstance(e, TrainingInterrupted):
                raise
            last = ckpt.latest_checkpoint(cfg.out_dir) if cfg.out_dir is not None else None
            raise TrainingInterrupted(self.state["step"], ckpt.checkpoint_step(last) if last else None,
                                      None if cfg.out_dir is None else str(cfg.out_dir)) from e
        self._fire("on_train_end", summary)
        return summary

    def _loop(self) -> dict[str, Any]:
        cfg, state, schedule = self.config, self.state, self._schedule()
        raw = dist.unwrap(self.model)
        n_tokens = getattr(self.train_data, "num_tokens", None) or (
            len(self.train_data) if hasattr(self.train_data, "__len__") else None)
        peak = peak_flops(self.device, cfg.peak_flops)
        last, train_time, tokens_done, fpt = None, 0.0, 0, None
        while state["step"] < cfg.max_steps and not self.should_stop:
            step = state["step"]
            for hook in self._hooks("on_step"):
                hook(step)
            lr_mult = schedule(step)
            set_lr(self.optimizer, lr_mult)
            t0 = time.perf_counter()
            loss, grad_norm, tokens = self._train_step(step)
            dt = time.perf_counter() - t0
            train_time, tokens_done = train_time + dt, tokens_done + tokens
            state["step"], state["tokens_seen"] = step + 1, state["tokens_seen"] + tokens
            if n_tokens:
                epoch = state["tokens_seen"] // n_tokens
                for e in range(state["epoch"] + 1, epoch + 1):
                    for hook in self._hooks("on_epoch"):
                        hook(e)
                state["epoch"] = epoch
                if cfg.max_epochs is not None and state["tokens_seen"] >= cfg.max_epochs * n_tokens:
                    self.should_stop = True
            if fpt is None and hasattr(raw, "flops_per_token"):
                fpt = raw.flops_per_token(self._seq_len)  # training FLOPs per token, for MFU
            mfu = fpt * tokens / dt / (peak * self.env.world_size) if fpt and peak else None
            last = {"step": step + 1, "train_loss": loss, "lr": cfg.lr * lr_mult, "grad_norm": grad_norm,
                    "tokens": state["tokens_seen"], "tokens_per_s": tokens / dt, "mfu": mfu, "epoch": state["epoch"]}
            self._fire("on_step_end", last)
            if (step + 1) % cfg.eval_interval == 0 or step + 1 == cfg.max_steps or self.should_stop:
                self._fire("on_eval", self._track(self.evaluate() if self.val_data is not None else {}))
        return {"steps": state["step"], "final_train_loss": last and last["train_loss"],
                "final_val_loss": state["last_val_loss"], "best_val_loss": state["best_val_loss"],
                "best_step": state["best_step"], "tokens_seen": state["tokens_seen"],
                "tokens_per_s": tokens_done / train_time if train_time else None,
                "stopped_early": state["stopped_early"], "out_dir": cfg.out_dir}

    def _autocast(self) -> Any:
        if self.config.dtype == "bfloat16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def _forward(self, inputs: dict[str, torch.Tensor]) -> Any:
        try:
            with self._autocast():
                return self.wrapped(**inputs)
        except Exception as e:  # torch.compile fails lazily, on the first call
            if not self.config.compile:
                raise
            warnings.warn(f"torch.compile failed ({type(e).__name__}: {e}); continuing without compile.",
                          stacklevel=2)
            self.config.compile = False
            self._wrap()
            with self._autocast():
                return self.wrapped(**inputs)

    def _train_step(self, step: int) -> tuple[float, float | None, int]:
        """One optimizer step over the global batch; returns (mean loss, grad norm, tokens)."""
        cfg, env = self.config, self.env
        B, k, W = cfg.batch_size, cfg.grad_accum, env.world_size
        batch = draw_batch(self.train_data, self.generator, B, k, env)  # this rank's k·B rows
        tokens_per_row = self._seq_len = row_tokens(batch)
        count = global_targets(batch, self.device, env, step)
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        for i, mb in enumerate(micro_batches(batch, B, self.device)):
            # FSDP reduce-scatters every micro-batch into the sharded gradients (no_sync would keep whole
            # unsharded gradients alive between micro-batches, the memory FSDP is there to save)
            sync = not env.enabled or i == k - 1 or self.mode == "fsdp"
            with nullcontext() if sync else self.wrapped.no_sync():
                loss = self.loss_fn(self._forward(model_inputs(mb)), mb)
                (loss * (W / count)).backward()  # DDP averages over W ranks: × W makes it a sum
            total += loss.detach().double()
        mean_loss = float(dist.all_reduce_sum(total, env)) / count
        grad_norm = None
        if cfg.grad_clip:
            # in the model's parameter order, not the optimizer's: a rebuilt optimizer (gradual unfreezing after
            # a resume) lists its groups in another order, and the norm's float sum would differ in the last bit
            rank = {id(p): i for i, p in enumerate(self.model.parameters())}
            params = sorted((p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None),
                            key=lambda p: rank.get(id(p), len(rank)))
            grad_norm = fsdp.scalar(nn.utils.clip_grad_norm_(params, cfg.grad_clip))  # global norm over shards
        if not math.isfinite(mean_loss) or (grad_norm is not None and not math.isfinite(grad_norm)):
            self.optimizer.zero_grad(set_to_none=True)
            last = ckpt.latest_checkpoint(cfg.out_dir) if cfg.out_dir else None
            what = f"loss is {mean_loss}" if not math.isfinite(mean_loss) else f"gradient norm is {grad_norm}"
            raise TrainingError(
                f"Training diverged at step {step + 1}: the {what}. Weights were not updated; "
                + (f"the last good checkpoint is {last} (resume with --resume). " if last else "")
                + "Lower the learning rate, keep grad_clip on, or train in float32.")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return mean_loss, grad_norm, B * k * W * tokens_per_row

    # ------------------------------------------------------------------ evaluation
    def _track(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """Adds ``step`` and ``is_best`` and updates the best-loss / early-stopping counters."""
        state = self.state
        metrics = {"step": state["step"], **metrics}
        if "val_loss" in metrics:
            v = metrics["val_loss"]
            state["last_val_loss"] = v
            metrics["is_best"] = state["best_val_loss"] is None or v < state["best_val_loss"]
            if metrics["is_best"]:
                state["best_val_loss"], state["best_step"], state["evals_since_best"] = v, state["step"], 0
            else:
                state["evals_since_best"] += 1
        return metrics

    def evaluate(self, data: Any = None, max_batches: int | None = None) -> dict[str, float]:
        """Mean loss, perplexity = exp(loss) and accuracy over ``data`` (default: the validation set).

        The model call and the loss are those of training (``model(**inputs)``, ``loss_fn``); with the default
        loss it is plain cross-entropy (no label smoothing / z-loss), so the perplexity is the true one.
        ``val_acc`` (token or class accuracy) is reported only when the outputs are scores over the labels'
        classes. The model's train/eval mode is restored afterwards. ``max_batches``
        (default ``eval_batches``) counts batches of ``batch_size`` per rank: under DDP the first
        ``max_batches · world_size`` batches are shared out between ranks and the sums all-reduced, so N ranks
        with batch b score the same windows as one process with batch N·b.
        """
        data = data if data is not None else self.val_data
        if data is None:
            raise DataError("evaluate() needs data: pass val_data to the Trainer or data= here.")
        n = (max_batches or self.config.eval_batches) * self.env.world_size  # per-rank batches, shared out
        mine = rank_share(data.iter_eval(self.config.batch_size, n), self.env, even=self.mode == "fsdp")
        sums = eval_sums(self._eval_model, mine, self.device, self._autocast, self.eval_loss_fn)
        if self.mode == "fsdp":
            fsdp.reshard(self.model)  # FSDP leaves the root unsharded after a forward without backward
        return eval_metrics(dist.all_reduce_sum(sums, self.env))


__all__ = ["Trainer", "TrainConfig"]
