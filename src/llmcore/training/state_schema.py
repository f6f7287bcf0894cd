"""The schema of ``trainer_state.json``, the JSON half of a checkpoint, and its validator.

``trainer_state.json`` is untrusted input like any file on disk: every field is checked (type, range, size)
before a resume writes, prunes or restores anything, and the first bad one is named in one line. Hand-written
on purpose (no schema library): each entry is ``field: (required, check, what was expected)``.
"""

from __future__ import annotations

import math
import random
import re
from pathlib import Path
from typing import Any

from ..errors import CheckpointError

STATE_NAME = "trainer_state.json"
FORMAT_VERSION = 1  # of trainer_state.json; checkpoints written before the key existed read as version 1
CKPT_RE = re.compile(r"^ckpt-(\d+)$")  # a complete checkpoint directory; its number is the step

_TORCH_RNG_BYTES = 5056  # torch.get_rng_state().numel() / torch.Generator().get_state().numel() on CPU
_MT_WORDS = 624  # numpy's MT19937 key; python's random state is these words plus the position


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _int(v: Any, lo: int | None = None, hi: int | None = None) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and (lo is None or v >= lo) and (hi is None or v <= hi)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _bytes(n: int | None) -> Any:
    def check(v: Any) -> bool:
        return isinstance(v, list) and (len(v) == n if n is not None else len(v) > 0) and all(_int(b, 0, 255) for b in v)
    return check


def _words(n: int) -> Any:
    return lambda v: isinstance(v, list) and len(v) == n and all(_int(w, 0, 2**32 - 1) for w in v)


def _list_of(check: Any) -> Any:
    return lambda v: isinstance(v, list) and len(v) > 0 and all(check(x) for x in v)


def _optional(check: Any) -> Any:
    return lambda v: v is None or check(v)


_TORCH_STATE, _WORDS = _bytes(_TORCH_RNG_BYTES), _words(_MT_WORDS)
_NUMPY = (("numpy[0]", lambda v: v == "MT19937", "'MT19937'"), ("numpy[1]", _WORDS, f"{_MT_WORDS} integers in [0, 2**32)"),
          ("numpy[2]", lambda v: _int(v, 0, _MT_WORDS), f"an integer in [0, {_MT_WORDS}]"),
          ("numpy[3]", lambda v: _int(v, 0, 1), "0 or 1"), ("numpy[4]", _number, "a finite number"))
_PYTHON = (("python[0]", lambda v: v == random.getstate()[0], f"{random.getstate()[0]} (the state version)"),
           ("python[1]", lambda v: isinstance(v, list) and len(v) == _MT_WORDS + 1 and _WORDS(v[:-1])
            and _int(v[-1], 0, _MT_WORDS), f"{_MT_WORDS} integers in [0, 2**32) and a position in [0, {_MT_WORDS}]"),
           ("python[2]", _optional(_number), "null or a number"))
_RNG: dict[str, tuple[bool, Any, str]] = {  # key: (required, check, what was expected)
    "torch": (True, _TORCH_STATE, f"a list of {_TORCH_RNG_BYTES} bytes (torch.get_rng_state())"),
    "numpy": (True, lambda v: isinstance(v, list) and len(v) == 5, "a list of 5 (numpy.random.get_state())"),
    "python": (True, lambda v: isinstance(v, list) and len(v) == 3, "a list of 3 (random.getstate())"),
    "data": (False, _TORCH_STATE, f"a list of {_TORCH_RNG_BYTES} bytes (the data generator's state)"),
    "cuda": (False, _bytes(None), "a list of bytes (torch.cuda.get_rng_state())"),
    "torch_ranks": (False, _list_of(_TORCH_STATE), f"a list with one list of {_TORCH_RNG_BYTES} bytes per rank"),
    "cuda_ranks": (False, _list_of(_bytes(None)), "a list with one list of bytes per rank"),
}
_COUNTERS: dict[str, tuple[bool, Any, str]] = {
    "step": (True, lambda v: _int(v, 0), "an integer >= 0"),
    "tokens_seen": (True, lambda v: _int(v, 0), "an integer >= 0"),
    "epoch": (False, lambda v: _int(v, 0), "an integer >= 0"),
    "best_val_loss": (False, _optional(_number), "null or a finite number"),
    "best_step": (False, _optional(lambda v: _int(v, 0)), "null or an integer >= 0"),
    "evals_since_best": (False, lambda v: _int(v, 0), "an integer >= 0"),
    "best_checkpoint": (False, _optional(lambda v: isinstance(v, str) and CKPT_RE.match(v) is not None),
                        "null or a checkpoint name ckpt-NNNNNN"),
    "last_val_loss": (False, _optional(_number), "null or a finite number"),
    "stopped_early": (False, lambda v: isinstance(v, bool), "true or false"),
}
_TOP: dict[str, tuple[bool, Any, str]] = {
    "format_version": (False, lambda v: v == FORMAT_VERSION, f"{FORMAT_VERSION} (this llmcore reads only that "
                       "checkpoint format; resume it with the llmcore version that wrote it)"),
    "step": (True, lambda v: _int(v, 0), "an integer >= 0"),
    "trainer": (True, lambda v: isinstance(v, dict), "an object with the training counters"),
    "rng": (True, lambda v: isinstance(v, dict), "an object with the random-number-generator states"),
    "optimizer": (True, lambda v: isinstance(v, dict), "an object with 'param_groups' and 'scalars'"),
    "trainable": (False, lambda v: isinstance(v, list) and all(isinstance(n, str) for n in v),
                  "a list of parameter names"),
    "architecture": (False, _optional(lambda v: isinstance(v, str)), "null or a class name"),
    "model_config": (False, _optional(lambda v: isinstance(v, dict)), "null or an object"),
    "train_config": (False, _optional(lambda v: isinstance(v, dict)), "null or an object"),
    "strategies": (False, _optional(lambda v: isinstance(v, list) and all(x is None or isinstance(x, dict) for x in v)),
                   "null or a list of objects / nulls"),
    "layout": (False, lambda v: v in ("full", "sharded"), "'full' or 'sharded' (FSDP: shards.json + a file per rank)"),
    "world_size": (False, lambda v: _int(v, 1), "an integer >= 1 (the ranks that wrote a sharded checkpoint)"),
    "tokenizer_sha256": (False, _optional(lambda v: isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v) is not None),
                         "null or a sha256 hex digest"),
}
_OPTIMIZER: dict[str, tuple[bool, Any, str]] = {
    "param_groups": (True, lambda v: isinstance(v, list) and all(isinstance(g, dict) for g in v), "a list of objects"),
    "scalars": (True, lambda v: isinstance(v, dict) and all(isinstance(x, dict) for x in v.values()),
                "an object of objects (parameter name -> scalar state)"),
}


def _state_error(file: Path, field: str, value: Any, expected: str) -> CheckpointError:
    return CheckpointError(f"{file}: field {field!r} is {_short(value)}, expected {expected}; the checkpoint is "
                           "damaged or was not written by llmcore: delete this checkpoint directory to resume from "
                           "an earlier one.")


def _check_fields(file: Path, obj: dict[str, Any], schema: dict[str, tuple[bool, Any, str]], prefix: str = "") -> None:
    for key, (required, check, expected) in schema.items():
        if key not in obj:
            if required:
                raise CheckpointError(f"{file}: field {prefix + key!r} is missing, expected {expected}; the "
                                      "checkpoint is damaged or was not written by llmcore: delete this checkpoint "
                                      "directory to resume from an earlier one.")
            continue
        if not check(obj[key]):
            raise _state_error(file, prefix + key, obj[key], expected)


def validate_state(path: Path, meta: Any) -> dict[str, Any]:
    """Check the JSON part of checkpoint ``path`` against its schema; returns it, or raises one CheckpointError
    naming the file, the field and what was expected. Checkpoints of earlier versions (fewer optional keys, no
    ``format_version``) pass."""
    file = Path(path) / STATE_NAME
    if not isinstance(meta, dict):
        raise _state_error(file, "(top level)", meta, "a JSON object")
    _check_fields(file, meta, _TOP)
    m = CKPT_RE.match(Path(path).name)
    if m is not None and meta["step"] != int(m.group(1)):
        raise _state_error(file, "step", meta["step"], f"{int(m.group(1))}, the step in the directory name")
    _check_fields(file, meta["trainer"], _COUNTERS, "trainer.")
    if meta["trainer"]["step"] != meta["step"]:
        raise _state_error(file, "trainer.step", meta["trainer"]["step"], f"{meta['step']}, the checkpoint's step")
    rng = meta["rng"]
    _check_fields(file, rng, _RNG, "rng.")
    for key, items in (("numpy", _NUMPY), ("python", _PYTHON)):
        for (name, check, expected), value in zip(items, rng[key]):
            if not check(value):
                raise _state_error(file, f"rng.{name}", value, expected)
    _check_fields(file, meta["optimizer"], _OPTIMIZER, "optimizer.")
    return meta


__all__ = ["validate_state", "STATE_NAME", "FORMAT_VERSION"]
