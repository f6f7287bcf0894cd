"""The prepared-data layout on disk: ``meta.json`` (the index, schema-checked) and the token files it lists.

Format 2 (written by :func:`llmcore.data.prepare`): ``train-00000.bin``, ``train-00001.bin``, ...,
``val-00000.bin``, ... and ``meta.json`` whose ``"shards"`` lists each split's files in order with their token
counts; a split is the concatenation of its shards. Format 1 (earlier llmcore versions, still read): one
``train.bin`` and one ``val.bin``. Token files are raw little-endian ``uint16`` / ``uint32`` ids with no header.

Everything a directory's ``meta.json`` names is checked before it is opened: shard names must match
``{split}-NNNNN.bin`` (so they resolve inside the directory), counts are non-negative integers that add up to
the split's total, and the dtype holds every id of the vocabulary.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from ..io import read_json

META_FILE = "meta.json"
FORMAT_VERSION = 2  # 1: one train.bin / val.bin each (still read); 2: shards listed in meta.json
READ_VERSIONS = (1, 2)
SPLITS = ("train", "val")
SUPPORTED_DTYPES = ("uint16", "uint32")  # what prepare writes; anything else would reinterpret the bytes
SHARD_NAME = re.compile(r"(train|val)-\d{5,}\.bin")


def choose_dtype(vocab_size: int) -> np.dtype:
    """``uint16`` when every id fits (vocab_size <= 65535, as nanoGPT), else ``uint32``."""
    return np.dtype(np.uint16) if vocab_size <= 65535 else np.dtype(np.uint32)


def _meta_error(file: Path, field: str, value: Any, expected: str) -> DataError:
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    return DataError(f"{file}: field {field!r} is {shown}, expected {expected}; the prepared data is damaged or "
                     f"was not written by this llmcore: run `llmcore prepare --out {file.parent}` again.")


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _check_shards(file: Path, meta: dict[str, Any]) -> None:
    shards = meta.get("shards")
    if not isinstance(shards, dict) or set(shards) != set(SPLITS):
        raise _meta_error(file, "shards", shards, "an object with the lists 'train' and 'val'")
    for split in SPLITS:
        entries = shards[split]
        if not isinstance(entries, list):
            raise _meta_error(file, f"shards.{split}", entries, "a list of shards")
        for i, e in enumerate(entries):
            name = e.get("file") if isinstance(e, dict) else None
            if not (isinstance(name, str) and SHARD_NAME.fullmatch(name) and name.startswith(split + "-")):
                raise _meta_error(file, f"shards.{split}[{i}].file", name, f"a file name {split}-NNNNN.bin")
            if not _count(e.get("tokens")):
                raise _meta_error(file, f"shards.{split}[{i}].tokens", e.get("tokens"), "an integer >= 0")
        total = sum(e["tokens"] for e in entries)
        if f"n_{split}_tokens" in meta and total != meta[f"n_{split}_tokens"]:
            raise _meta_error(file, f"n_{split}_tokens", meta[f"n_{split}_tokens"], f"{total}, the sum of the "
                              f"{split} shards' tokens")


def check_meta(file: Path, meta: Any) -> dict[str, Any]:
    """Check a ``meta.json`` against its schema (``format_version``, ``dtype``, counts, shards); returns it."""
    if not isinstance(meta, dict):
        raise _meta_error(file, "(top level)", meta, "a JSON object")
    version = meta.get("format_version", 1)  # files before the key: version 1
    if version not in READ_VERSIONS:
        raise _meta_error(file, "format_version", version, f"one of {', '.join(map(str, READ_VERSIONS))} (the "
                          "formats this llmcore reads)")
    if "dtype" not in meta:
        raise DataError(f"{file}: field 'dtype' is missing, expected one of {', '.join(SUPPORTED_DTYPES)}; run "
                        f"`llmcore prepare --out {file.parent}` again.")
    if meta["dtype"] not in SUPPORTED_DTYPES:
        raise _meta_error(file, "dtype", meta["dtype"], f"one of {', '.join(SUPPORTED_DTYPES)}")
    for key in ("n_train_tokens", "n_val_tokens", "n_chars", "n_train_chars", "n_val_chars"):
        if key in meta and not _count(meta[key]):
            raise _meta_error(file, key, meta[key], "an integer >= 0")
    if "vocab_size" in meta:
        v = meta["vocab_size"]
        if not (_count(v) and v >= 1):
            raise _meta_error(file, "vocab_size", v, "an integer >= 1")
        if v - 1 > np.iinfo(np.dtype(meta["dtype"])).max:
            raise _meta_error(file, "dtype", meta["dtype"], f"{choose_dtype(v).name}: {meta['dtype']} cannot "
                              f"hold ids up to vocab_size - 1 = {v - 1}")
    for key in ("bos_id", "eos_id", "pad_id"):
        if key in meta and meta[key] is not None and not _count(meta[key]):
            raise _meta_error(file, key, meta[key], "null or an integer >= 0")
    if version >= 2:
        _check_shards(file, meta)
    return meta


def load_meta(directory: str | os.PathLike) -> dict[str, Any]:
    """Read ``meta.json`` written by :func:`prepare` (schema-checked), with an error that says how to create it."""
    file = Path(directory) / META_FILE
    return check_meta(file, read_json(file, f"token-shard metadata written by `llmcore prepare --out {directory}` "
                                      "(run it first)", DataError))


def split_files(directory: str | os.PathLike, split: str, meta: dict[str, Any] | None = None,
                ) -> list[tuple[Path, int | None]]:
    """The token files of one split in order, each with its token count (None: a format-1 file without one).

    Shards without tokens are left out. The files are not opened; :class:`~llmcore.data.TokenDataset` checks
    their sizes.
    """
    if split not in SPLITS:
        raise DataError(f"split={split!r} is not one of 'train', 'val'")
    directory = Path(directory)
    meta = load_meta(directory) if meta is None else meta
    if "shards" not in meta:  # format 1
        return [(directory / f"{split}.bin", meta.get(f"n_{split}_tokens"))]
    return [(directory / e["file"], e["tokens"]) for e in meta["shards"][split] if e["tokens"]]


def token_file_names(directory: str | os.PathLike) -> list[str]:
    """Names of every token file ``directory/meta.json`` lists (format 1: those of train.bin / val.bin present)."""
    meta = load_meta(directory)
    if "shards" not in meta:
        return [f"{s}.bin" for s in SPLITS if (Path(directory) / f"{s}.bin").is_file()]
    return [e["file"] for s in SPLITS for e in meta["shards"][s] if e["tokens"]]


def looks_prepared(path: Path) -> bool:
    """Whether ``path`` has the shape of a ``llmcore prepare`` output (meta.json, train tokens, tokenizer/).

    Cheap (reads nothing): for telling a prepared directory from a directory of text files.
    """
    return (path.is_dir() and (path / META_FILE).is_file() and (path / "tokenizer").is_dir()
            and ((path / "train-00000.bin").is_file() or (path / "train.bin").is_file()))


def remove_token_files(directory: Path) -> None:
    """Delete the token files of a prepared directory (both formats), leaving everything else."""
    for f in directory.iterdir():
        if f.name in ("train.bin", "val.bin") or SHARD_NAME.fullmatch(f.name):
            f.unlink()


__all__ = ["FORMAT_VERSION", "META_FILE", "check_meta", "choose_dtype", "load_meta", "looks_prepared",
           "remove_token_files", "split_files", "token_file_names"]
