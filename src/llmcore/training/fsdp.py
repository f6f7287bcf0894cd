"""FSDP2 (``torch.distributed.fsdp.fully_shard``): the model sharded across ranks, and what that changes.

``TrainConfig(distributed="fsdp")`` (``--set distributed=fsdp``) under ``torchrun`` shards every block (each
element of the model's outermost ``nn.ModuleList``s, e.g. ``TransformerLM.blocks``) and then the root module
(embeddings, final norm, head): each rank keeps 1/N of every parameter, gradient and AdamW moment, and a
block's full weights exist only while that block runs (all-gathered before, freed after; gradients are
reduce-scattered). With ``dtype="bfloat16"`` the blocks compute with bf16 copies of the weights and reduce
gradients in fp32 (``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)``); the sharded master weights
and the optimizer stay fp32. Nothing here is home-made: sharding, gathering and reduction are FSDP2's, on a
1-D ``DeviceMesh`` over the process group (gloo on CPU, NCCL on CUDA; see ``distributed.py``).

What a sharded model changes for the rest of the library:

* its parameters are ``DTensor``s (``to_local()`` is this rank's rows; ``full_tensor()`` gathers, a collective);
  names are unchanged (no wrapper prefix), but ``type(model)`` is a generated ``FSDP<Class>`` subclass, so the
  architecture is read with :func:`llmcore.training.distributed.model_class`;
* every forward pass is collective: all ranks must run the same number of them (evaluation pads the ranks
  that have fewer batches, see ``batches.rank_share``; text samples are drawn on every rank);
* checkpoints are written by every rank, each its own rows (``sharded.py``), and the run directory's
  ``model.safetensors`` is streamed from rank 0 one gathered tensor at a time (:func:`save_pretrained`), so
  ``from_pretrained`` / ``convert`` read it like any other model and no rank ever holds the whole model twice;
* after ``fit()`` the model stays sharded; its full weights are in ``OUT/model.safetensors``.

The model is built whole on every rank (the same seed gives the same initial weights) and sharded before it
moves to the device, so a GPU holds only its shard; the host holds the whole model while it is built.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .distributed import DistEnv, all_gather_tensor, all_reduce_sum, model_class, unwrap


def is_dtensor(t: Any) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def is_sharded(model: nn.Module) -> bool:
    """Whether ``model`` (or the module inside its compile wrapper) went through ``fully_shard``."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(unwrap(model), FSDPModule)


def block_units(model: nn.Module) -> list[nn.Module]:
    """The elements of the model's outermost ``nn.ModuleList``s (blocks, encoder and decoder layers), in order:
    the units FSDP shards one by one and activation checkpointing recomputes one by one."""
    units: list[nn.Module] = []
    taken: list[str] = []
    for name, m in model.named_modules():
        if isinstance(m, nn.ModuleList) and not any(name.startswith(t + ".") for t in taken):
            units.extend(m)
            taken.append(name)
    return units


def checkpoint_activations(model: nn.Module) -> int:
    """Recompute each block's activations in the backward pass instead of keeping them (``torch.utils.checkpoint``,
    non-reentrant, RNG state preserved so dropout masks repeat). Idempotent; returns the number of blocks.

    The block's ``forward`` is wrapped in place, so parameter names do not change (``checkpoint_wrapper`` would
    add ``_checkpoint_wrapped_module.`` to every name that reaches a checkpoint)."""
    units = block_units(model)
    for unit in units:
        if not getattr(unit, "_llmcore_checkpointed", False):
            unit.forward = functools.partial(torch.utils.checkpoint.checkpoint, unit.forward, use_reentrant=False)
            unit._llmcore_checkpointed = True
    return len(units)


def broadcast_from_rank0(model: nn.Module, device: torch.device) -> None:
    """Every rank takes rank 0's parameters and buffers, as DDP does when it wraps a model. FSDP2 does not, and
    each rank keeps its own rows: weights a strategy creates at random after the per-rank seeding (LoRA's A)
    would otherwise differ between the rows of one tensor."""
    import torch.distributed as tdist

    with torch.no_grad():
        for t in unwrap(model).state_dict().values():
            buf = t.detach().to(device)
            tdist.broadcast(buf, src=0)
            if buf.data_ptr() != t.data_ptr():  # a copy on the device (NCCL broadcasts CUDA tensors only)
                t.copy_(buf)


def shard(model: nn.Module, env: DistEnv, device: torch.device, bf16: bool) -> nn.Module:
    """``fully_shard`` each block, then the root, on a 1-D mesh of ``env.world_size`` ranks on ``device``'s type.

    In place (FSDP2 swaps the parameters for DTensors and the class for ``FSDP<Class>``); idempotent. The model may
    still be on the CPU: ``fully_shard`` moves each rank's shard to the mesh's device.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    if isinstance(model, FSDPModule):
        return model
    broadcast_from_rank0(model, device)
    mesh = init_device_mesh(device.type, (env.world_size,))
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 \
        else MixedPrecisionPolicy()
    for unit in block_units(model):
        fully_shard(unit, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def row_table(tensors: list[torch.Tensor], env: DistEnv, device: torch.device) -> torch.Tensor:
    """``(world, n, 2)`` int64: the rows ``[start, stop)`` of each DTensor (the same list, in the same order, on
    every rank) that each rank holds. One all-gather of the local row counts: FSDP2 shards dim 0 in rank order
    (``Shard(0)`` on a 1-D mesh; uneven tensors give the last ranks fewer rows, possibly none)."""
    from torch.distributed.tensor import Shard

    from ..errors import CheckpointError

    for t in tensors:
        if t.device_mesh.ndim != 1 or tuple(t.placements) != (Shard(0),):
            raise CheckpointError(f"a tensor of shape {list(t.shape)} is laid out as {t.placements} on a "
                                  f"{t.device_mesh.ndim}-D mesh; sharded checkpoints handle FSDP's Shard(0) on a "
                                  "1-D mesh only (distributed=fsdp without HSDP or tensor parallelism).")
    if not tensors:
        return torch.zeros((env.world_size, 0, 2), dtype=torch.int64)
    mine = torch.tensor([t.to_local().shape[0] for t in tensors], dtype=torch.int64)
    counts = torch.stack(all_gather_tensor(mine, env, device))  # (world, n)
    starts = torch.cumsum(counts, 0) - counts
    return torch.stack([starts, starts + counts], -1)


def reshard(model: nn.Module) -> None:
    """Put every FSDP module back in its sharded state. FSDP2 keeps the root unsharded after a forward pass that
    no backward follows (evaluation, sampling), with plain tensors registered as its parameters; anything that
    reads parameters by identity (the optimizer's names, checkpoints) must see the sharded DTensors."""
    from torch.distributed.fsdp import FSDPModule

    for m in unwrap(model).modules():
        if isinstance(m, FSDPModule):
            m.reshard()


def local_rows(tensors: list[torch.Tensor], env: DistEnv, device: torch.device) -> list[tuple[int, int]]:
    """For each DTensor: the rows ``[start, stop)`` of the global tensor this rank holds (see :func:`row_table`)."""
    if not tensors:
        return []
    table = row_table(tensors, env, device)[env.rank]
    return [(int(a), int(b)) for a, b in table.tolist()]


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor: gathered from every rank for a DTensor (a collective), ``t`` itself otherwise."""
    return t.full_tensor() if is_dtensor(t) else t


def scalar(t: torch.Tensor | float) -> float:
    """``float()`` of a 0-d tensor or DTensor (``clip_grad_norm_`` returns a DTensor under FSDP)."""
    return float(full(t)) if torch.is_tensor(t) else float(t)


def full_tensors(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, whole tensor on the CPU) for every state-dict entry, one at a time (tied duplicates skipped).

    Collective: every rank must exhaust the iterator, in step."""
    from ..io import tied_duplicates

    m = unwrap(model)
    dups = tied_duplicates(m)
    for name, t in m.state_dict().items():
        if name not in dups:
            yield name, full(t).detach().cpu()


def save_pretrained(model: nn.Module, directory: str | Path, env: DistEnv, device: torch.device) -> Path:
    """What ``model.save_pretrained(directory)`` writes, for a sharded model: ``config.json`` + ``model.safetensors``.

    Every rank must call it. Tensors are gathered one at a time (``full_tensor``) and streamed into the file by
    rank 0 (:func:`llmcore.io.save_safetensors_stream`): rank 0's extra memory is one tensor, not the model.
    A write error on rank 0 is raised on every rank (after the gathers), so no rank waits for a peer that quit.
    """
    from ..errors import CheckpointError
    from ..io import CONFIG_NAME, WEIGHTS_NAME, atomic_write_json, save_safetensors_stream, tied_duplicates
    from ..models.pretrained import pretrained_meta

    d = Path(directory)
    m = unwrap(model)
    dups = tied_duplicates(m)
    specs = [(n, tuple(t.shape), t.dtype) for n, t in m.state_dict().items() if n not in dups]
    tensors = (t for _, t in full_tensors(model))
    error: BaseException | None = None
    if env.is_main:
        try:
            d.mkdir(parents=True, exist_ok=True)
            save_safetensors_stream(d / WEIGHTS_NAME, specs, tensors, metadata={"format": "pt"})
            atomic_write_json(d / CONFIG_NAME, pretrained_meta(model_class(model), m.config))
        except (OSError, ValueError) as e:
            error = e
    for _ in tensors:  # the other ranks' share of the gathers (and rank 0's remainder after an error)
        pass
    failed = all_reduce_sum(torch.tensor([float(error is not None)], device=device), env)
    if float(failed) > 0:
        detail = " ".join(str(error).split()) if error is not None else "rank 0 could not write it"
        raise CheckpointError(f"Could not write the model to {d / WEIGHTS_NAME} ({detail}).") from error
    return d


__all__ = ["is_dtensor", "is_sharded", "block_units", "checkpoint_activations", "shard", "local_rows", "full",
           "scalar", "full_tensors", "row_table", "reshard", "save_pretrained"]
