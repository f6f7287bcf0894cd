"""Tokenize a corpus once into token shards (``train-00000.bin``, ``val-00000.bin``, ...) plus ``meta.json``.

Each shard is nanoGPT's format: a raw little-endian array of token ids (``uint16`` when the vocabulary fits,
else ``uint32``) with no header, readable with ``np.memmap(path, dtype, mode="r")``; ``meta.json`` is the
index: the dtype, the counts, and each split's shards in order (``"shards"``). A split is the concatenation of
its shards (:class:`~llmcore.data.TokenDataset` reads it so, memory-mapped). The split is by position, exactly
as nanoGPT's ``shakespeare_char``: the text is cut at character ``int(n_chars * (1 - val_fraction))``; the part
before goes to train, the rest to val.

Shards follow the inputs, never the machine: every input file is one part, or several byte ranges of about
``shard_bytes`` cut after a newline when it is large and uncompressed (:mod:`llmcore.data.parts`); each part
becomes one shard (the part holding the train/val cut, two). So ``prepare`` writes the same files, byte for
byte, in one process, with ``num_workers`` processes, or on a Dask cluster (``dask="local:4"`` or a scheduler
address, :mod:`llmcore.data.dask_prepare`), and the same ``meta.json``.

Memory stays flat for corpora larger than RAM: a first pass counts characters (and checks UTF-8), a second
streams each part in chunks of at most ``chunk_chars`` characters, cut after a newline where possible, and
appends each chunk's ids to the part's shard. Locally, chunks are tokenized in worker processes when
``num_workers >= 2``, in order; on Dask each part is one task. Cutting at a newline changes nothing for byte
and character tokenizers, nor for llmcore's sentencepiece models (no piece spans ``"\\n"``); a line longer than
``chunk_chars`` is cut after a space, or anywhere as a last resort. Shards are staged in a hidden directory and
moved into place before ``meta.json`` is written, last and atomically: a failed run leaves no index.

Directories prepared by earlier llmcore versions (``train.bin`` / ``val.bin``, ``format_version`` 1) are read
as before. This file does not train tokenizers itself; :func:`build_tokenizer` only picks and calls one.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import pickle
import shutil
import sys
import tempfile
import uuid
import warnings
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..errors import ConfigError, DataError, TokenizerError
from ..io import atomic_write_bytes, cannot_write, writable_dir
from . import corpora
from .layout import (
    FORMAT_VERSION,
    META_FILE,
    check_meta,
    choose_dtype,
    load_meta,
    remove_token_files,
    split_files,
)
from .parts import (
    BOUNDARY,
    SPLITS,
    ChunkEncoder,
    Count,
    Job,
    Part,
    Piece,
    Settings,
    count_part,
    describe,
    job_chunks,
    one_thread,
    part_stream,
    plan_parts,
    write_units,
)

CHUNK_CHARS = 1_000_000  # ~1 MB of text per tokenizer call: big enough to amortise IPC, small enough to stay flat
SHARD_BYTES = 32 << 20  # input bytes per part (shard): a Dask task of a few seconds to a minute
DEFAULT_SP_VOCAB = 4096
STAGING_PREFIX = ".llmcore-prepare-"  # hidden directory in out_dir the shards are written into before the index

TextOrPaths = str | os.PathLike | Sequence[str | os.PathLike] | None


# ------------------------------------------------------------------------------------------------ inputs
def _inputs(text_or_paths: TextOrPaths) -> tuple[str | list[Path], list[str]]:
    """The text itself or the resolved files, and their names for meta.json ``sources``."""
    if isinstance(text_or_paths, str):
        if "\n" not in text_or_paths and len(text_or_paths) < 4096 and os.path.exists(text_or_paths):
            warnings.warn(
                f"prepare() got the str {text_or_paths!r}, which names an existing path; a str is "
                "tokenized as text. Pass a Path (or a list) to read the file.", stacklevel=3)
        if not text_or_paths:
            raise DataError("the text to prepare is empty; pass some text or the paths of text files")
        return text_or_paths, ["<text>"]
    files = corpora.resolve_paths(text_or_paths)
    bundled = text_or_paths is None
    return files, [f"bundled:{p.name}" if bundled else str(p) for p in files]


def iter_text(text_or_paths: TextOrPaths, text_field: str = "text") -> Iterator[str]:
    """The corpus as text pieces, documents joined as prepare joins them (for tokenizer training)."""
    inputs, _ = _inputs(text_or_paths)
    parts = plan_parts(inputs, SHARD_BYTES)
    for i, part in enumerate(parts):
        yield from (p for p in part_stream(part, text_field, final=i == len(parts) - 1) if p is not BOUNDARY)


# ------------------------------------------------------------------------------------------------ local runner
_worker_encoder: ChunkEncoder | None = None


def _init_worker(payload: Any, dtype: str, vocab_size: int) -> None:
    global _worker_encoder
    if isinstance(payload, Path):  # a saved tokenizer directory (the tokenizer could not be pickled)
        from ..tokenizer import load_tokenizer

        payload = load_tokenizer(payload)
    _worker_encoder = ChunkEncoder(one_thread(payload), dtype, vocab_size)


def _encode_in_worker(chunk: str) -> bytes:
    assert _worker_encoder is not None, "worker not initialised"
    return _worker_encoder(chunk)


def _count_in_worker(args: tuple[Part, str]) -> Count:
    return count_part(*args)


def _mp_context() -> Any:
    # fork starts workers in milliseconds and shares the tokenizer without pickling; elsewhere the default
    return mp.get_context("fork") if sys.platform.startswith("linux") else mp.get_context()


def _worker_payload(tokenizer: Any, ctx: Any, tmp: str) -> Any:
    if ctx.get_start_method() == "fork":
        return tokenizer
    try:
        pickle.dumps(tokenizer)
        return tokenizer
    except Exception:  # e.g. a C++ object inside; fall back to save + load_tokenizer in each worker
        return Path(tokenizer.save(Path(tmp) / "tokenizer"))


class LocalRunner:
    """Both passes in this process, or over a pool of ``num_workers`` processes (chunks in flight, in order)."""

    def __init__(self, tokenizer: Any, encoder: ChunkEncoder, num_workers: int) -> None:
        self.tokenizer, self.encoder, self.num_workers = tokenizer, encoder, num_workers
        self.pool: Any = None

    def __enter__(self) -> LocalRunner:
        if self.num_workers >= 2:
            ctx = _mp_context()
            self._tmp = tempfile.TemporaryDirectory(prefix="llmcore-prepare-")
            payload = _worker_payload(self.tokenizer, ctx, self._tmp.name)
            self.pool = ctx.Pool(self.num_workers, initializer=_init_worker,
                                 initargs=(payload, self.encoder.dtype.str, self.encoder.vocab_size))
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self._tmp.cleanup()

    def count(self, parts: list[Part], text_field: str) -> list[Count]:
        if self.pool is None or len(parts) < 2:
            return [count_part(p, text_field) for p in parts]
        return self.pool.map(_count_in_worker, [(p, text_field) for p in parts], chunksize=1)

    def encode(self, jobs: list[Job], settings: Settings, bar: Any) -> list[Piece]:
        units = ((job.part.index, split, item) for job in jobs for split, item in job_chunks(job, settings))
        return write_units(self._encoded(units), settings, bar.update)

    def _encoded(self, units: Iterator[tuple[int, int, Any]]) -> Iterator[tuple[int, int, bytes, int]]:
        """(part, split, id bytes, characters) in unit order; at most 2 chunks per worker in flight."""
        enc = self.encoder
        if self.pool is None:
            for part, split, item in units:
                yield (part, split, enc.eos(item), 0) if isinstance(item, int) else (part, split, enc(item), len(item))
            return
        pending: deque = deque()  # bounded, so a huge corpus is never queued up in memory
        for part, split, item in units:
            if isinstance(item, int):
                pending.append((part, split, None, item))
            else:
                pending.append((part, split, self.pool.apply_async(_encode_in_worker, (item,)), len(item)))
            while len(pending) > 2 * self.num_workers:
                yield self._resolve(pending.popleft())
        while pending:
            yield self._resolve(pending.popleft())

    def _resolve(self, entry: tuple) -> tuple[int, int, bytes, int]:
        part, split, result, n = entry
        return (part, split, self.encoder.eos(n), 0) if result is None else (part, split, result.get(), n)


# ------------------------------------------------------------------------------------------------ prepare
def check_val_fraction(val_fraction: float) -> None:
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction={val_fraction} must be in [0, 1); e.g. 0.1 keeps the last 10% for val")


def plan_jobs(parts: list[Part], counts: list[Count], val_fraction: float,
              names: list[str], text_field: str) -> tuple[list[Job], int, int, int]:
    """The pass-2 jobs (parts with text), n_chars, the train/val cut (in characters) and the document count."""
    with_docs = [i for i, c in enumerate(counts) if c.docs]
    final = with_docs[-1] if with_docs else -1
    docs_of = [0] * len(names)
    for part, c in zip(parts, counts):
        docs_of[part.source] += c.docs
    for name, docs in zip(names, docs_of):  # a JSONL file whose records are all empty
        if not docs:
            raise DataError(f"{name} has no record with text in field {text_field!r}; remove it or pass the "
                            "field that holds the text (text_field=..., --text-field)")
    sizes = [c.chars - (i == final and c.last_sep) for i, c in enumerate(counts)]
    n_chars = sum(sizes)
    n_split = int(n_chars * (1 - val_fraction))  # nanoGPT: data[:int(n*0.9)] / data[int(n*0.9):]
    if n_split == 0 or (val_fraction > 0 and n_split == n_chars):
        raise DataError(f"the text has only {n_chars} characters, too few to split with val_fraction="
                        f"{val_fraction}; give more text or change val_fraction")
    jobs, start = [], 0
    for part, size in zip(parts, sizes):
        if size:
            jobs.append(Job(part, min(max(n_split - start, 0), size), part.index == final, size))
        start += size
    return jobs, n_chars, n_split, sum(c.docs for c in counts)


def prepare(
    text_or_paths: TextOrPaths,
    tokenizer: Any,
    out_dir: str | os.PathLike,
    val_fraction: float = 0.1,
    num_workers: int | None = None,
    chunk_chars: int = CHUNK_CHARS,
    dtype: str | np.dtype | None = None,
    add_eos_between_docs: bool = True,
    progress: bool | None = None,
    shard_bytes: int = SHARD_BYTES,
    text_field: str = "text",
    dask: Any = None,
) -> dict[str, Any]:
    """Tokenize text or files into ``out_dir/{train,val}-NNNNN.bin`` and ``out_dir/meta.json``; returns the meta.

    Args:
        text_or_paths: a ``str`` is the text itself; a ``Path``, a list of paths (files, directories or glob
            patterns) are read with :mod:`llmcore.data.corpora` (``.txt``, ``.gz``, ``.xz``, ``.zst``,
            ``.jsonl``); ``None`` is the bundled Shakespeare corpus.
        tokenizer: any llmcore tokenizer (``encode``, ``vocab_size``, ``eos_id``).
        out_dir: created if missing; existing token files and ``meta.json`` there are replaced.
        val_fraction: the last this share of *characters* becomes the val split (0 leaves val empty).
        num_workers: local worker processes; ``None`` picks the CPU count for inputs of more than a few chunks
            and in-process otherwise; 0 or 1 is in-process. The output does not depend on it.
        chunk_chars: the most characters tokenized in one call (bounds memory; see the module docstring).
        dtype: ``"uint16"``/``"uint32"`` to override :func:`choose_dtype` (must hold every id).
        add_eos_between_docs: put the tokenizer's eos id between documents (files, JSONL records); no effect
            without an eos token or with a single document.
        progress: tqdm bar over characters; ``None`` shows it only when stderr is a terminal.
        shard_bytes: an uncompressed file larger than this is split into byte ranges of about this size, cut
            after a newline; each range (and each compressed file) is one shard and, on Dask, one task.
        text_field: the field of a JSONL record that holds its text.
        dask: prepare on Dask instead of locally (``pip install 'llmcore[dask]'``): ``"local:N"`` starts a
            local cluster of N worker processes, any other string is a scheduler address
            (``"tcp://host:8786"``), or a ``distributed.Client``. The workers must see the input files and
            ``out_dir`` at the same paths (a shared filesystem). The output does not depend on it.
    """
    check_val_fraction(val_fraction)
    if chunk_chars < 1:
        raise DataError(f"chunk_chars={chunk_chars} must be a positive number of characters")
    if not (isinstance(shard_bytes, int) and shard_bytes >= 1):
        raise DataError(f"shard_bytes={shard_bytes!r} must be a positive number of bytes, e.g. {SHARD_BYTES}")
    if dask is not None and num_workers not in (None, 0, 1):
        raise ConfigError(f"num_workers={num_workers} and dask={dask!r} exclude each other: with Dask the "
                          "cluster's workers tokenize; drop one")
    vocab_size = int(tokenizer.vocab_size)
    np_dtype = choose_dtype(vocab_size) if dtype is None else np.dtype(dtype)
    if np_dtype.kind != "u" or vocab_size - 1 > np.iinfo(np_dtype).max:
        raise DataError(f"dtype={np_dtype.name} cannot hold ids up to {vocab_size - 1}; use "
                        f"{choose_dtype(vocab_size).name} (or leave dtype=None)")
    writable_dir(out_dir, "prepared data directory", DataError)  # read-only: refused before tokenizing
    inputs, names = _inputs(text_or_paths)
    parts = plan_parts(inputs, shard_bytes)
    encoder = ChunkEncoder(tokenizer, np_dtype.str, vocab_size)
    if dask is not None:
        from .dask_prepare import DaskRunner

        runner: Any = DaskRunner(dask, tokenizer)
    else:
        if num_workers is None:
            size = len(inputs) if isinstance(inputs, str) else sum(p.stat().st_size for p in inputs)
            num_workers = min(os.cpu_count() or 1, 8) if size > 4 * chunk_chars else 0
        runner = LocalRunner(tokenizer, encoder, num_workers)

    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # read-only, or a file where the directory should be: one line, nothing written
        raise cannot_write(out, e, "prepared data directory", DataError) from e
    for stale in out.glob(STAGING_PREFIX + "*"):  # left by a run that was killed
        shutil.rmtree(stale, ignore_errors=True)
    staging = out / f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}"
    show = sys.stderr.isatty() if progress is None else progress
    with runner:
        counts = runner.count(parts, text_field)  # pass 1: characters, documents, UTF-8 check
        jobs, n_chars, n_split, n_docs = plan_jobs(parts, counts, val_fraction, names, text_field)
        eos_id = tokenizer.eos_id if add_eos_between_docs and n_docs > 1 else None
        settings = Settings(chunk_chars, eos_id, np_dtype.str, vocab_size, text_field, str(staging.resolve()))
        staging.mkdir()
        try:
            with tqdm(total=n_chars, unit="char", unit_scale=True, desc="prepare", disable=not show) as bar:
                pieces = runner.encode(jobs, settings, bar)  # pass 2: tokenize each part into its shard(s)
            meta = {
                "format_version": FORMAT_VERSION,
                "vocab_size": vocab_size,
                "dtype": np_dtype.name,
                "n_train_tokens": 0,
                "n_val_tokens": 0,
                "n_chars": n_chars,
                "n_train_chars": n_split,
                "n_val_chars": n_chars - n_split,
                "val_fraction": val_fraction,
                "split": "by position: characters [0, int(n_chars * (1 - val_fraction))) -> train, the rest -> val",
                "tokenizer": getattr(tokenizer, "kind", "") or type(tokenizer).__name__,
                "bos_id": tokenizer.bos_id,
                "eos_id": tokenizer.eos_id,
                "pad_id": tokenizer.pad_id,
                "eos_between_docs": eos_id is not None,
                "n_docs": n_docs,
                "sources": names,
                "text_field": text_field,
                "chunk_chars": chunk_chars,
                "shard_bytes": shard_bytes,
            }
            _finalize(out, staging, parts, pieces, np_dtype.itemsize, meta)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return meta


def _finalize(out: Path, staging: Path, parts: list[Part], pieces: list[Piece], itemsize: int,
              meta: dict[str, Any]) -> None:
    """Name the staged pieces ``{split}-NNNNN.bin`` in corpus order, move them into ``out``, write the index last."""
    shards: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    moves = []
    for piece in sorted(pieces, key=lambda p: (p.split, p.part)):
        file, part = staging / piece.file, parts[piece.part]
        if file.stat().st_size != piece.tokens * itemsize:  # a task that wrote and reported different things
            raise DataError(f"{file} has {file.stat().st_size} bytes, not the {piece.tokens} ids its task reported "
                            f"for {describe(part)}; run prepare again")
        if piece.tokens == 0:
            continue
        split = SPLITS[piece.split]
        name = f"{split}-{len(shards[split]):05d}.bin"
        shards[split].append({"file": name, "tokens": piece.tokens, "chars": piece.chars, "source": part.source,
                              "range": [part.start, part.end]})
        moves.append((file, out / name))
    meta["n_train_tokens"], meta["n_val_tokens"] = (sum(e["tokens"] for e in shards[s]) for s in SPLITS)
    meta["shards"] = shards
    (out / META_FILE).unlink(missing_ok=True)  # from here until the new index is written, out has none
    remove_token_files(out)
    for src, dst in moves:
        os.replace(src, dst)
    atomic_write_bytes(out / META_FILE, (json.dumps(meta, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


# ------------------------------------------------------------------------------------------------ tokenizers
def build_tokenizer(spec: Any, text_or_paths: TextOrPaths = None, vocab_size: int | None = None,
                    text_field: str = "text") -> Any:
    """The tokenizer a command line asks for.

    Args:
        spec: ``"char"`` (alphabet of the text, as nanoGPT's shakespeare_char), ``"byte"`` (UTF-8 bytes),
            ``"sp"`` (a sentencepiece BPE trained on the text with ``vocab_size``, default
            :data:`DEFAULT_SP_VOCAB`), a saved tokenizer directory, or a tokenizer object (returned as is).
        text_or_paths: the training text, as for :func:`prepare` (``None``: bundled Shakespeare).
        vocab_size: only for ``"sp"``.
        text_field: the text field of JSONL inputs.
    """
    from ..tokenizer import ByteTokenizer, CharTokenizer, SentencePieceTokenizer, load_tokenizer

    if not isinstance(spec, (str, os.PathLike)):
        return spec
    name = str(spec)
    if vocab_size is not None and name in ("char", "byte"):
        raise TokenizerError(f"vocab_size={vocab_size} does not apply to the {name} tokenizer; "
                             "drop it or use the sp tokenizer")
    if name == "byte":
        return ByteTokenizer()
    if name in ("char", "sp", "sentencepiece"):
        pieces = iter_text(text_or_paths, text_field)
        if name == "char":  # streamed: the alphabet of a corpus larger than memory still fits
            alphabet: set[str] = set()
            for piece in pieces:
                alphabet.update(piece)
            return CharTokenizer.from_text("".join(sorted(alphabet)))
        return SentencePieceTokenizer.train(input=_lines(pieces), vocab_size=vocab_size or DEFAULT_SP_VOCAB,
                                            model_type="bpe")
    if Path(name).is_dir():
        return load_tokenizer(name)
    raise TokenizerError(f"unknown tokenizer {name!r}: use char, byte, sp, or the directory of a saved tokenizer")


def _lines(pieces: Iterator[str]) -> Iterator[str]:
    """Re-cut text pieces into whole lines (without their newline) for tokenizer training."""
    rest = ""
    for piece in pieces:
        lines = (rest + piece).split("\n")
        rest = lines.pop()
        yield from lines
    if rest:
        yield rest


__all__ = ["CHUNK_CHARS", "DEFAULT_SP_VOCAB", "SHARD_BYTES", "build_tokenizer", "check_meta", "choose_dtype",
           "load_meta", "prepare", "split_files"]
