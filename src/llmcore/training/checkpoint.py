"""Pickle-free, atomic training checkpoints and exact resume.

A checkpoint is a directory ``OUT/trainer_state/ckpt-000250/`` holding

* ``model.safetensors``      every model tensor (tied duplicates once; ``module.`` / ``_orig_mod.`` stripped);
* ``optimizer.safetensors``  the AdamW state as flat tensors ``state.{parameter name}.{exp_avg|exp_avg_sq|step}``;
* ``trainer_state.json``     everything else: step, tokens seen, best validation loss, early-stopping counter,
                             optimizer group hyper-parameters, which parameters are trainable, RNG states
                             (torch CPU/CUDA as lists of ints, numpy, python ``random``, the data generator),
                             the model config and the sha256 of the tokenizer's saved files, used to refuse a
                             checkpoint from another model or another tokenizer (same vocab_size, other ids).

Under FSDP (``distributed="fsdp"``) the two safetensors files are replaced by one per rank and a JSON index,
``shards.json``, and every rank writes its own rows (see ``sharded.py``); loading reads slices, so a checkpoint
of any world size resumes at any other, and a full checkpoint resumes under FSDP.

Untrusted state: a run directory may come from anywhere, so :func:`read_checkpoint` checks
``trainer_state.json`` against a hand-written schema (:func:`validate_state`: required keys, types, ranges,
RNG state sizes, ``format_version``, the step in the directory name) and :func:`load_optimizer` checks every
optimizer tensor's name, shape and dtype against its parameter, all before a resume writes, prunes or restores
anything; the first bad field is named in one :class:`CheckpointError` line. Checkpoints written before
``format_version`` / ``tokenizer_sha256`` existed still resume (those checks are skipped).

Nothing goes through ``pickle``, ``torch.save`` or ``torch.load``, so loading a checkpoint cannot execute code.
Optimizer state is keyed by parameter *name*, not position, so it survives changes in how the groups are laid
out (e.g. a strategy that unfroze layers added groups over time).

Links: every save first checks that nothing under the run directory is a symbolic link (one swapped in since
the last save, e.g. ``trainer_state`` or a checkpoint replaced by a link to elsewhere, is refused, not followed).

Atomicity: everything is written into ``ckpt-000250.tmp/`` and the directory is renamed when complete. A run
killed at any moment, even mid-save, leaves only complete ``ckpt-XXXXXX`` directories behind, and loading
ignores anything else (``*.tmp``, ``*.old``). If the disk fills up mid-save (an ``OSError`` ENOSPC, or the
``SafetensorError`` safetensors raises instead) the partial directory is removed, the previous checkpoint
stays valid, and one CheckpointError line says so.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from ..errors import CheckpointError, LLMCoreError
from ..io import atomic_write_json, fsync_tree, is_disk_full, read_json
from ..models.pretrained import architecture_name, load_state_dict_checked, save_safetensors, tied_duplicates
from ..rundir import pinned, refuse_symlinks
from . import sharded
from .distributed import DistEnv, all_gather_tensor, all_reduce_sum, model_class, unwrap
from .fsdp import is_dtensor, is_sharded
from .state_schema import CKPT_RE, FORMAT_VERSION, STATE_NAME, validate_state

CHECKPOINT_DIR = "trainer_state"
MODEL_NAME = "model.safetensors"
OPTIM_NAME = "optimizer.safetensors"
_PREFIXES = ("module.", "_orig_mod.")


# ---------------------------------------------------------------------------------------------- listing
def checkpoint_root(out_dir: str | Path) -> Path:
    return Path(out_dir) / CHECKPOINT_DIR


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Complete checkpoints under ``out_dir``, oldest first (``*.tmp`` and half-written ones are ignored)."""
    root = checkpoint_root(out_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if (m := CKPT_RE.match(p.name)) and (p / STATE_NAME).is_file()]
    return [p for _, p in sorted(found)]


def checkpoint_step(path: str | Path) -> int:
    """The step a checkpoint directory was written at: ``ckpt-000250`` -> 250."""
    m = CKPT_RE.match(Path(path).name)
    if m is None:
        raise ValueError(f"{path} is not a checkpoint directory (ckpt-NNNNNN)")
    return int(m.group(1))


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    ckpts = list_checkpoints(out_dir)
    return ckpts[-1] if ckpts else None


def prune_checkpoints(out_dir: str | Path, keep_last: int, keep: Iterable[Path | None] = ()) -> None:
    """Delete all complete checkpoints but the newest ``keep_last`` and those in ``keep`` (e.g. the best)."""
    ckpts = list_checkpoints(out_dir)
    protected = {Path(p).resolve() for p in keep if p is not None}
    protected |= {p.resolve() for p in ckpts[len(ckpts) - keep_last:]} if keep_last > 0 else set()
    for p in ckpts:
        if p.resolve() not in protected:
            shutil.rmtree(p, ignore_errors=True)
    for stale in checkpoint_root(out_dir).glob("ckpt-*.old"):
        shutil.rmtree(stale, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- model state
def strip_prefixes(name: str) -> str:
    """``module._orig_mod.blocks.0...`` -> ``blocks.0...`` (DDP and torch.compile wrapper prefixes)."""
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if name.startswith(prefix):
                name, changed = name[len(prefix):], True
    return name.replace("._orig_mod.", ".")


def model_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of the plain model, tied duplicates dropped, wrapper prefixes stripped."""
    model = unwrap(model)
    dups = tied_duplicates(model)
    return {strip_prefixes(k): v for k, v in model.state_dict().items() if k not in dups}


def _normalised(config_cls: type, saved: dict[str, Any]) -> dict[str, Any]:
    """``saved`` as the current config class reads it: fields added since it was written take their defaults
    (an older run resumes), legacy keys are lifted; a config the class refuses is compared as written."""
    try:
        return config_cls.from_dict(dict(saved)).to_dict()
    except LLMCoreError:
        return saved


def config_diff(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``["d_model: 64 in checkpoint vs 128 now", ...]`` for every field that differs."""
    keys = sorted(set(saved) | set(current))
    return [f"{k}: {saved.get(k)!r} in checkpoint vs {current.get(k)!r} now" for k in keys
            if saved.get(k) != current.get(k)]


# ---------------------------------------------------------------------------------------------- RNG state
def capture_rng(data_generator: torch.Generator | None = None) -> dict[str, Any]:
    """All random-number-generator states as JSON-friendly lists."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    rng: dict[str, Any] = {
        "torch": torch.get_rng_state().tolist(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state().tolist()  # the current device's generator
    if data_generator is not None:
        rng["data"] = data_generator.get_state().tolist()
    return rng


def restore_rng(rng: dict[str, Any], data_generator: torch.Generator | None = None, rank: int = 0) -> None:
    """Inverse of :func:`capture_rng`; per-rank torch states (``torch_ranks``) are used when present."""
    torch_state = rng.get("torch_ranks", [rng["torch"]])
    torch.set_rng_state(torch.tensor(torch_state[rank if rank < len(torch_state) else 0], dtype=torch.uint8))
    name, keys, pos, has_gauss, cached = rng["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in rng and torch.cuda.is_available():
        states = rng.get("cuda_ranks", [rng["cuda"]])
        torch.cuda.set_rng_state(torch.tensor(states[rank if rank < len(states) else 0], dtype=torch.uint8))
    if data_generator is not None and "data" in rng:
        data_generator.set_state(torch.tensor(rng["data"], dtype=torch.uint8))


# ---------------------------------------------------------------------------------------------- optimizer
def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if torch.is_tensor(value):
        return value.item() if value.numel() == 1 else value.tolist()
    return value


def optimizer_payload(optimizer: torch.optim.Optimizer, names: dict[int, str]
                      ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors for safetensors, JSON part) of an optimizer, keyed by parameter name."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for p, state in optimizer.state.items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"state.{names[id(p)]}.{key}"] = value
            else:
                scalars.setdefault(names[id(p)], {})[key] = value
    groups = [{k: _jsonable(v) for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    return tensors, {"param_groups": groups, "scalars": scalars}


def load_optimizer(path: Path, optimizer: torch.optim.Optimizer, names: dict[int, str], meta: dict[str, Any],
                   env: DistEnv | None = None, device: torch.device | None = None) -> None:
    """Put the state saved in checkpoint ``path`` back into ``optimizer`` (matched by parameter name).

    A sharded checkpoint, or an optimizer over sharded (FSDP) parameters, is read slice by slice: each rank
    takes the rows of the moments that its parameters hold now (every rank must call this then)."""
    params = {names[id(p)]: p for g in optimizer.param_groups for p in g["params"]}
    file = path / (sharded.INDEX_NAME if sharded.is_sharded_checkpoint(path) else OPTIM_NAME)
    if sharded.is_sharded_checkpoint(path) or any(is_dtensor(p) for p in params.values()):
        tensors = sharded.optimizer_tensors(path, params, env or DistEnv(), device or torch.device("cpu"))
    else:
        tensors = _load_tensors(path / OPTIM_NAME)
    by_name: dict[str, dict[str, Any]] = {n: dict(v) for n, v in meta.get("scalars", {}).items()}
    for key, value in tensors.items():
        if not key.startswith("state.") or key.count(".") < 2:
            raise CheckpointError(f"{file}: tensor {key!r} is not named state.PARAMETER.FIELD; the checkpoint is "
                                  "damaged or was not written by llmcore: delete this checkpoint directory.")
        pname, field = key[len("state."):].rsplit(".", 1)
        p = params.get(pname)
        if p is not None:  # unknown names are reported below, all together
            want = () if field == "step" else tuple(p.shape)
            if tuple(value.shape) not in ((want,) if want else ((), (1,))) or not value.is_floating_point():
                raise CheckpointError(f"{file}: tensor {key!r} has shape {list(value.shape)} and dtype "
                                      f"{str(value.dtype).replace('torch.', '')}, expected shape {list(want)} "
                                      f"(the parameter's) and a float dtype; the checkpoint is damaged or of "
                                      "another model: delete this checkpoint directory.")
        by_name.setdefault(pname, {})[field] = value
    # torch numbers parameters 0, 1, ... across groups in order; map our names onto those indices so that
    # Optimizer.load_state_dict applies its own device/dtype rules (e.g. "step" on the GPU for fused AdamW).
    order = list(params)
    index = {n: i for i, n in enumerate(order)}
    extra = sorted(set(by_name) - set(index))
    if extra:
        raise CheckpointError(f"Checkpoint {path} has optimizer state for {extra[:3]} which this run does not "
                              "optimise; resume with the same model, strategies and frozen layers.")
    current = optimizer.state_dict()["param_groups"]
    optimizer.load_state_dict({"state": {index[n]: s for n, s in by_name.items()}, "param_groups": current})


# ---------------------------------------------------------------------------------------------- save / load
def save_checkpoint(out_dir: str | Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                    names: dict[int, str], state: dict[str, Any], env: DistEnv | None = None,
                    device: torch.device | None = None) -> Path:
    """Write ``OUT/trainer_state/ckpt-{step:06d}/`` atomically; returns its path.

    ``state`` is the JSON part (step, RNG, counters, ...). A plain or DDP model is saved whole by the caller
    (rank 0); a sharded (FSDP) model is saved by *every* rank, each its own rows (``sharded.py``), with ``env``
    and ``device`` given. On any OSError or SafetensorError (disk full, permissions), on any rank, the partial
    directory is removed, earlier checkpoints are untouched, and a one-line :class:`CheckpointError` says what
    happened (on every rank).
    """
    opt_tensors, opt_meta = optimizer_payload(optimizer, names)
    meta = dict(state, step=step, optimizer=opt_meta, format_version=FORMAT_VERSION)
    name = f"ckpt-{step:06d}"
    if is_sharded(model):
        return _save_sharded(out_dir, name, {"model": model_tensors(model), "optimizer": opt_tensors}, meta,
                             env or DistEnv(), device or torch.device("cpu"))
    refuse_symlinks(out_dir)  # a link swapped in since the last save (trainer_state, a checkpoint, tokenizer/)
    try:
        # every path below goes through directories pinned without following links: a link swapped in
        # during this save (trainer_state/ or the .tmp directory) is refused, not written through
        with pinned(out_dir, CHECKPOINT_DIR, create=True) as root:
            try:
                _fresh_dir(root / f"{name}.tmp")
                with pinned(root, f"{name}.tmp") as tmp:
                    save_safetensors(model_tensors(model), tmp / MODEL_NAME,
                                     metadata={"format": "pt", "step": str(step)})
                    save_safetensors(opt_tensors, tmp / OPTIM_NAME, metadata={"step": str(step)})
                    _seal(tmp, {STATE_NAME: meta})
                _swap_in(root, name)
            except (OSError, SafetensorError) as e:  # safetensors reports a full disk as SafetensorError
                _remove_partial(root, name)
                raise _save_failed(out_dir, name, e) from e
    except OSError as e:  # trainer_state/ itself could not be made or opened: nothing partial to remove
        raise _save_failed(out_dir, name, e) from e
    return checkpoint_root(out_dir) / name


def _fresh_dir(tmp: Path) -> None:
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)


def _seal(tmp: Path, json_files: dict[str, Any]) -> None:
    """Write the JSON files (``trainer_state.json`` last: a complete directory has it) and fsync the directory."""
    for fname, obj in json_files.items():
        atomic_write_json(tmp / fname, obj)
    _fsync_dir(tmp)  # on disk before the rename makes it visible (survives a power cut, not just a kill)


def _swap_in(root: Path, name: str) -> None:
    """Rename ``root/name.tmp`` to ``root/name``; a ``name`` saved before (a step re-saved after a resume) is
    kept as ``name.old`` until the new one is in place."""
    final, old = root / name, root / f"{name}.old"
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
    os.rename(root / f"{name}.tmp", final)


def _remove_partial(root: Path, name: str) -> None:
    """Remove the partial checkpoint ``root/name.tmp`` (``root``: the pinned checkpoint directory) and put back
    ``name`` from ``name.old`` when that step was being re-saved."""
    shutil.rmtree(root / f"{name}.tmp", ignore_errors=True)
    old, final = root / f"{name}.old", root / name
    if old.is_dir() and not final.exists():
        os.rename(old, final)


def _save_failed(out_dir: str | Path, name: str, e: BaseException | None, disk_full: bool = False
                 ) -> CheckpointError:
    """What happened to checkpoint ``name``, in one line (``disk_full``: some rank's disk filled up, maybe not
    this one's)."""
    shown = checkpoint_root(out_dir) / name
    previous = latest_checkpoint(out_dir)
    kept = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"
    if disk_full or (e is not None and _disk_full(e)):
        return CheckpointError(f"disk full while writing checkpoint {shown}; freed the partial checkpoint and "
                               f"{kept}; free space (or lower keep_last) and rerun with --resume.")
    detail = " ".join(str(e).split()) if e is not None else "another rank failed to write its shard; see its error"
    return CheckpointError(f"Could not write checkpoint {shown} ({detail}); freed the partial checkpoint and {kept}.")


def _save_sharded(out_dir: str | Path, name: str, groups: dict[str, dict[str, torch.Tensor]], meta: dict[str, Any],
                  env: DistEnv, device: torch.device) -> Path:
    """Every rank writes its rows into ``ckpt-NNNNNN.tmp/``; rank 0 checks that all files are there, writes
    ``shards.json`` and ``trainer_state.json`` and renames. After each phase the ranks agree (one all-reduce)
    whether anyone failed, so an error on one rank is raised on all of them instead of leaving them waiting.
    Each rank writes through directories pinned as in :func:`save_checkpoint`."""
    plans = {g: sharded.plan(t, g, env, device) for g, t in groups.items()}  # collective, before any I/O
    index = {"format": sharded.FORMAT, "version": sharded.VERSION, "world_size": env.world_size,
             "groups": {g: entry for g, (entry, _) in plans.items()}}
    meta = dict(meta, layout="sharded", world_size=env.world_size)
    step = int(meta["step"])

    def attempt(fn: Any) -> None:
        try:
            fn()
            error = None
        except (OSError, SafetensorError, CheckpointError) as e:
            error = e
        flags = torch.tensor([float(error is not None), float(error is not None and _disk_full(error))],
                             device=device)
        failed, full = all_reduce_sum(flags, env).tolist()  # did any rank fail; did any run out of disk
        if failed > 0:
            if env.is_main:  # the writing rank removes what the ranks wrote
                with contextlib.suppress(OSError, CheckpointError), pinned(out_dir, CHECKPOINT_DIR) as root:
                    _remove_partial(root, name)
            raise _save_failed(out_dir, name, error, disk_full=full > 0) from error

    def fresh() -> None:
        refuse_symlinks(out_dir)  # (see save_checkpoint)
        with pinned(out_dir, CHECKPOINT_DIR, create=True) as root:
            _fresh_dir(root / f"{name}.tmp")

    def write() -> None:
        with pinned(out_dir, CHECKPOINT_DIR, f"{name}.tmp") as tmp:
            for g, (_, local) in plans.items():
                sharded.write_local(tmp, g, local, env, step)

    def publish() -> None:
        sharded.check_complete(checkpoint_root(out_dir) / f"{name}.tmp", index)
        with pinned(out_dir, CHECKPOINT_DIR) as root:
            with pinned(root, f"{name}.tmp") as tmp:
                _seal(tmp, {sharded.INDEX_NAME: index, STATE_NAME: meta})
            _swap_in(root, name)

    attempt(fresh if env.is_main else lambda: None)
    attempt(write)
    attempt(publish if env.is_main else lambda: None)
    return checkpoint_root(out_dir) / name


_disk_full = is_disk_full  # ENOSPC, or safetensors' "No space left" (os error 28)


def _fsync_dir(directory: Path) -> None:
    fsync_tree(directory)


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except FileNotFoundError as e:
        raise CheckpointError(f"{path} is missing; the checkpoint is incomplete, delete it to resume from an "
                              "earlier one.") from e
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"Cannot read {path}: {e}. The file is corrupt; delete this checkpoint.") from e


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The JSON part of checkpoint ``path``."""
    if not (path / STATE_NAME).is_file():
        raise CheckpointError(f"{path} is not a checkpoint (no {STATE_NAME}).")
    meta = read_json(path / STATE_NAME, "checkpoint state (delete this checkpoint if it is corrupt)",
                     error=CheckpointError)
    return validate_state(path, meta)


def load_model_weights(path: Path, model: nn.Module, meta: dict[str, Any], env: DistEnv | None = None,
                       device: torch.device | None = None) -> None:
    """Check the saved model config against ``model`` and copy the weights in.

    A sharded checkpoint, or a sharded (FSDP) model, goes through :func:`sharded.load_model`: each rank reads
    the rows it holds now, whatever world size wrote them (every rank must call this then)."""
    wrapped, model = model, unwrap(model)
    saved, arch = meta.get("architecture"), architecture_name(model_class(model))
    if saved is not None and saved != arch:  # checkpoints written before this key skip the check
        raise CheckpointError(f"Checkpoint {path} was written by a {saved}, but the model to resume is a {arch} "
                              f"(same parameter names would load silently). Resume with --arch {saved} (and the "
                              "--import that registers it), or train into a new --out directory.")
    config = getattr(model, "config", None)
    if meta.get("model_config") is not None and hasattr(config, "to_dict"):
        diff = config_diff(_normalised(type(config), meta["model_config"]), config.to_dict())
        if diff:
            raise CheckpointError(f"Checkpoint {path} was written for a different model config ({'; '.join(diff)}). "
                                  "Resume with the same --preset/--set values, or train into a new --out directory.")
    if sharded.is_sharded_checkpoint(path) or is_sharded(wrapped):
        sharded.load_model(path, model, env or DistEnv(), device or torch.device("cpu"))
        return
    state = {strip_prefixes(k): v for k, v in _load_tensors(path / MODEL_NAME).items()}
    load_state_dict_checked(model, state, source=str(path / MODEL_NAME))


def tokenizer_fingerprint(tokenizer: Any) -> str | None:
    """sha256 over the files ``tokenizer.save`` writes (names and bytes), or None without a saveable tokenizer.

    Two tokenizers with the same ``vocab_size`` but another id mapping (e.g. another character alphabet) differ
    here, so a resume with the wrong one is refused instead of training on re-mapped ids."""
    if tokenizer is None or not callable(getattr(tokenizer, "save", None)):
        return None
    digest = hashlib.sha256()
    with tempfile.TemporaryDirectory(prefix="llmcore-tokenizer-") as tmp:
        try:
            tokenizer.save(tmp)
        except (OSError, LLMCoreError):
            return None
        for f in sorted(p for p in Path(tmp).rglob("*") if p.is_file()):
            data = f.read_bytes()
            digest.update(f"{f.relative_to(tmp).as_posix()}\0{len(data)}\0".encode())
            digest.update(data)
    return digest.hexdigest()


def check_tokenizer(path: Path, meta: dict[str, Any], fingerprint: str | None) -> None:
    """Refuse to resume checkpoint ``path`` with a tokenizer other than the one it was trained with (checkpoints
    written before the fingerprint existed, and runs without a tokenizer, skip the check)."""
    saved = meta.get("tokenizer_sha256")
    if saved is not None and fingerprint is not None and saved != fingerprint:
        raise CheckpointError(f"Checkpoint {path} was trained with another tokenizer (sha256 {saved[:12]}... in "
                              f"the checkpoint vs {fingerprint[:12]}... now; the ids would map to other tokens even "
                              "with the same vocab_size). Resume with the run's own tokenizer (OUT/tokenizer), or "
                              "train into a new --out directory.")


def trainer_snapshot(trainer: Any) -> dict[str, Any]:
    """The JSON part of a checkpoint for a :class:`~llmcore.training.Trainer` (all ranks must call this)."""
    rng = capture_rng(trainer.generator)
    env, device = trainer.env, trainer.device
    if env.enabled:  # each rank has its own dropout RNG; rank 0 stores them all
        rng["torch_ranks"] = [t.tolist() for t in all_gather_tensor(torch.get_rng_state(), env, device)]
        if "cuda" in rng:
            rng["cuda_ranks"] = [t.tolist() for t in all_gather_tensor(torch.cuda.get_rng_state(), env, device)]
    model = unwrap(trainer.model)
    config = getattr(model, "config", None)
    return {
        "trainer": dict(trainer.state),
        "rng": rng,
        "trainable": [n for n, p in model.named_parameters() if p.requires_grad],
        "architecture": architecture_name(model_class(model)),  # resuming into another class is refused
        "tokenizer_sha256": getattr(trainer, "tokenizer_sha256", None),  # ... and another tokenizer too
        "model_config": config.to_dict() if hasattr(config, "to_dict") else None,
        "train_config": trainer.config.to_dict(),
        "strategies": [s.state_dict() if _keeps_state(s) else None for s in trainer.strategies],
    }


def _keeps_state(strategy: Any) -> bool:  # what trainer_snapshot saves a state for
    return hasattr(strategy, "state_dict") and not isinstance(strategy, nn.Module)


def check_strategies(path: Path, meta: dict[str, Any], strategies: list[Any]) -> None:
    """Refuse checkpoint ``path`` unless its ``strategies`` states fit this run's strategies (set up already):
    one entry per strategy, a state only where the strategy keeps one, and each value one the strategy accepts
    for this model (its ``check_state``, e.g. GradualUnfreeze's ``n_unfrozen`` within the model's layer groups).
    Checkpoints without the key (older ones) skip the check; the schema has already checked the types."""
    saved = meta.get("strategies")
    if saved is None:
        return
    file, names = path / STATE_NAME, [type(s).__name__ for s in strategies]
    fix = "resume with the model and strategies the run was trained with, or train into a new --out directory"
    if len(saved) != len(strategies):
        raise CheckpointError(f"{file}: field 'strategies' holds {len(saved)} states, but this run has "
                              f"{len(strategies)} strategies ({', '.join(names) or 'none'}); {fix}.")
    for i, (strategy, state) in enumerate(zip(strategies, saved)):
        if state is None:
            continue
        if not _keeps_state(strategy) or not callable(getattr(strategy, "load_state_dict", None)):
            raise CheckpointError(f"{file}: field 'strategies[{i}]' holds a state, but {names[i]} keeps none; "
                                  f"the checkpoint is damaged or of another run: {fix}.")
        check = getattr(strategy, "check_state", None)
        try:
            if callable(check):
                check(state)
        except (LLMCoreError, ValueError, TypeError, KeyError) as e:
            raise CheckpointError(f"{file}: field 'strategies[{i}]' ({names[i]}): {e}; the checkpoint is damaged "
                                  f"or of another model: delete this checkpoint directory, or {fix}.") from e


def check_trainable(path: Path, model: nn.Module, meta: dict[str, Any]) -> None:
    """Refuse checkpoint ``path`` when its ``trainable`` list names parameters this model does not have (a
    tampered or foreign list would otherwise be dropped silently, freezing what the run trained)."""
    if "trainable" not in meta:
        return
    unknown = sorted(set(meta["trainable"]) - {n for n, _ in unwrap(model).named_parameters()})
    if unknown:
        raise CheckpointError(f"{path / STATE_NAME}: field 'trainable' names {len(unknown)} parameter(s) this model "
                              f"does not have ({', '.join(unknown[:3])}); the checkpoint is damaged or of another "
                              "model: resume with the same model and strategies, or delete this checkpoint directory.")


def restore_trainable(model: nn.Module, meta: dict[str, Any]) -> None:
    """Set ``requires_grad`` as it was when the checkpoint was written (strategies may have unfrozen layers)."""
    if "trainable" in meta:
        trainable = set(meta["trainable"])
        for name, p in unwrap(model).named_parameters():
            p.requires_grad_(name in trainable)


def restore_trainer(trainer: Any, meta: dict[str, Any]) -> None:
    """Counters, RNG states and strategy states from a checkpoint (after the optimizer state is loaded)."""
    trainer.state.update(meta["trainer"])
    restore_rng(meta["rng"], trainer.generator, trainer.env.rank)
    for strategy, state in zip(trainer.strategies, meta.get("strategies") or []):
        if state is not None and hasattr(strategy, "load_state_dict"):
            strategy.load_state_dict(state)


def find_resume_checkpoint(out_dir: str | Path | None) -> Path:
    """The newest complete checkpoint under ``out_dir``, or a clear error when there is none."""
    if out_dir is None:
        raise CheckpointError("resume=True needs TrainConfig.out_dir, the run directory to resume from.")
    ckpt = latest_checkpoint(out_dir)
    if ckpt is None:
        raise CheckpointError(f"No checkpoint to resume in {checkpoint_root(out_dir)}; run without --resume to "
                              "start a fresh run, or point --out at the run directory.")
    return ckpt


__all__ = ["save_checkpoint", "read_checkpoint", "validate_state", "tokenizer_fingerprint", "check_tokenizer", "check_strategies",
           "check_trainable", "load_model_weights", "load_optimizer", "list_checkpoints",
           "latest_checkpoint", "find_resume_checkpoint", "prune_checkpoints", "capture_rng", "restore_rng",
           "model_tensors", "strip_prefixes", "config_diff", "trainer_snapshot", "restore_trainable",
           "restore_trainer", "CHECKPOINT_DIR"]
