"""Directories llmcore writes into: ownership marker, one writer at a time, no writes through symlinks.

Three rules (issue 16), one helper each:

* **Write only into a directory llmcore owns.** :func:`claim_dir` accepts a new or empty directory, or one
  holding the marker file ``.llmcore-run`` (JSON: ``format_version``, ``created_by``, ``llmcore_version``)
  written when llmcore first wrote there. A run directory of an earlier version (no marker, but
  ``config.json`` with ``"format": "llmcore"`` or ``adapter_config.json``, plus ``trainer_state/`` and
  ``metrics.jsonl``), a ``llmcore prepare`` output and a sweep directory are recognised by their layout and get
  the marker. Anything else that is not empty is refused before a byte is written.
* **Never write through a symlink.** :func:`claim_dir` refuses a directory with a symbolic link anywhere inside
  it, every checkpoint save checks again (:func:`refuse_symlinks`), and the append writers open with
  ``O_NOFOLLOW`` (:func:`append_text`, :func:`write_text`), so a link planted later still cannot redirect a
  write. A checkpoint is written through :func:`pinned` directories, reached from the run directory without
  following any link, so even a link swapped in during the save itself is not followed. (The directory
  itself may be reached through a link: ``runs -> /scratch/runs`` is the user's choice.)
* **One writer per run directory.** :func:`lock_dir` takes an exclusive ``flock`` on ``.llmcore-lock`` in the
  directory, records the pid there and keeps it until :func:`unlock_dir` (re-entrant within a process). The
  kernel drops the lock when the process dies, even by ``kill -9``, so a stale lock file never blocks a resume.

Everything here is standard library only, below every layer that writes.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import CheckpointError
from .io import writable_dir

MARKER_NAME = ".llmcore-run"
LOCK_NAME = ".llmcore-lock"
MARKER_VERSION = 1

# directories of an earlier llmcore recognised by their layout: (required entries, description)
_FIX = "choose a new or empty --out directory (or delete this one if it is a run you no longer need)"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llmcore")
    except PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown"


def _is_llmcore_config(path: Path) -> bool:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(value, dict) and value.get("format") == "llmcore"


def legacy_kind(path: Path) -> str | None:
    """What an unmarked directory written by an earlier llmcore is (``run``, ``prepared``, ``sweep``), or None."""
    p = Path(path)
    if (p / "trainer_state").is_dir() and (p / "metrics.jsonl").is_file() and (
            _is_llmcore_config(p / "config.json") or (p / "adapter_config.json").is_file()):
        return "run"
    if (p / "meta.json").is_file() and (p / "tokenizer").is_dir() and (
            (p / "train.bin").is_file() or (p / "train-00000.bin").is_file()):  # token files of format 1 or 2
        return "prepared"
    if (p / "sweep.json").is_file() and all(c.name.startswith("run-") or c.name in ("sweep.json", "results.csv")
                                            for c in p.iterdir()):
        return "sweep"
    return None


def read_marker(path: Path) -> dict[str, Any] | None:
    """The marker of directory ``path`` (None when it has none); a bad marker is a CheckpointError."""
    m = Path(path) / MARKER_NAME
    try:
        st = os.lstat(m)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode) or st.st_size > 65536:
        raise CheckpointError(f"{m} is not a regular file of llmcore's; {_FIX}.")
    try:
        value = json.loads(m.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{m} is not valid JSON ({e}); delete it only if {path} is llmcore's.") from e
    if not isinstance(value, dict) or value.get("format_version") != MARKER_VERSION:
        raise CheckpointError(f"{m} has format_version {value.get('format_version') if isinstance(value, dict) else value!r}, "
                              f"expected {MARKER_VERSION}; use the llmcore version that wrote {path}, or {_FIX}.")
    return value


def find_symlink(path: Path) -> Path | None:
    """The first symbolic link inside directory ``path`` (not following any), or None."""
    for root, dirs, files in os.walk(path, followlinks=False):
        for name in sorted(dirs + files):
            if os.path.islink(os.path.join(root, name)):
                return Path(root) / name
    return None


def refuse_symlinks(path: str | os.PathLike, flag: str = "--out") -> None:
    """CheckpointError naming the first symbolic link inside directory ``path`` (none: nothing happens).

    :func:`claim_dir` checks once, when a run starts; the checkpoint writer checks again before every save,
    so a link swapped in mid-run (``trainer_state -> /elsewhere``, a checkpoint or ``tokenizer/`` replaced by a
    link) is refused instead of followed. The save itself then writes through :func:`pinned` directories, so
    a link swapped in between this check and the writes is not followed either."""
    if (link := find_symlink(Path(path))) is not None:
        raise CheckpointError(f"{flag} {path} contains the symbolic link {link}; llmcore never writes through a "
                              "link. Remove it (copy the file in instead) or choose another directory.")


def claim_dir(path: str | os.PathLike, created_by: str, flag: str = "--out",
              legacy: tuple[str, ...] = ("run", "prepared", "sweep"), mark: bool = True) -> Path:
    """Make ``path`` a directory llmcore may write into (see the module docstring), or raise CheckpointError.

    ``legacy`` names the layouts of an earlier version accepted without a marker (``()``: marked or empty only).
    Writes the marker when the directory is new, empty or of an accepted earlier layout; ``mark=False`` only
    checks (nothing is created), for a command that may still refuse its inputs: call :func:`mark_dir` then.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise CheckpointError(f"{flag} {p} is a file, not a directory; {_FIX}.")
    writable_dir(p, flag)  # read-only (or under a file): refused now, before the command does any work
    if p.is_dir():
        refuse_symlinks(p, flag)
        marker = read_marker(p)
        if marker is not None:
            return p
        if any(p.iterdir()):
            kind = legacy_kind(p)
            if kind is None or kind not in legacy:
                raise CheckpointError(f"{flag} {p} is not empty and not a directory llmcore wrote (no {MARKER_NAME}); "
                                      f"llmcore does not overwrite other files: {_FIX}.")
    if mark:
        mark_dir(p, created_by, flag)
    return p


def mark_dir(path: str | os.PathLike, created_by: str, flag: str = "--out") -> Path:
    """Create directory ``path`` if needed and write its marker unless it has one (after :func:`claim_dir`)."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
        write_text(p / MARKER_NAME, json.dumps({"format_version": MARKER_VERSION, "created_by": created_by,
                                                "llmcore_version": _version()}, indent=2) + "\n", exclusive=True)
    except FileExistsError:  # another process marked it first: fine, it is llmcore's
        pass
    except OSError as e:
        raise CheckpointError(f"Cannot write into {flag} {p} ({e.strerror}); choose a writable directory.") from e
    return p


# ---------------------------------------------------------------------------------------------- writes
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _open(path: Path, flags: int) -> int:
    try:
        return os.open(path, flags | _NOFOLLOW, 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP or os.path.islink(path):
            raise CheckpointError(f"{path} is a symbolic link; llmcore never writes through a link. Remove it "
                                  "and rerun.") from e
        raise


def refuse_symlink(path: str | os.PathLike) -> None:
    """CheckpointError when ``path`` itself is a symbolic link (a missing path is fine)."""
    if os.path.islink(path):
        raise CheckpointError(f"{path} is a symbolic link; llmcore never writes through a link. Remove it and rerun.")


def append_text(path: str | os.PathLike, text: str) -> None:
    """Append ``text`` (UTF-8) to ``path``, never following a symlink at ``path``."""
    fd = _open(Path(path), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    with os.fdopen(fd, "a", encoding="utf-8") as f:
        f.write(text)


def write_text(path: str | os.PathLike, text: str, exclusive: bool = False) -> None:
    """Replace the contents of ``path`` with ``text``, never following a symlink at ``path``."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
    fd = _open(Path(path), flags)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


FD_PATHS = Path("/proc/self/fd")  # Linux: /proc/self/fd/N names the directory descriptor N is open on


@contextlib.contextmanager
def pinned(root: str | os.PathLike, *parts: str, create: bool = False) -> Iterator[Path]:
    """A path naming the directory ``root/parts...`` that stays on that very directory for the block, reached
    from ``root`` one component at a time with ``O_NOFOLLOW``: a component that is (or is swapped for) a
    symbolic link is refused with a CheckpointError, and one swapped after it was opened is not followed.

    The path is ``/proc/self/fd/N`` of a descriptor held open until the block ends, so ordinary path-taking
    code (``save_safetensors``, ``os.rename``, ``shutil.rmtree``) writes below the pinned directory, whatever
    happens to the names above it meanwhile. This closes the window that a scan like :func:`refuse_symlinks`
    leaves between its check and the write. ``create``: make missing components (``mkdir``, never through a
    link). ``root`` itself is opened as the user named it (a link to it is their choice). Where ``/proc`` is
    missing (not Linux) the plain path is given, and only the scans guard it.
    """
    if not FD_PATHS.is_dir():
        if create:
            Path(root, *parts).mkdir(parents=True, exist_ok=True)
        yield Path(root, *parts)
        return
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i, part in enumerate(parts):
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, dir_fd=fd)
            try:
                child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW, dir_fd=fd)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR) and os.path.islink(os.path.join(FD_PATHS, str(fd), part)):
                    where = Path(root, *parts[:i + 1])
                    raise CheckpointError(f"{where} is a symbolic link; llmcore never writes through a link. Remove "
                                          "it and rerun.") from e
                raise
            os.close(fd)
            fd = child
        yield FD_PATHS / str(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------- the lock
_HELD: dict[str, list[Any]] = {}  # resolved directory -> [fd, count]


def lock_dir(path: str | os.PathLike) -> None:
    """Take (or re-enter) the exclusive lock on directory ``path``; CheckpointError naming the holder if taken."""
    import fcntl

    p = Path(path)
    key = str(p.resolve())
    if key in _HELD:
        _HELD[key][1] += 1
        return
    lock = p / LOCK_NAME
    fd = _open(lock, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        try:
            holder = os.read(fd, 64).decode("ascii", "replace").strip()
        finally:
            os.close(fd)
        who = f"process {holder}" if holder.isdigit() else "another process"
        raise CheckpointError(f"{p} is in use by {who} (lock {lock}); two writers would mix their checkpoints. "
                              "Wait for it to finish or stop it, or train into another --out directory.") from e
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _HELD[key] = [fd, 1]


def unlock_dir(path: str | os.PathLike) -> None:
    """Release one :func:`lock_dir` of ``path``; the lock goes when the last one is released."""
    key = str(Path(path).resolve())
    held = _HELD.get(key)
    if held is None:
        return
    held[1] -= 1
    if held[1] <= 0:
        del _HELD[key]
        os.close(held[0])  # closing the descriptor drops the flock


__all__ = ["MARKER_NAME", "LOCK_NAME", "claim_dir", "mark_dir", "read_marker", "legacy_kind", "find_symlink", "refuse_symlinks",
           "lock_dir",
           "unlock_dir", "append_text", "write_text", "refuse_symlink", "pinned"]
