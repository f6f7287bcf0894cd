"""Tokenize a corpus once into flat id files (``train.bin``, ``val.bin``) plus ``meta.json``.

The output is nanoGPT's format: each ``.bin`` is a raw little-endian array of token ids (``uint16`` when the
vocabulary fits, else ``uint32``) with no header, readable with ``np.memmap(path, dtype, mode="r")``; the
dtype and counts are in ``meta.json``. The split is by position, exactly as nanoGPT's ``shakespeare_char``:
the text is cut at character ``int(n_chars * (1 - val_fraction))``; the part before goes to train, the rest
to val, and each part is tokenized on its own.

Memory stays flat for corpora larger than RAM: a first pass counts characters (and checks UTF-8), a second
streams the text in chunks of at most ``chunk_chars`` characters, cut after a newline where possible, and
appends each chunk's ids to the output file. Chunks are tokenized in worker processes when
``num_workers >= 2``, in order, so the files are byte-identical to an in-process run. Cutting at a newline
changes nothing for byte and character tokenizers, nor for llmcore's sentencepiece models (no piece spans
``"\\n"``); a line longer than ``chunk_chars`` is cut after a space, or anywhere as a last resort.

This file does not train tokenizers itself; :func:`build_tokenizer` only picks and calls one.
"""

from __future__ import annotations

import inspect
import json
import multiprocessing as mp
import os
import pickle
import sys
import tempfile
import warnings
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..errors import DataError, TokenizerError
from ..io import atomic_write_bytes, read_json
from . import corpora

META_FILE = "meta.json"
SPLITS = ("train", "val")
FORMAT_VERSION = 1
CHUNK_CHARS = 1_000_000  # ~1 MB of text per task: big enough to amortise IPC, small enough to stay flat
DEFAULT_SP_VOCAB = 4096
_BOUNDARY = object()  # marks the end of one document (file) in the character stream

TextOrPaths = str | os.PathLike | Sequence[str | os.PathLike] | None


def choose_dtype(vocab_size: int) -> np.dtype:
    """``uint16`` when every id fits (vocab_size <= 65535, as nanoGPT), else ``uint32``."""
    return np.dtype(np.uint16) if vocab_size <= 65535 else np.dtype(np.uint32)


# ------------------------------------------------------------------------------------------------ sources
class _Source:
    """The input as a list of documents that can each be streamed twice (count, then tokenize)."""

    def __init__(self, text_or_paths: TextOrPaths, block_chars: int) -> None:
        if isinstance(text_or_paths, str):
            if "\n" not in text_or_paths and len(text_or_paths) < 4096 and os.path.exists(text_or_paths):
                warnings.warn(
                    f"prepare() got the str {text_or_paths!r}, which names an existing path; a str is "
                    "tokenized as text. Pass a Path (or a list) to read the file.", stacklevel=3)
            if not text_or_paths:
                raise DataError("the text to prepare is empty; pass some text or the paths of text files")
            self.text: str | None = text_or_paths
            self.files: list[Path] = []
            self.names = ["<text>"]
        else:
            self.text = None
            self.files = corpora.resolve_paths(text_or_paths)
            bundled = text_or_paths is None
            self.names = [f"bundled:{p.name}" if bundled else str(p) for p in self.files]
        self.block_chars = block_chars

    def docs(self) -> list[Iterator[str]]:
        if self.text is not None:
            t, n = self.text, self.block_chars
            return [(t[i:i + n] for i in range(0, len(t), n))]  # slices, so no piece is huge
        return [corpora.iter_file_text(p) for p in self.files]

    def stream(self) -> Iterator[Any]:
        """The joined character stream as text pieces, with ``_BOUNDARY`` between documents."""
        docs = self.docs()
        for i, doc in enumerate(docs):
            last = ""
            for piece in doc:
                last = piece[-1]
                yield piece
            if i < len(docs) - 1:
                if last != "\n":
                    yield corpora.DOC_SEPARATOR
                yield _BOUNDARY


def _cut(s: str, start: int, limit: int) -> int:
    """End of the chunk of ``s`` that starts at ``start``: after the last newline (else space) before ``limit``."""
    for sep in ("\n", " "):
        i = s.rfind(sep, start, limit)
        if i >= 0:
            return i + 1
    return limit


def _tasks(stream: Iterator[Any], n_split: int, chunk_chars: int, eos_id: int | None) -> Iterator[tuple[int, Any]]:
    """(split index, text chunk or eos id) in output order; text is cut at ``n_split`` characters exactly.

    Chunk ends depend only on the text (never on how it arrived in pieces), so any reader gives the same chunks.
    """
    split, pos = 0, 0
    buf: list[str] = []
    size = 0

    def drain(final: bool) -> Iterator[tuple[int, str]]:
        nonlocal buf, size
        s, start = "".join(buf), 0
        while len(s) - start > chunk_chars or (final and start < len(s)):
            end = _cut(s, start, start + chunk_chars) if len(s) - start > chunk_chars else len(s)
            yield split, s[start:end]
            start = end
        buf, size = [s[start:]], len(s) - start

    for piece in stream:
        if piece is _BOUNDARY:
            if eos_id is not None:
                yield from drain(final=True)
                yield split, eos_id
            continue
        if split == 0 and pos + len(piece) > n_split:  # the train/val cut falls inside this piece
            head, piece = piece[: n_split - pos], piece[n_split - pos:]
            buf.append(head)
            yield from drain(final=True)
            split, pos = 1, n_split
        buf.append(piece)
        size += len(piece)
        pos += len(piece)
        if size > chunk_chars:
            yield from drain(final=False)
    yield from drain(final=True)


# ------------------------------------------------------------------------------------------------ encoding
class _ChunkEncoder:
    """text chunk -> raw bytes of its ids in the output dtype, with the ids checked against the vocabulary."""

    def __init__(self, tokenizer: Any, dtype: str, vocab_size: int) -> None:
        self.tokenizer, self.dtype, self.vocab_size = tokenizer, np.dtype(dtype), vocab_size
        # sentencepiece may have subword sampling switched on; prepared data must be deterministic
        params = inspect.signature(tokenizer.encode).parameters
        self.kwargs = {"sample": False} if "sample" in params else {}

    def __call__(self, chunk: str) -> bytes:
        ids = np.asarray(self.tokenizer.encode(chunk, **self.kwargs), dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            bad = int(ids.max() if ids.max() >= self.vocab_size else ids.min())
            raise DataError(f"the tokenizer produced id {bad}, outside its vocab_size={self.vocab_size}")
        return ids.astype(self.dtype).tobytes()


_worker_encoder: _ChunkEncoder | None = None


def _init_worker(payload: Any, dtype: str, vocab_size: int) -> None:
    global _worker_encoder
    if isinstance(payload, Path):  # a saved tokenizer directory (the tokenizer could not be pickled)
        from ..tokenizer import load_tokenizer

        payload = load_tokenizer(payload)
    _worker_encoder = _ChunkEncoder(payload, dtype, vocab_size)


def _encode_in_worker(chunk: str) -> bytes:
    assert _worker_encoder is not None, "worker not initialised"
    return _worker_encoder(chunk)


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


def _encoded(tasks: Iterator[tuple[int, Any]], encoder: _ChunkEncoder, tokenizer: Any,
             num_workers: int, dtype: np.dtype) -> Iterator[tuple[int, bytes, int]]:
    """(split, id bytes, characters consumed) in task order; at most 2 tasks per worker in flight."""
    def eos_bytes(i: int) -> bytes:
        return np.asarray([i], dtype=dtype).tobytes()

    if num_workers < 2:
        for split, item in tasks:
            yield (split, eos_bytes(item), 0) if isinstance(item, int) else (split, encoder(item), len(item))
        return
    ctx = _mp_context()
    with tempfile.TemporaryDirectory(prefix="llmcore-prepare-") as tmp:
        payload = _worker_payload(tokenizer, ctx, tmp)
        with ctx.Pool(num_workers, initializer=_init_worker,
                      initargs=(payload, dtype.str, encoder.vocab_size)) as pool:
            pending: deque = deque()  # bounded, so a huge corpus is never queued up in memory
            for split, item in tasks:
                if isinstance(item, int):
                    pending.append((split, None, item))
                else:
                    pending.append((split, pool.apply_async(_encode_in_worker, (item,)), len(item)))
                while len(pending) > 2 * num_workers:
                    yield _resolve(pending.popleft(), eos_bytes)
            while pending:
                yield _resolve(pending.popleft(), eos_bytes)


def _resolve(entry: tuple, eos_bytes: Any) -> tuple[int, bytes, int]:
    split, result, n = entry
    return (split, eos_bytes(n), 0) if result is None else (split, result.get(), n)


# ------------------------------------------------------------------------------------------------ prepare
def check_val_fraction(val_fraction: float) -> None:
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction={val_fraction} must be in [0, 1); e.g. 0.1 keeps the last 10% for val")


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
) -> dict[str, Any]:
    """Tokenize text or files into ``out_dir/{train,val}.bin`` and ``out_dir/meta.json``; returns the meta.

    Args:
        text_or_paths: a ``str`` is the text itself; a ``Path``, a list of paths (files or directories) are
            read with :mod:`llmcore.data.corpora`; ``None`` is the bundled Shakespeare corpus.
        tokenizer: any llmcore tokenizer (``encode``, ``vocab_size``, ``eos_id``).
        out_dir: created if missing; existing ``.bin``/``meta.json`` files there are replaced.
        val_fraction: the last this share of *characters* becomes ``val.bin`` (0 leaves val empty).
        num_workers: worker processes; ``None`` picks the CPU count for inputs of more than a few chunks and
            in-process otherwise; 0 or 1 is in-process. The output does not depend on it.
        chunk_chars: the most characters tokenized in one call (bounds memory; see the module docstring).
        dtype: ``"uint16"``/``"uint32"`` to override :func:`choose_dtype` (must hold every id).
        add_eos_between_docs: put the tokenizer's eos id between files (no effect without an eos token
            or with a single document).
        progress: tqdm bar over characters; ``None`` shows it only when stderr is a terminal.
    """
    check_val_fraction(val_fraction)
    if chunk_chars < 1:
        raise DataError(f"chunk_chars={chunk_chars} must be a positive number of characters")
    vocab_size = int(tokenizer.vocab_size)
    np_dtype = choose_dtype(vocab_size) if dtype is None else np.dtype(dtype)
    if np_dtype.kind != "u" or vocab_size - 1 > np.iinfo(np_dtype).max:
        raise DataError(f"dtype={np_dtype.name} cannot hold ids up to {vocab_size - 1}; use "
                        f"{choose_dtype(vocab_size).name} (or leave dtype=None)")
    eos_id = tokenizer.eos_id if add_eos_between_docs else None

    source = _Source(text_or_paths, chunk_chars)
    n_chars = sum(len(p) for p in source.stream() if p is not _BOUNDARY)  # pass 1: count and check UTF-8
    n_split = int(n_chars * (1 - val_fraction))  # nanoGPT: data[:int(n*0.9)] / data[int(n*0.9):]
    if n_split == 0 or (val_fraction > 0 and n_split == n_chars):
        raise DataError(f"the text has only {n_chars} characters, too few to split with val_fraction="
                        f"{val_fraction}; give more text or change val_fraction")
    if num_workers is None:
        num_workers = min(os.cpu_count() or 1, 8) if n_chars > 4 * chunk_chars else 0
    encoder = _ChunkEncoder(tokenizer, np_dtype.str, vocab_size)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp_paths = [out / f"{s}.bin.tmp" for s in SPLITS]
    counts = [0, 0]
    show = sys.stderr.isatty() if progress is None else progress
    try:
        files = [open(p, "wb") for p in tmp_paths]
        try:
            tasks = _tasks(source.stream(), n_split, chunk_chars, eos_id)  # pass 2: tokenize and append
            with tqdm(total=n_chars, unit="char", unit_scale=True, desc="prepare", disable=not show) as bar:
                for split, data, n in _encoded(tasks, encoder, tokenizer, num_workers, np_dtype):
                    files[split].write(data)
                    counts[split] += len(data) // np_dtype.itemsize
                    bar.update(n)
        finally:
            for f in files:
                f.close()
        for tmp, split in zip(tmp_paths, SPLITS):
            os.replace(tmp, out / f"{split}.bin")
    finally:
        for tmp in tmp_paths:
            tmp.unlink(missing_ok=True)

    meta = {
        "format_version": FORMAT_VERSION,
        "vocab_size": vocab_size,
        "dtype": np_dtype.name,
        "n_train_tokens": counts[0],
        "n_val_tokens": counts[1],
        "n_chars": n_chars,
        "n_train_chars": n_split,
        "n_val_chars": n_chars - n_split,
        "val_fraction": val_fraction,
        "split": "by position: characters [0, int(n_chars * (1 - val_fraction))) -> train.bin, the rest -> val.bin",
        "tokenizer": getattr(tokenizer, "kind", "") or type(tokenizer).__name__,
        "bos_id": tokenizer.bos_id,
        "eos_id": tokenizer.eos_id,
        "pad_id": tokenizer.pad_id,
        "eos_between_docs": eos_id is not None and len(source.names) > 1,
        "sources": source.names,
        "chunk_chars": chunk_chars,
    }
    atomic_write_bytes(out / META_FILE, (json.dumps(meta, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
    return meta


SUPPORTED_DTYPES = ("uint16", "uint32")  # what prepare writes; anything else would reinterpret the bytes


def _meta_error(file: Path, field: str, value: Any, expected: str) -> DataError:
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    return DataError(f"{file}: field {field!r} is {shown}, expected {expected}; the prepared data is damaged or "
                     f"was not written by this llmcore: run `llmcore prepare --out {file.parent}` again.")


def check_meta(file: Path, meta: Any) -> dict[str, Any]:
    """Check a ``meta.json`` against its schema (``format_version``, ``dtype``, counts); returns it."""
    if not isinstance(meta, dict):
        raise _meta_error(file, "(top level)", meta, "a JSON object")

    def count(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    if "format_version" in meta and meta["format_version"] != FORMAT_VERSION:  # files before the key: version 1
        raise _meta_error(file, "format_version", meta["format_version"], f"{FORMAT_VERSION} (the only format "
                          "this llmcore reads)")
    if "dtype" not in meta:
        raise DataError(f"{file}: field 'dtype' is missing, expected one of {', '.join(SUPPORTED_DTYPES)}; run "
                        f"`llmcore prepare --out {file.parent}` again.")
    if meta["dtype"] not in SUPPORTED_DTYPES:
        raise _meta_error(file, "dtype", meta["dtype"], f"one of {', '.join(SUPPORTED_DTYPES)}")
    for key in ("n_train_tokens", "n_val_tokens", "n_chars", "n_train_chars", "n_val_chars"):
        if key in meta and not count(meta[key]):
            raise _meta_error(file, key, meta[key], "an integer >= 0")
    if "vocab_size" in meta:
        v = meta["vocab_size"]
        if not (count(v) and v >= 1):
            raise _meta_error(file, "vocab_size", v, "an integer >= 1")
        if v - 1 > np.iinfo(np.dtype(meta["dtype"])).max:
            raise _meta_error(file, "dtype", meta["dtype"], f"{choose_dtype(v).name}: {meta['dtype']} cannot "
                              f"hold ids up to vocab_size - 1 = {v - 1}")
    for key in ("bos_id", "eos_id", "pad_id"):
        if key in meta and meta[key] is not None and not count(meta[key]):
            raise _meta_error(file, key, meta[key], "null or an integer >= 0")
    return meta


def load_meta(directory: str | os.PathLike) -> dict[str, Any]:
    """Read ``meta.json`` written by :func:`prepare` (schema-checked), with an error that says how to create it."""
    file = Path(directory) / META_FILE
    return check_meta(file, read_json(file, f"token-shard metadata written by `llmcore prepare --out {directory}` "
                                      "(run it first)", DataError))


# ------------------------------------------------------------------------------------------------ tokenizers
def build_tokenizer(spec: Any, text_or_paths: TextOrPaths = None, vocab_size: int | None = None) -> Any:
    """The tokenizer a command line asks for.

    Args:
        spec: ``"char"`` (alphabet of the text, as nanoGPT's shakespeare_char), ``"byte"`` (UTF-8 bytes),
            ``"sp"`` (a sentencepiece BPE trained on the text with ``vocab_size``, default
            :data:`DEFAULT_SP_VOCAB`), a saved tokenizer directory, or a tokenizer object (returned as is).
        text_or_paths: the training text, as for :func:`prepare` (``None``: bundled Shakespeare).
        vocab_size: only for ``"sp"``.
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
        source = _Source(text_or_paths, CHUNK_CHARS)
        if name == "char":  # streamed: the alphabet of a corpus larger than memory still fits
            alphabet: set[str] = set()
            for piece in source.stream():
                if piece is not _BOUNDARY:
                    alphabet.update(piece)
            return CharTokenizer.from_text("".join(sorted(alphabet)))
        pieces = (p for p in source.stream() if p is not _BOUNDARY)
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


__all__ = ["CHUNK_CHARS", "DEFAULT_SP_VOCAB", "build_tokenizer", "choose_dtype", "load_meta", "prepare"]
