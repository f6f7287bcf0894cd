"""Reading text corpora: UTF-8 files, gzip files, directories of them, and the bundled Shakespeare.

Everything here returns ``str`` (or streams of ``str``); nothing tokenizes. Files are decoded strictly as
UTF-8 in blocks, so a corpus larger than memory can be streamed with :func:`iter_file_text` and a bad byte is
reported with its file and byte offset instead of surfacing later as a tokenizer crash. A leading UTF-8 byte
order mark is dropped; line endings and all other characters are kept exactly.

Several files form one text by concatenation in the order given (directories: their ``*.txt`` and
``*.txt.gz`` files, recursively, sorted by path), with a ``"\\n"`` added after any file that does not already
end with one (:data:`DOC_SEPARATOR`), so the last line of one file never runs into the first of the next.
"""

from __future__ import annotations

import codecs
import gzip
import os
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..errors import DataError

CORPORA_DIR = Path(__file__).with_name("corpora")
BUNDLED = {"shakespeare": "shakespeare.txt.gz"}  # name -> file in CORPORA_DIR; see corpora/README.md
TEXT_PATTERNS = ("*.txt", "*.txt.gz")  # what a directory contributes
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

    Directories expand to their ``*.txt`` / ``*.txt.gz`` files (recursively, sorted). Explicitly named files
    are taken whatever their suffix; a ``.gz`` suffix means gzip.
    """
    if paths is None:
        return [bundled_corpus_path()]
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not paths:
        raise DataError("no input paths given; pass at least one file or directory (or None for Shakespeare)")
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted({f for pattern in TEXT_PATTERNS for f in p.rglob(pattern) if f.is_file()})
            if not found:
                raise DataError(
                    f"directory {p} has no *.txt or *.txt.gz files; put UTF-8 text files in it "
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


def _open_binary(path: Path):
    try:
        return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")
    except OSError as e:
        raise DataError(f"cannot open {path}: {e.strerror or e}") from e


def iter_file_text(path: str | os.PathLike, block_bytes: int = BLOCK_BYTES) -> Iterator[str]:
    """Stream one file as decoded text blocks (about ``block_bytes`` bytes each), strictly UTF-8.

    Raises DataError for an empty file (after decompression), bytes that are not UTF-8 (naming the byte
    offset, counted in the decompressed stream for ``.gz`` files) and unreadable or corrupt gzip files.
    """
    path = Path(path)
    gz = path.suffix == ".gz"
    where = " (after decompression)" if gz else ""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    offset = 0  # bytes of the file consumed before the current block
    empty = True
    with _open_binary(path) as f:
        while True:
            try:
                block = f.read(block_bytes)
            except (OSError, EOFError, zlib.error) as e:
                kind = "a valid gzip file" if gz else "readable"
                raise DataError(f"{path} is not {kind} ({e}); re-create or remove it") from e
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


def read_file(path: str | os.PathLike) -> str:
    """The whole text of one UTF-8 (or gzip-compressed UTF-8) file; DataError if missing, empty or not UTF-8."""
    path = Path(path)
    if not path.is_file():
        resolve_paths(path)  # raises the right message for a missing path or a directory without text
        raise DataError(f"{path} is a directory; use read_text() to read all text files in it")
    return "".join(iter_file_text(path))


def read_text(paths: PathsLike | None = None) -> str:
    """All text of one or more files or directories as one string; ``None`` reads the bundled Shakespeare.

    Files are joined in order with :data:`DOC_SEPARATOR` after any file that does not end with a newline.
    """
    parts: list[str] = []
    for path in resolve_paths(paths):
        if parts and not parts[-1].endswith("\n"):
            parts.append(DOC_SEPARATOR)
        parts.append(read_file(path))
    return "".join(parts)


__all__ = [
    "BUNDLED",
    "DOC_SEPARATOR",
    "bundled_corpus_path",
    "iter_file_text",
    "read_file",
    "read_text",
    "resolve_paths",
]
