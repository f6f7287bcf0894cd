"""A corpus as parts: the unit of work of :func:`llmcore.data.prepare`, in one process, a pool or on Dask.

A part is a byte range of one uncompressed input file (about ``shard_bytes`` long, cut after a newline), a
whole compressed file (a gzip / xz / zstd stream cannot be entered in the middle), or a slice of an in-memory
text. Part boundaries depend only on the inputs and ``shard_bytes``, never on how many processes or Dask
workers tokenize them, and each part becomes its own token shard (two where the train/val cut falls inside
it), so every way of running ``prepare`` writes the same files, byte for byte.

Within a part the text is tokenized in chunks of at most ``chunk_chars`` characters, cut after a newline where
possible (:func:`chunks`), so the memory of a task is bounded by the chunk size (and, for JSONL, the longest
record) whatever the size of the part. Documents (text files; the records of a JSONL file) are joined as in
:mod:`llmcore.data.corpora`: a ``"\\n"`` after a document that does not end with one, and the tokenizer's eos id
between documents, except after the last document of the corpus.

What a worker runs is here and takes plain data only (:class:`Part`, :class:`Job`, :class:`Settings`), so a
Dask worker needs nothing but llmcore: :func:`count_part` (pass 1: characters and documents, which place the
train/val cut) and :func:`write_part` (pass 2: the ids of one part into its staged shard files).
"""

from __future__ import annotations

import copy
import inspect
import os
import socket
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from . import corpora

SPLITS = ("train", "val")
BOUNDARY = object()  # marks the end of one document in a part's character stream


class _Separator(str):
    """The separator a part's stream adds after a document: equal to "\\n", but never the same object."""


SEPARATOR = _Separator(corpora.DOC_SEPARATOR)
_TEXT_BLOCK = 1 << 20  # characters per piece when streaming an in-memory text


@dataclass(frozen=True)
class Part:
    """One unit of work: ``[start, end)`` of input ``source`` (bytes of a file; characters of in-memory text)."""

    index: int
    source: int  # index into the inputs (meta.json "sources")
    path: str | None  # absolute path of the file; None: ``text`` holds the characters
    start: int
    end: int | None  # None: to the end (a compressed file is always read whole)
    jsonl: bool = False
    file_end: bool = True  # the part ends its file, so a text file's document ends here
    text: str | None = None


@dataclass(frozen=True)
class Count:
    """What pass 1 learns about a part."""

    chars: int  # characters, counting a separator after each document that ends here without a newline
    docs: int  # documents that end in this part
    last_sep: bool  # whether the last of them got that separator (dropped after the corpus' last document)


@dataclass(frozen=True)
class Job:
    """Pass 2 for one part: where its train/val cut is and whether it holds the corpus' last document."""

    part: Part
    split_at: int  # the part's first ``split_at`` characters go to train, the rest to val
    final: bool
    chars: int  # the part's characters (for progress)


@dataclass(frozen=True)
class Settings:
    """What every pass-2 task shares."""

    chunk_chars: int
    eos_id: int | None  # between documents; None: no eos
    dtype: str
    vocab_size: int
    text_field: str
    staging: str  # directory the tasks write their shard files into (shared by all Dask workers)


@dataclass(frozen=True)
class Piece:
    """One staged shard file: the ids of one split of one part."""

    part: int
    split: int  # index into SPLITS
    tokens: int
    chars: int
    file: str  # name inside the staging directory


# ------------------------------------------------------------------------------------------------ planning
def _line_cuts(path: Path, size: int, shard_bytes: int) -> list[int]:
    """Byte offsets ``[0, ..., size]`` cutting ``path`` after the first newline once ``shard_bytes`` are passed."""
    cuts = [0]
    with open(path, "rb") as f:
        while cuts[-1] + shard_bytes < size:
            pos = cuts[-1] + shard_bytes - 1  # the newline may be the last byte of the nominal part
            f.seek(pos)
            while True:
                block = f.read(1 << 16)
                if not block:
                    pos = size
                    break
                i = block.find(b"\n")
                if i >= 0:
                    pos += i + 1
                    break
                pos += len(block)
            if pos >= size:
                break
            cuts.append(pos)
    return [*cuts, size]


def _text_cuts(text: str, shard_chars: int) -> list[int]:
    cuts = [0]
    while len(text) - cuts[-1] > shard_chars:
        i = text.find("\n", cuts[-1] + shard_chars - 1)
        if i < 0 or i + 1 >= len(text):
            break
        cuts.append(i + 1)
    return [*cuts, len(text)]


def plan_parts(inputs: str | list[Path], shard_bytes: int) -> list[Part]:
    """The parts of ``inputs`` (the text itself, or the resolved input files) in corpus order."""
    parts: list[Part] = []
    if isinstance(inputs, str):
        cuts = _text_cuts(inputs, shard_bytes)
        return [Part(i, 0, None, a, b, file_end=b == len(inputs), text=inputs[a:b])
                for i, (a, b) in enumerate(zip(cuts, cuts[1:]))]
    for source, path in enumerate(inputs):
        jsonl, absolute = corpora.is_jsonl(path), str(Path(path).resolve())
        if corpora.is_compressed(path):
            parts.append(Part(len(parts), source, absolute, 0, None, jsonl))
            continue
        cuts = _line_cuts(Path(path), Path(path).stat().st_size, shard_bytes)
        for a, b in zip(cuts, cuts[1:]):
            parts.append(Part(len(parts), source, absolute, a, b, jsonl, file_end=b == cuts[-1]))
    return parts


def describe(part: Part) -> str:
    """``file bytes a-b`` (or ``the text, characters a-b``): where a part comes from, for messages."""
    if part.path is None:
        return f"the text, characters {part.start}-{part.end}"
    return part.path if part.end is None else f"{part.path}, bytes {part.start}-{part.end}"


# ------------------------------------------------------------------------------------------------ streams
def _docs(part: Part, text_field: str) -> Iterator[tuple[Iterable[str], bool]]:
    """(text pieces, whether the document ends in this part) for each document (piece) of the part."""
    if part.text is not None:
        t = part.text
        yield (t[i:i + _TEXT_BLOCK] for i in range(0, len(t), _TEXT_BLOCK)), part.file_end
    elif part.jsonl:
        for text in corpora.iter_jsonl_texts(part.path, text_field, part.start, part.end):
            yield (text,), True
    else:
        yield corpora.iter_file_text(part.path, start=part.start, end=part.end), part.file_end


def part_stream(part: Part, text_field: str, final: bool) -> Iterator[Any]:
    """The part's characters as text pieces, with :data:`BOUNDARY` after each document that ends in it.

    A document not ending with a newline gets :data:`SEPARATOR` (``"\\n"``) before its boundary. With
    ``final`` (the part holds the corpus' last document), the last document of the part gets neither.
    """
    docs = _docs(part, text_field)
    current = next(docs, None)
    while current is not None:
        pieces, ends = current
        last = ""
        for piece in pieces:
            if piece:
                last = piece[-1]
                yield piece
        following = next(docs, None)  # after the pieces: a file's pieces are read while it is open
        if ends and not (final and following is None):
            if last != "\n":
                yield SEPARATOR
            yield BOUNDARY
        current = following


def count_part(part: Part, text_field: str) -> Count:
    """Pass 1: the characters and document ends of one part (decoding it checks its UTF-8 too)."""
    chars = docs = 0
    last_sep = pending_sep = False
    for piece in part_stream(part, text_field, final=False):
        if piece is BOUNDARY:
            docs, last_sep, pending_sep = docs + 1, pending_sep, False
        else:
            pending_sep = piece is SEPARATOR
            chars += len(piece)
    return Count(chars, docs, last_sep)


def _cut(s: str, start: int, limit: int) -> int:
    """End of the chunk of ``s`` that starts at ``start``: after the last newline (else space) before ``limit``."""
    for sep in ("\n", " "):
        i = s.rfind(sep, start, limit)
        if i >= 0:
            return i + 1
    return limit


def chunks(stream: Iterator[Any], n_split: int, chunk_chars: int, eos_id: int | None) -> Iterator[tuple[int, Any]]:
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
        if piece is BOUNDARY:
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


def job_chunks(job: Job, settings: Settings) -> Iterator[tuple[int, Any]]:
    """The (split, chunk or eos id) units of one job."""
    stream = part_stream(job.part, settings.text_field, job.final)
    return chunks(stream, job.split_at, settings.chunk_chars, settings.eos_id)


# ------------------------------------------------------------------------------------------------ encoding
def one_thread(tokenizer: Any) -> Any:
    """``tokenizer``, or a shallow copy that encodes on one thread (for a pool process or a Dask worker).

    Where prepare runs one process per core, a tokenizer that threads each call over every core (llmcore's
    sentencepiece batches a text's lines) would oversubscribe the cores; Dask's own rule for its workers is the
    same (``OMP_NUM_THREADS=1``). The ids do not depend on the thread count.
    """
    if isinstance(getattr(tokenizer, "num_threads", None), int) and tokenizer.num_threads != 1:
        tokenizer = copy.copy(tokenizer)
        tokenizer.num_threads = 1
    return tokenizer


class ChunkEncoder:
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

    def eos(self, eos_id: int) -> bytes:
        return np.asarray([eos_id], dtype=self.dtype).tobytes()

    def units(self, units: Iterable[tuple[int, Any]]) -> Iterator[tuple[int, bytes, int]]:
        """(split, id bytes, characters) for each (split, chunk or eos id), in this process."""
        for split, item in units:
            yield (split, self.eos(item), 0) if isinstance(item, int) else (split, self(item), len(item))


class PartWriter:
    """Writes one part's encoded units into its staged files, one per split, each complete or absent.

    A file is written under a temporary name and renamed when done, so a worker killed mid-task leaves only
    a temporary file, and a task that runs twice (Dask retries it elsewhere) writes the same bytes again.
    """

    def __init__(self, part: int, settings: Settings) -> None:
        self.part, self.staging, self.itemsize = part, Path(settings.staging), np.dtype(settings.dtype).itemsize
        if not self.staging.is_dir():
            raise DataError(f"{self.staging} does not exist on {socket.gethostname()}: with Dask, the output "
                            "directory must be on a filesystem that the client and every worker share")
        self.pieces: list[Piece] = []
        self.file: Any = None
        self.split, self.tokens, self.chars = -1, 0, 0
        self.tmp: Path | None = None

    def write(self, split: int, data: bytes, n_chars: int) -> None:
        if split != self.split:
            self._close()
            self.split, self.tokens, self.chars = split, 0, 0
            self.tmp = self.staging / f"{self._name()}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
            self.file = open(self.tmp, "wb")
        self.file.write(data)
        self.tokens += len(data) // self.itemsize
        self.chars += n_chars

    def _name(self) -> str:
        return f"part-{self.part:06d}-{SPLITS[self.split]}.bin"

    def _close(self) -> None:
        if self.file is None:
            return
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        self.file = None
        os.replace(self.tmp, self.staging / self._name())
        self.pieces.append(Piece(self.part, self.split, self.tokens, self.chars, self._name()))

    def close(self) -> list[Piece]:
        self._close()
        return self.pieces

    def abort(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
            self.tmp.unlink(missing_ok=True)


def write_units(encoded: Iterable[tuple[int, int, bytes, int]], settings: Settings,
                on_chars: Any = None) -> list[Piece]:
    """Write (part, split, id bytes, characters) units, in corpus order, into staged files; their pieces."""
    pieces: list[Piece] = []
    writer: PartWriter | None = None
    try:
        for part, split, data, n in encoded:
            if writer is None or writer.part != part:
                if writer is not None:
                    pieces += writer.close()
                writer = PartWriter(part, settings)
            writer.write(split, data, n)
            if on_chars is not None:
                on_chars(n)
        if writer is not None:
            pieces += writer.close()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    return pieces


def write_part(job: Job, encoder: ChunkEncoder, settings: Settings) -> list[Piece]:
    """Pass 2 for one part, in this process: tokenize it into its staged shard files (what a Dask task runs)."""
    units = encoder.units(job_chunks(job, settings))
    return write_units(((job.part.index, s, d, n) for s, d, n in units), settings)


__all__ = ["Count", "Job", "Part", "Piece", "Settings", "count_part", "plan_parts", "write_part"]
