"""Data-parallel training with ``torchrun`` + DDP or FSDP2, detected from the environment; nothing home-made.

``torchrun --nproc_per_node N -m llmcore train ...`` starts N processes with ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK`` set. :func:`setup` reads them, joins the process group (gloo on CPU, NCCL on CUDA) and picks
``cuda:LOCAL_RANK`` as the device; a plain ``python`` run is rank 0 of 1 and touches nothing here.

How the Trainer uses it (see ``trainer.py``):

* every rank draws the same global batch from one data generator seeded identically on all ranks, and
  rank r trains on slice r of it, so an N-process run sees exactly the data of a 1-process run with an
  N-times larger batch;
* the loss of each micro-batch is divided by the global number of target tokens, and DDP averages
  gradients over ranks, so the update equals the single-process one;
* only rank 0 writes files (checkpoints, metrics, samples); logged losses are all-reduced.

``TrainConfig.distributed`` picks the engine: ``ddp`` (the default: a full replica per rank, gradients
all-reduced) or ``fsdp`` (FSDP2: parameters, gradients and optimizer state sharded, see ``fsdp.py``; every rank
then writes its own part of each checkpoint). ``none`` means one process; under torchrun it is refused.

Who owns the process group: whoever created it. A group that is already initialised when :func:`setup` runs (the
user's own ``init_process_group``, or an earlier ``setup``) is used as it is and never destroyed here. A group
:func:`setup` creates stays up for the rest of the process, so a second ``Trainer.fit``, a
``Trainer.evaluate`` after ``fit`` and the collectives a command runs after training (gathering a sharded
adapter) all find it; the entry point that called ``setup`` may leave it with :func:`cleanup`, and an exit
hook leaves it otherwise. Destroying it at the end of ``fit`` would break all three, and re-creating it on
the same ``MASTER_PORT`` can read the previous group's rendezvous keys.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from ..errors import ConfigError


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in a data-parallel run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def detect() -> DistEnv:
    """Read ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` (set by torchrun); rank 0 of 1 when absent."""
    try:
        rank = int(os.environ.get("RANK", 0))
        world = int(os.environ.get("WORLD_SIZE", 1))
        local = int(os.environ.get("LOCAL_RANK", rank))
    except ValueError as e:
        raise ConfigError(f"RANK/WORLD_SIZE/LOCAL_RANK must be integers ({e}); launch with torchrun.") from e
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"RANK={rank} is outside WORLD_SIZE={world}; launch with torchrun.")
    return DistEnv(rank, world, local)


def restart_count() -> int:
    """How often ``torchrun --max-restarts N`` has restarted this job (``TORCHELASTIC_RESTART_COUNT``; 0 without
    torchrun). A restarted job re-runs the same command, so ``llmcore train`` resumes then by itself."""
    try:
        return max(0, int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0)))
    except ValueError:
        return 0


def resolve_device(spec: str, env: DistEnv) -> torch.device:
    """``auto`` → CUDA when available, else CPU; under torchrun each rank takes ``cuda:LOCAL_RANK``."""
    if spec not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device={spec!r} is unknown; use auto, cpu or cuda.")
    if spec == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' was asked for but CUDA is not available; use --device cpu.")
    if spec == "cpu" or (spec == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", env.local_rank if env.enabled else torch.cuda.current_device())


def setup(device: torch.device, env: DistEnv | None = None) -> tuple[DistEnv, bool]:
    """Join the process group if this is a multi-process run. Returns (env, whether we created the group).

    An initialised group is used as it is. A group created here lives until :func:`cleanup` (by the caller
    that got ``True``) or the end of the process, whichever comes first (see the module docstring)."""
    env = env or detect()
    if not env.enabled or dist.is_initialized():
        return env, False
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if restart_count() > 0 and "MASTER_ADDR" in os.environ:
        # torchrun keeps one TCPStore across restarts (rendezvous store sharing) and init_process_group adds no
        # per-attempt prefix, so a restarted rank could read the dead attempt's gloo/NCCL addresses and wait
        # forever to connect to them (seen here: every other restart hung in ProcessGroupGloo's connectFullMesh).
        # A prefix per restart keeps each attempt's keys apart.
        from datetime import timedelta

        agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"  # then every rank is a client
        store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), env.world_size,
                              is_master=env.rank == 0 and not agent_store, timeout=timedelta(minutes=30))
        dist.init_process_group(backend, store=dist.PrefixStore(f"llmcore/restart{restart_count()}/", store),
                                rank=env.rank, world_size=env.world_size)
    else:
        dist.init_process_group(backend=backend)
    global _created_group
    atexit.unregister(_leave_at_exit)  # registered once, however often a group is created and left
    atexit.register(_leave_at_exit)
    _created_group = dist.group.WORLD
    return env, True


_created_group = None  # the default group setup() created, while it is up


def cleanup(created: bool) -> None:
    """Leave the process group, if :func:`setup` created it (``created`` is what it returned)."""
    global _created_group
    if created and dist.is_initialized() and dist.group.WORLD is _created_group:
        dist.destroy_process_group()
    if created:
        _created_group = None


def _leave_at_exit() -> None:
    """The exit hook of a group :func:`setup` created and nobody left (NCCL warns about a group never destroyed)."""
    if _created_group is not None and dist.is_initialized() and dist.group.WORLD is _created_group:
        cleanup(True)


MODES = ("ddp", "fsdp", "none")  # TrainConfig.distributed


def check_mode(mode: str, env: DistEnv) -> str:
    """The engine a run uses: ``mode`` on several processes, ``none`` on one. ConfigError for ``none`` under
    torchrun (N unsynchronised replicas writing one run directory) and for unknown names."""
    if mode not in MODES:
        raise ConfigError(f"distributed={mode!r} is unknown; use one of {', '.join(MODES)}.")
    if not env.enabled:
        return "none"
    if mode == "none":
        raise ConfigError(f"distributed='none' under torchrun (WORLD_SIZE={env.world_size}) would train "
                          f"{env.world_size} unsynchronised copies of the model; use --set distributed=ddp or "
                          "distributed=fsdp, or run one process without torchrun.")
    return mode


def wrap(model: nn.Module, env: DistEnv, device: torch.device) -> nn.Module:
    """``DistributedDataParallel(model)`` when running on several processes, else the model itself (FSDP2
    shards in place instead: ``fsdp.shard``).

    DDP registers gradient hooks only for parameters trainable at wrap time; the Trainer re-wraps after a
    fine-tuning strategy unfreezes more of them. FSDP2 follows ``requires_grad`` as it changes.
    """
    if not env.enabled:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return DDP(model, device_ids=ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DDP and ``torch.compile`` wrappers."""
    while True:
        if isinstance(model, DDP):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def model_class(model: nn.Module) -> type:
    """The model's own class: FSDP2 turns ``TransformerLM`` into a generated ``FSDPTransformerLM`` subclass,
    whose name must not reach a checkpoint or ``config.json``."""
    cls = type(unwrap(model))
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # a torch built without distributed support
        return cls
    return next(c for c in cls.__mro__ if not issubclass(c, FSDPModule))


def all_reduce_sum(tensor: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (a no-op on one process); returns it."""
    if env.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_tensor(tensor: torch.Tensor, env: DistEnv, device: torch.device) -> list[torch.Tensor]:
    """Every rank's copy of a same-shaped ``tensor``, in rank order, on the CPU."""
    if not env.enabled:
        return [tensor.cpu()]
    tensor = tensor.to(device)
    out = [torch.empty_like(tensor) for _ in range(env.world_size)]
    dist.all_gather(out, tensor)
    return [t.cpu() for t in out]


def barrier(env: DistEnv) -> None:
    """Wait for every rank (a no-op on one process)."""
    if env.enabled and dist.is_initialized():
        dist.barrier()


__all__ = ["DistEnv", "MODES", "detect", "restart_count", "resolve_device", "setup", "cleanup", "check_mode", "wrap",
           "unwrap", "model_class", "all_reduce_sum", "all_gather_tensor", "barrier"]
