"""Reading text corpora: UTF-8 files (plain, ``.gz``, ``.xz``, ``.zst``), JSONL files, globs, directories.

Everything here returns ``str`` (or streams of ``str``); nothing tokenizes. Files are decoded strictly as
UTF-8 in blocks, so a corpus larger than memory can be streamed with :func:`iter_file_text` and a bad byte is
reported with its file and byte offset instead of surfacing later as a tokenizer crash. A leading UTF-8 byte
order mark is dropped; line endings and all other characters are kept exactly. An uncompressed file can also
be read by byte range (``start``, ``end``), which is how :mod:`llmcore.data.parts` splits a large file.

A ``*.jsonl`` file (compressed or not) holds one JSON object per line; its documents are the values of one
string field (``"text"`` by default, :func:`iter_jsonl_texts`), and blank lines and empty texts are skipped.
``.zst`` needs the ``zstandard`` package (not a dependency of llmcore; a clear error says so when missing).

Several files form one text by concatenation in the order given (directories: their ``*.txt``, ``*.txt.gz``,
``*.txt.xz`` and ``*.txt.zst`` files, recursively, sorted by path; a pattern with ``*``, ``?`` or ``[`` that
names no existing path is a glob, expanded sorted), with a ``"\\n"`` added after any document that does not
already end with one (:data:`DOC_SEPARATOR`), so the last line of one never runs into the first of the next.
"""

from __future__ import annotations

import codecs
import glob
import gzip
import json
import lzma
import os
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ..errors import DataError

CORPORA_DIR = Path(__file__).with_name("corpora")
BUNDLED = {"shakespeare": "shakespeare.txt.gz"}  # name -> file in CORPORA_DIR; see corpora/README.md
TEXT_PATTERNS = ("*.txt", "*.txt.gz", "*.txt.xz", "*.txt.zst")  # what a directory contributes
CODECS = (".gz", ".xz", ".zst")  # compressed files: streamed whole, never by byte range
GLOB_CHARS = "*?["
DOC_SEPARATOR = "\n"  # added between files when the previous one does not end with a newline
BLOCK_BYTES = 1 << 20  # read size when streaming a file

_BOM = codecs.BOM_UTF8

PathsLike = str | os.PathLike | Sequence[str | os.PathLike]


def bundled_corpus_path(name: str = "shakespeare") -> Path:
    """Path of a corpus shipped inside the package (gzip-compressed UTF-8 text)."""
    if name not in BUNDLED:
        raise DataError(f"no bundled corpus named {name!r}; available: {sorted(BUNDLED)}")
    path = CORPORA_DIR / BUNDLED[name]
    if not path.is_file():  # a broken install, e.g. built without package data
        raise DataError(f"bundled corpus {name!r} is missing at {path}; reinstall llmcore with its package data")
    return path


def resolve_paths(paths: PathsLike | None) -> list[Path]:
    """Turn a path, a list of paths, or None (the bundled Shakespeare) into the list of files to read.

    Directories expand to their ``*.txt`` / ``*.txt.gz`` / ``*.txt.xz`` / ``*.txt.zst`` files (recursively,
    sorted). A name with ``*``, ``?`` or ``[`` that is not an existing path is a glob pattern (``**`` recurses),
    expanded to its files, sorted. Explicitly named files are taken whatever their suffix; ``.gz``, ``.xz`` and
    ``.zst`` mean compressed, and ``.jsonl`` (before any of these) JSON lines.
    """
    if paths is None:
        return [bundled_corpus_path()]
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not paths:
        raise DataError("no input paths given; pass at least one file or directory (or None for Shakespeare)")
    files: list[Path] = []
    for p in map(Path, paths):
        if not p.exists() and any(c in str(p) for c in GLOB_CHARS):
            matched = sorted(Path(m) for m in glob.glob(str(p), recursive=True) if Path(m).is_file())
            if not matched:
                raise DataError(f"the pattern {str(p)!r} matches no file; check it (quote it so the shell leaves "
                                "it to llmcore, or let the shell expand it)")
            files.extend(matched)
        elif p.is_dir():
            found = sorted({f for pattern in TEXT_PATTERNS for f in p.rglob(pattern) if f.is_file()})
            if not found:
                raise DataError(
                    f"directory {p} has no {', '.join(TEXT_PATTERNS)} files; put UTF-8 text files in it "
                    "or pass the files directly"
                )
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(
                f"{p} does not exist; pass an existing file or directory (or no path for the bundled "
                "Shakespeare corpus)"
            )
    return files


def is_compressed(path: str | os.PathLike) -> bool:
    """Whether ``path`` is read through a decompressor (``.gz``, ``.xz``, ``.zst``): a stream, no byte ranges."""
    return Path(path).suffix in CODECS


def is_jsonl(path: str | os.PathLike) -> bool:
    """Whether ``path`` is JSON lines: ``*.jsonl``, or ``*.jsonl`` compressed (``.jsonl.gz``, ...)."""
    p = Path(path)
    return (p.with_suffix("") if is_compressed(p) else p).suffix == ".jsonl"


def _zstd_reader(path: Path):
    try:
        import zstandard
    except ImportError:
        raise DataError(f"{path} is zstandard-compressed; reading .zst files needs the zstandard package: pip "
                        "install zstandard (or decompress it first: zstd -d)") from None
    return zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), read_across_frames=True, closefd=True)


def _decode_errors() -> tuple[type[BaseException], ...]:
    errors: tuple[type[BaseException], ...] = (OSError, EOFError, zlib.error, lzma.LZMAError)
    try:
        import zstandard

        errors += (zstandard.ZstdError,)
    except ImportError:
        pass
    return errors


def _open_binary(path: Path):
    try:
        if path.suffix == ".gz":
            return gzip.open(path, "rb")
        if path.suffix == ".xz":
            return lzma.open(path, "rb")
        if path.suffix == ".zst":
            return _zstd_reader(path)
        return open(path, "rb")
    except OSError as e:
        raise DataError(f"cannot open {path}: {e.strerror or e}") from e


def _read(f: Any, n: int, path: Path) -> bytes:
    try:
        return f.read(n)
    except _decode_errors() as e:
        kind = f"a valid {path.suffix[1:]} file" if is_compressed(path) else "readable"
        raise DataError(f"{path} is not {kind} ({e}); re-create or remove it") from e


def _range(path: Path, start: int, end: int | None) -> None:
    if (start or end is not None) and is_compressed(path):
        raise DataError(f"{path} is compressed: it is read whole, not by byte range")


def iter_file_text(path: str | os.PathLike, block_bytes: int = BLOCK_BYTES, start: int = 0,
                   end: int | None = None) -> Iterator[str]:
    """Stream one file as decoded text blocks (about ``block_bytes`` bytes each), strictly UTF-8.

    ``start`` / ``end``: read only these bytes of an uncompressed file (both on character boundaries; a range
    that does not begin at 0 keeps a byte order mark, which is only dropped at the start of the file).

    Raises DataError for an empty file (after decompression), bytes that are not UTF-8 (naming the byte
    offset, counted in the decompressed stream for compressed files) and unreadable or corrupt compressed files.
    """
    path = Path(path)
    _range(path, start, end)
    where = " (after decompression)" if is_compressed(path) else ""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    offset = start  # bytes of the file consumed before the current block
    empty = True
    with _open_binary(path) as f:
        if start:
            f.seek(start)
        while True:
            want = block_bytes if end is None else min(block_bytes, end - offset)
            block = _read(f, want, path) if want > 0 else b""
            final = not block
            if offset == 0 and block.startswith(_BOM):
                block, offset = block[len(_BOM):], len(_BOM)
            pending = len(decoder.getstate()[0])  # undecoded tail of the previous block
            try:
                text = decoder.decode(block, final=final)
            except UnicodeDecodeError as e:
                at = offset - pending + e.start
                bad = e.object[e.start:e.start + 1].hex()
                raise DataError(
                    f"{path} is not UTF-8 text: invalid byte 0x{bad} at byte offset {at}{where}; convert it to "
                    "UTF-8 (e.g. iconv -f LATIN1 -t UTF-8) or remove it from the input"
                ) from None
            offset += len(block)
            if text:
                empty = False
                yield text
            if final:
                break
    if empty:
        raise DataError(f"{path} is empty{where}; remove it or pass a file that contains text")


def iter_jsonl_texts(path: str | os.PathLike, text_field: str = "text", start: int = 0,
                     end: int | None = None) -> Iterator[str]:
    """The non-empty ``text_field`` strings of a JSON-lines file, one per record, in order (blank lines skipped).

    ``start`` / ``end`` read only the lines in this byte range of an uncompressed file (``start`` at the
    beginning of a line). One record is in memory at a time. DataError names the file and the byte offset of
    a line that is not a JSON object with a string ``text_field``.
    """
    path = Path(path)
    _range(path, start, end)
    offset = start
    with _open_binary(path) as f:
        if start:
            f.seek(start)
        while end is None or offset < end:
            try:
                line = f.readline()
            except _decode_errors() as e:
                raise DataError(f"{path} is not a valid {path.suffix[1:]} file ({e}); re-create or remove it") from e
            if not line:
                break
            at, offset = offset, offset + len(line)
            if at == 0 and line.startswith(_BOM):
                line = line[len(_BOM):]
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except UnicodeDecodeError:
                raise DataError(f"{path}: the line at byte offset {at} is not UTF-8; convert the file to UTF-8") from None
            except ValueError as e:
                raise DataError(f"{path}: the line at byte offset {at} is not valid JSON ({e}); a .jsonl file holds "
                                "one JSON object per line") from None
            text = record.get(text_field) if isinstance(record, dict) else None
            if not isinstance(text, str):
                raise DataError(f"{path}: the record at byte offset {at} has no string field {text_field!r}; pass "
                                "the name of the field that holds the text (text_field=..., --text-field)")
            if text:
                yield text


def _join(docs: Iterator[str]) -> str:
    parts: list[str] = []
    for doc in docs:
        if parts and not parts[-1].endswith("\n"):
            parts.append(DOC_SEPARATOR)
        parts.append(doc)
    return "".join(parts)


def _documents(path: Path, text_field: str) -> Iterator[str]:
    if is_jsonl(path):
        texts = iter_jsonl_texts(path, text_field)
        first = next(texts, None)
        if first is None:
            raise DataError(f"{path} has no record with text in field {text_field!r}; remove it or pass text_field=...")
        yield first
        yield from texts
    else:
        yield "".join(iter_file_text(path))


def read_file(path: str | os.PathLike, text_field: str = "text") -> str:
    """The whole text of one UTF-8 file (plain or compressed; JSONL: its records' ``text_field``, joined).

    DataError if missing, empty or not UTF-8.
    """
    path = Path(path)
    if not path.is_file():
        resolve_paths(path)  # raises the right message for a missing path or a directory without text
        raise DataError(f"{path} is a directory; use read_text() to read all text files in it")
    return _join(_documents(path, text_field))


def read_text(paths: PathsLike | None = None, text_field: str = "text") -> str:
    """All text of one or more files or directories as one string; ``None`` reads the bundled Shakespeare.

    Documents (files; a JSONL file's records) are joined in order with :data:`DOC_SEPARATOR` after any that
    does not end with a newline.
    """
    return _join(doc for path in resolve_paths(paths) for doc in _documents(path, text_field))


__all__ = [
    "BUNDLED",
    "DOC_SEPARATOR",
    "bundled_corpus_path",
    "is_compressed",
    "is_jsonl",
    "iter_file_text",
    "iter_jsonl_texts",
    "read_file",
    "read_text",
    "resolve_paths",
]
