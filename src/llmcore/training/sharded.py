"""Sharded checkpoints: under FSDP every rank writes its own rows; one JSON index says where every slice lives.

A checkpoint written by N FSDP ranks (``ckpt-000250/``) holds, besides ``trainer_state.json``::

    model-rank00000-of-00002.safetensors       rank r's rows of each sharded model tensor (rank 0 also holds
    model-rank00001-of-00002.safetensors       the tensors FSDP does not shard, whole)
    optimizer-rank0000r-of-00002.safetensors   the same for the AdamW state (``state.{param}.{field}``)
    shards.json                                the index (below), written by rank 0 once every rank's files exist

``shards.json``::

    {"format": "llmcore-sharded", "version": 1, "world_size": 2,
     "groups": {"model": {"files": ["model-rank00000-of-00002.safetensors", ...],
                          "tensors": {"blocks.0.attn.qkv_proj.weight":
                                        {"shape": [64, 32], "dtype": "float32",
                                         "shards": [{"file": 0, "rows": [0, 32]}, {"file": 1, "rows": [32, 64]}]},
                                      ...}},
                "optimizer": {...}}}

A shard without ``rows`` is the whole tensor. Inside each file a tensor keeps its global name, so every file is
a plain safetensors file too. Nothing is pickled (``torch.distributed.checkpoint`` writes its metadata with
pickle, which is why it is not used), and no rank gathers the model to write it.

Loading reads slices (``safe_open(...).get_slice(name)[a:b]``), so a checkpoint reshards to any world size: a
rank reads the rows it holds now from whichever files have them; one process reads every row. A full
checkpoint (``model.safetensors`` + ``optimizer.safetensors``, from one process or DDP) reads through the same
:class:`TensorFiles`, as one shard per tensor, so it loads into an FSDP run as well. The index is untrusted
input: file names must stay inside the checkpoint, shards must tile the rows exactly, and each stored slice must
have the shape and dtype the index gives before it is read.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from ..errors import CheckpointError
from ..io import _ST_DTYPES, confined_file, read_json, save_safetensors, tied_duplicates
from .distributed import DistEnv, unwrap
from .fsdp import is_dtensor, local_rows, row_table

INDEX_NAME = "shards.json"
FORMAT = "llmcore-sharded"
VERSION = 1
FULL_FILES = {"model": "model.safetensors", "optimizer": "optimizer.safetensors"}  # a full checkpoint's files
_DTYPES = {v: getattr(torch, v) for v in _ST_DTYPES.values() if hasattr(torch, v)}


def rank_file(group: str, rank: int, world: int) -> str:
    return f"{group}-rank{rank:05d}-of-{world:05d}.safetensors"


def is_sharded_checkpoint(path: Path) -> bool:
    return (Path(path) / INDEX_NAME).is_file()


# ---------------------------------------------------------------------------------------------- writing
def plan(tensors: dict[str, torch.Tensor], group: str, env: DistEnv, device: torch.device
         ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(this group's index entry, the tensors this rank writes). Collective (one all-gather), no I/O.

    DTensors contribute their local rows on every rank; plain tensors (replicated: buffers, AdamW's ``step``) are
    written once, whole, by rank 0."""
    names = sorted(tensors)
    sharded = [n for n in names if is_dtensor(tensors[n])]
    table = row_table([tensors[n] for n in sharded], env, device).tolist() if sharded else []  # [rank][i] = [a, b]
    index = {n: i for i, n in enumerate(sharded)}
    W = env.world_size
    entry: dict[str, Any] = {"files": [rank_file(group, r, W) for r in range(W)], "tensors": {}}
    local: dict[str, torch.Tensor] = {}
    for n in names:
        t = tensors[n]
        info: dict[str, Any] = {"shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", "")}
        if n in index:
            i = index[n]
            info["shards"] = [{"file": r, "rows": table[r][i]} for r in range(W) if table[r][i][1] > table[r][i][0]]
            if table[env.rank][i][1] > table[env.rank][i][0]:
                local[n] = t.to_local()
        else:
            info["shards"] = [{"file": 0}]
            if env.is_main:
                local[n] = t
        entry["tensors"][n] = info
    return entry, local


def write_local(directory: Path, group: str, local: dict[str, torch.Tensor], env: DistEnv, step: int) -> None:
    """This rank's file of ``group`` (written even when empty, so rank 0 can check that every rank wrote)."""
    save_safetensors(local, directory / rank_file(group, env.rank, env.world_size),
                     metadata={"format": "pt", "step": str(step), "rank": str(env.rank)})


def check_complete(directory: Path, index: dict[str, Any]) -> None:
    """CheckpointError unless every rank's file is in ``directory`` (ranks on another node with another disk)."""
    missing = [f for g in index["groups"].values() for f in g["files"] if not (directory / f).is_file()]
    if missing:
        raise CheckpointError(f"the shard files {missing[:3]} are not in {directory} although their ranks wrote "
                              "them; under FSDP the run directory must be on a filesystem every node shares")


# ---------------------------------------------------------------------------------------------- reading
class TensorFiles:
    """The tensors of one group (``model`` or ``optimizer``) of a checkpoint, sharded or full, read by rows."""

    def __init__(self, path: Path, group: str) -> None:
        self.path, self.group = Path(path), group
        self._open: dict[str, Any] = {}
        self._stack = contextlib.ExitStack()
        if is_sharded_checkpoint(path):
            self.files, self.tensors = _read_index(self.path, group)
        else:
            self.files, self.tensors = [FULL_FILES[group]], {}
            f = self._handle(0)
            for name in f.keys():
                sl = f.get_slice(name)
                self.tensors[name] = {"shape": list(sl.get_shape()), "dtype": _ST_DTYPES.get(sl.get_dtype(), "?"),
                                      "shards": [{"file": 0}]}

    def __enter__(self) -> TensorFiles:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stack.close()

    def _handle(self, i: int) -> Any:
        name = self.files[i]
        if name not in self._open:
            f = confined_file(self.path, name, f"{self.group} shard of checkpoint")
            try:
                self._open[name] = self._stack.enter_context(safe_open(str(f), framework="pt"))
            except (SafetensorError, OSError) as e:
                raise CheckpointError(f"Cannot read {f}: {e}. The file is corrupt; delete this checkpoint.") from e
        return self._open[name]

    def names(self) -> list[str]:
        return list(self.tensors)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.tensors[name]["shape"])

    def meta(self, name: str) -> torch.Tensor:
        """A meta tensor of the stored shape and dtype (for checks that need no data)."""
        return torch.empty(self.shape(name), dtype=_DTYPES.get(self.tensors[name]["dtype"], torch.uint8),
                           device="meta")

    def read(self, name: str, start: int | None = None, stop: int | None = None) -> torch.Tensor:
        """Rows ``[start, stop)`` of tensor ``name`` (all of it by default), from whichever shards hold them."""
        info = self.tensors[name]
        shape, dtype = self.shape(name), _DTYPES.get(info["dtype"], torch.uint8)
        whole = start is None
        start, stop = (0, shape[0] if shape else 0) if whole else (start, stop)
        out = torch.empty((stop - start, *shape[1:]) if shape else (), dtype=dtype)
        for shard in info["shards"]:
            a, b = shard.get("rows", (0, shape[0] if shape else 0))
            lo, hi = max(a, start), min(b, stop)
            if "rows" in shard and hi <= lo:
                continue
            f = self._handle(shard["file"])
            where = f"{self.path / self.files[shard['file']]}"
            try:
                sl = f.get_slice(name)
            except SafetensorError as e:
                raise CheckpointError(f"{where} lacks {name!r}, which {INDEX_NAME} places there; the checkpoint is "
                                      "damaged: delete it to resume from an earlier one.") from e
            want = [b - a, *shape[1:]] if "rows" in shard else list(shape)
            if list(sl.get_shape()) != want or _ST_DTYPES.get(sl.get_dtype()) != info["dtype"]:
                raise CheckpointError(f"{where}: {name!r} is {sl.get_shape()} {sl.get_dtype()}, the index says "
                                      f"{want} {info['dtype']}; the checkpoint is damaged: delete it.")
            if not shape:
                return f.get_tensor(name)
            out[lo - start:hi - start] = sl[lo - a:hi - a]
        return out


def _read_index(path: Path, group: str) -> tuple[list[str], dict[str, Any]]:
    """Validated ``(files, tensors)`` of ``group`` in ``path/shards.json`` (one CheckpointError line otherwise)."""
    file = path / INDEX_NAME
    index = read_json(file, "sharded checkpoint index (delete this checkpoint if it is corrupt)", CheckpointError)

    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{file}: {what}; the checkpoint is damaged or was not written by llmcore: delete "
                               "this checkpoint directory to resume from an earlier one.")

    if index.get("format") != FORMAT or index.get("version") != VERSION:
        raise bad(f"format {index.get('format')!r} version {index.get('version')!r}, expected {FORMAT!r} "
                  f"version {VERSION}")
    entry = index.get("groups", {}).get(group) if isinstance(index.get("groups"), dict) else None
    if not isinstance(entry, dict) or not isinstance(entry.get("files"), list) \
            or not isinstance(entry.get("tensors"), dict):
        raise bad(f"groups.{group} is missing or not an object with 'files' and 'tensors'")
    files = entry["files"]
    if not all(isinstance(f, str) for f in files):
        raise bad(f"groups.{group}.files must be a list of file names")
    for name, info in entry["tensors"].items():
        shape = info.get("shape") if isinstance(info, dict) else None
        if not (isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                 for d in shape)):
            raise bad(f"tensor {name!r}: 'shape' must be a list of integers >= 0")
        if info.get("dtype") not in _DTYPES:
            raise bad(f"tensor {name!r}: dtype {info.get('dtype')!r} is not one of {sorted(_DTYPES)}")
        shards = info.get("shards")
        if not isinstance(shards, list) or not shards or not all(
                isinstance(s, dict) and isinstance(s.get("file"), int) and 0 <= s["file"] < len(files)
                for s in shards):
            raise bad(f"tensor {name!r}: 'shards' must list {{'file': index into files, 'rows': [start, stop]}}")
        if any("rows" not in s for s in shards):
            if len(shards) != 1 or "rows" in shards[0]:
                raise bad(f"tensor {name!r}: a whole-tensor shard must be the tensor's only shard")
            continue
        edge = 0
        for s in shards:  # the shards tile [0, rows) in order, without gap or overlap
            rows = s["rows"]
            if not (isinstance(rows, list) and len(rows) == 2 and all(isinstance(x, int) for x in rows)
                    and rows[0] == edge and rows[1] > rows[0]):
                raise bad(f"tensor {name!r}: shard rows {rows!r} do not continue at row {edge}")
            edge = rows[1]
        if not shape or edge != shape[0]:
            raise bad(f"tensor {name!r}: shards end at row {edge}, the shape {shape} has "
                      f"{shape[0] if shape else 'no'} rows")
    return files, entry["tensors"]


# ---------------------------------------------------------------------------------------------- loading
def load_model(path: Path, model: nn.Module, env: DistEnv, device: torch.device) -> None:
    """Copy checkpoint ``path``'s model tensors into ``model``: a sharded model takes the rows each rank holds,
    a plain one every row. Names and global shapes are checked first (one CheckpointError for all mismatches)."""
    from ..io import raise_mismatch

    m = unwrap(model)
    dups = tied_duplicates(m)
    targets = {n: t for n, t in m.state_dict(keep_vars=True).items() if n not in dups}
    with TensorFiles(path, "model") as src:
        saved = set(src.names())
        raise_mismatch(f"checkpoint {path} does not fit the model",
                       sorted(set(targets) - saved), sorted(n for n in targets if n in saved
                                                              and src.shape(n) != tuple(targets[n].shape)),
                       sorted(saved - set(targets)), "Resume with the same model, or train into a new --out directory.")
        sharded = [n for n in targets if is_dtensor(targets[n])]
        rows = dict(zip(sharded, local_rows([targets[n] for n in sharded], env, device)))
        with torch.no_grad():
            for n, t in targets.items():
                if n in rows:
                    a, b = rows[n]
                    if b > a:
                        t.to_local().copy_(src.read(n, a, b))
                else:
                    t.copy_(src.read(n))


def optimizer_tensors(path: Path, params: dict[str, torch.Tensor], env: DistEnv, device: torch.device
                      ) -> dict[str, torch.Tensor]:
    """The saved AdamW tensors ``state.{param}.{field}``, each laid out like its parameter: a DTensor of this
    rank's rows for a sharded parameter, a whole tensor otherwise. A tensor whose parameter is unknown or has
    another shape comes back as a meta tensor of the saved shape, for ``load_optimizer``'s checks to report."""
    from torch.distributed.tensor import DTensor

    sharded = [n for n, p in params.items() if is_dtensor(p)]
    rows = dict(zip(sharded, local_rows([params[n] for n in sharded], env, device)))
    out: dict[str, torch.Tensor] = {}
    with TensorFiles(path, "optimizer") as src:
        for key in src.names():
            pname = key[len("state."):].rsplit(".", 1)[0] if key.startswith("state.") else None
            p = params.get(pname)
            if p is None or (src.shape(key) and src.shape(key) != tuple(p.shape)):
                out[key] = src.meta(key)
            elif src.shape(key) and pname in rows:
                a, b = rows[pname]
                local = src.read(key, a, b).to(p.to_local().device)
                out[key] = DTensor.from_local(local, p.device_mesh, p.placements, run_check=False,
                                              shape=p.shape, stride=p.stride())
            else:  # AdamW's step (0-d, replicated); load_state_dict puts it where the optimizer wants it
                out[key] = src.read(key)
    return out


__all__ = ["INDEX_NAME", "rank_file", "is_sharded_checkpoint", "plan", "write_local", "check_complete",
           "TensorFiles", "load_model", "optimizer_tensors"]
