"""Small file helpers shared by every layer: JSON and safetensors reads with one-line errors, atomic writes.

Reading: a missing or corrupt file (:func:`read_json`) becomes the caller's :class:`LLMCoreError` subclass naming the path and
what the file should be, never a bare ``FileNotFoundError`` / ``JSONDecodeError``. Writing goes through a
temporary file and ``os.replace`` so a crash never leaves half a file.

The model-directory helpers (:func:`read_state_dict`, :func:`save_safetensors`, :func:`load_state_dict_checked`,
:func:`tied_duplicates`) live here, below ``models`` and ``convert``, so that saving, loading, converting and
checkpointing all share one reader and one writer without importing each other.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import CheckpointError, LLMCoreError

if TYPE_CHECKING:  # torch and safetensors load when a tensor is read or written: configs read JSON without them
    import torch
    from torch import nn

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"

MAX_JSON_BYTES = 256 * 2**20  # a config / settings / index file; tokenizer.json of a 250k vocabulary is ~20 MB
MAX_BUFFER_BYTES = 256 * 2**20  # tables a config computes (RoPE cos/sin, ...) beyond which they must be paid by weights

# safetensors header dtype -> torch dtype name (resolved lazily: this module imports no torch at import time)
_ST_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "F8_E4M3": "float8_e4m3fn",
              "F8_E5M2": "float8_e5m2", "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8",
              "U8": "uint8", "BOOL": "bool"}


def _allowed_roots(root: Path) -> list[Path]:
    """``root``, plus the Hugging Face cache's ``blobs/`` when ``root`` is a ``snapshots/<rev>`` directory
    (the hub cache stores every file of a snapshot as a symlink to ``../../blobs/<hash>``)."""
    roots = [root]
    if root.parent.name == "snapshots":
        roots.append(root.parent.parent / "blobs")
    return roots


def confined_file(directory: str | os.PathLike, name: Any, what: str, max_bytes: int | None = None,
                  error: type[LLMCoreError] = CheckpointError) -> Path:
    """The path of the file ``name`` inside ``directory``, checked before anything reads it.

    ``name`` comes from a file in ``directory`` (a shard index's ``weight_map``, a tokenizer's ``model_file``)
    and is untrusted: it must be a relative file name that, after resolving symlinks, stays inside
    ``directory`` (or, for a Hugging Face cache snapshot, its ``blobs/``); the file must exist, be a regular
    file (not a FIFO, device or directory) and, when ``max_bytes`` is given, hold at most that many bytes.
    Anything else raises ``error`` naming the value, the rule and the fix. Returns the resolved path.
    """
    d = Path(directory)
    if not isinstance(name, str) or not name or "\x00" in name:
        raise error(f"{what} in {d} names {name!r}, which is not a file name; expected the name of a file "
                    f"inside {d}.")
    root = d.resolve()
    resolved = (root / name).resolve()
    if Path(name).is_absolute() or not any(resolved.is_relative_to(r) for r in _allowed_roots(root)):
        raise error(f"{what} in {d} names {name!r}, which resolves to {resolved}, outside {d}; a model or "
                    "tokenizer directory may only name files inside itself. Fix or re-download the directory.")
    return _checked_regular(resolved, f"{what} {name!r} in {d}", max_bytes, error)


def _checked_regular(path: Path, what: str, max_bytes: int | None, error: type[LLMCoreError]) -> Path:
    try:
        st = os.stat(path)
    except FileNotFoundError as e:
        raise error(f"{path} not found; expected the {what} there.") from e
    except OSError as e:
        raise error(f"cannot stat {path} ({what}): {e.strerror or e}.") from e
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{path} ({what}) is not a regular file (a directory, FIFO or device); replace it with the "
                    "file itself.")
    if max_bytes is not None and st.st_size > max_bytes:
        raise error(f"{path} ({what}) is {st.st_size} bytes, over the {max_bytes}-byte limit for it; it is not "
                    "such a file, or is corrupt.")
    return path


def read_bounded(path: str | os.PathLike, what: str, max_bytes: int,
                 error: type[LLMCoreError] = LLMCoreError) -> bytes:
    """The bytes of the regular file ``path``, refusing a non-regular file or more than ``max_bytes``."""
    p = _checked_regular(Path(path), what, max_bytes, error)
    try:
        with open(p, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise error(f"cannot read {p} ({what}): {e.strerror or e}.") from e
    if len(data) > max_bytes:
        raise error(f"{p} ({what}) holds over {max_bytes} bytes, the limit for it; it is not such a file.")
    return data


def read_json(path: str | os.PathLike, what: str = "JSON file", error: type[LLMCoreError] = LLMCoreError,
              expect: type = dict) -> Any:
    """Parse ``path`` as JSON; raise ``error`` naming the path and ``what`` it should hold if it can't.

    ``expect`` is the type the top-level value must have (an object, by default).
    """
    p = Path(path)
    try:
        value = json.loads(read_bounded(p, what, MAX_JSON_BYTES, error).decode("utf-8"))
    except RecursionError as e:
        raise error(f"{p} nests JSON too deeply; the {what} is corrupt — re-create it.") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{p} is not valid UTF-8 JSON ({e}); the {what} is corrupt — re-create it.") from e
    if not isinstance(value, expect):
        raise error(f"{p} holds a JSON {type(value).__name__}, but the {what} must be a JSON "
                    f"{'object' if expect is dict else expect.__name__}.")
    return value


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines log (``metrics.jsonl``), in order; ``[]`` when the file is missing.

    A line that is not JSON is skipped: logs are read while they are written, and a run killed mid-write
    leaves its last line cut short. A line that is JSON but not an object (``42``, a list) was not written
    by llmcore: it is skipped too, with one warning naming the file and the lines. (User data files are read
    strictly instead, with the line.)
    """
    p = Path(path)
    records, foreign = [], []
    for number, line in enumerate(p.read_text(encoding="utf-8").splitlines() if p.is_file() else [], 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
        else:
            foreign.append(number)
    if foreign:
        import warnings

        shown = ", ".join(map(str, foreign[:5])) + (", ..." if len(foreign) > 5 else "")
        warnings.warn(f"{p}: skipped {len(foreign)} line(s) ({shown}) that are not JSON objects; each line of a "
                      "metrics log is expected to be an object like {\"step\": ..., ...}.", stacklevel=2)
    return records


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


UMASK = _umask()  # read once, at import, before any thread could race on it


def _mode_for(path: Path) -> int:
    """The permissions a rewritten file keeps (an existing regular file's), else what ``open()`` would give
    a new one under the process's umask (0644 under the usual 022, 0600 under 077)."""
    try:
        st = os.lstat(path)
        if stat.S_ISREG(st.st_mode):
            return stat.S_IMODE(st.st_mode)
    except OSError:
        pass
    return 0o666 & ~UMASK


def _write_beside(path: Path, write: Callable[[int, str], None]) -> None:
    """Write ``path`` atomically: ``write(fd, temp_name)`` fills a fresh temporary file in the same directory,
    which then replaces ``path``.

    The temporary file gets an unpredictable name, created with ``O_EXCL | O_NOFOLLOW`` (``tempfile.mkstemp``),
    so a symlink planted in the directory beforehand (``model.safetensors.tmp -> ~/.bashrc``) is not written
    through, and ``os.replace`` replaces a symlink at ``path`` itself rather than its target. The directories
    above ``path`` are resolved as usual: one swapped for a link during the save is followed unless the caller
    passes a pinned path (``rundir.pinned``, as checkpoints do). A failed write (disk full) removes the
    temporary file and re-raises.
    """
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _mode_for(path))  # not mkstemp's 0600: what a plain open() would have given
        write(fd, name)
        os.replace(name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(name)
        raise
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename (never through a planted symlink)."""

    def write(fd: int, name: str) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]

    _write_beside(Path(path), write)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON through a temporary file and a rename."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def save_safetensors(state: dict[str, torch.Tensor], path: str | os.PathLike,
                     metadata: dict[str, str] | None = None) -> None:
    """Write tensors to ``path`` via a temporary file and rename, so a crash never leaves a half file."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    # save_file opens the name it is given; that name was just created by this process (see _write_beside).
    _write_beside(Path(path), lambda fd, name: save_file(tensors, name, metadata=metadata or {}))


_DTYPE_CODES = {v: k for k, v in _ST_DTYPES.items()}  # torch dtype name -> safetensors header dtype


def save_safetensors_stream(path: str | os.PathLike, specs: list[tuple[str, tuple[int, ...], Any]],
                            tensors: Iterable[torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file one tensor at a time: ``specs`` (name, shape, dtype) in file order make the header,
    then ``tensors`` (an iterator yielding those tensors in the same order) are written as they come.

    The file is what ``save_safetensors`` would write for the same tensors (a header of names, dtypes, shapes and
    byte offsets, then the raw little-endian bytes) and loads with ``safetensors.torch.load_file``; only one
    tensor is in memory at a time, so a model gathered from FSDP shards never exists whole on one process.
    Atomic like :func:`save_safetensors`. A tensor whose shape or dtype differs from its spec raises ValueError.
    """
    import torch

    header: dict[str, Any] = {"__metadata__": dict(metadata or {})} if metadata else {}
    offset = 0
    for name, shape, dtype in specs:
        size = dtype.itemsize
        for d in shape:
            size *= int(d)
        header[name] = {"dtype": _DTYPE_CODES[str(dtype).replace("torch.", "")], "shape": [int(d) for d in shape],
                        "data_offsets": [offset, offset + size]}
        offset += size
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    head += b" " * (-len(head) % 8)  # the data starts 8-byte aligned, as safetensors writes it

    def write(fd: int, name: str) -> None:
        with os.fdopen(os.dup(fd), "wb") as f:
            f.write(len(head).to_bytes(8, "little") + head)
            it = iter(tensors)
            for (tname, shape, dtype), t in zip(specs, it):
                if tuple(t.shape) != tuple(shape) or t.dtype != dtype:
                    raise ValueError(f"save_safetensors_stream: {tname} is {tuple(t.shape)} {t.dtype}, the header "
                                     f"says {tuple(shape)} {dtype}")
                f.write(memoryview(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()))
            f.flush()
            os.fsync(f.fileno())

    _write_beside(Path(path), write)


def fsync_tree(directory: str | os.PathLike) -> None:
    """``fsync`` every file directly in ``directory`` and the directory itself (before a rename publishes it)."""
    d = Path(directory)
    for f in [*d.iterdir(), d]:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def is_disk_full(e: BaseException) -> bool:
    """ENOSPC as an OSError, or inside a SafetensorError's message (Rust's "No space left ... (os error 28)")."""
    if isinstance(e, OSError):
        return e.errno == errno.ENOSPC
    text = str(e)
    return "os error 28" in text or "No space left" in text or "StorageFull" in text


# ---------------------------------------------------------------------------------------------- output dirs
_WRITE_FIX = "choose a writable directory (check its permissions, and that the disk is not mounted read-only)"


def writable_dir(path: str | os.PathLike, what: str = "output directory",
                 error: type[LLMCoreError] = CheckpointError) -> Path:
    """Check, before any work and without creating anything, that ``path`` is a directory this process may
    write into, or one it may create (the nearest existing parent is a writable directory).

    Raises ``error`` naming the path and the fix: ``path`` (or a parent) is a file, or not writable (no write
    permission, a read-only mount). ``os.access`` asks the kernel, so a read-only mount is seen even by root;
    permission bits are not checked for root, who may write anyway (as the writes will)."""
    p = Path(path)
    probe = p
    while not probe.exists() and not probe.is_symlink() and probe.parent != probe:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        where = "is a file" if probe == p else f"cannot be created: {probe} is a file"
        raise error(f"{what} {p} {where}, not a directory; choose a directory to write into.")
    if not os.access(probe, os.W_OK | os.X_OK):
        where = "is not writable" if probe == p else f"cannot be created: {probe} is not writable"
        raise error(f"{what} {p} {where} ({os.strerror(errno.EROFS) if _read_only(probe) else 'permission denied'}"
                    f"); {_WRITE_FIX}.")
    return p


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


def cannot_write(path: str | os.PathLike, e: OSError, what: str = "output directory",
                 error: type[LLMCoreError] = CheckpointError) -> LLMCoreError:
    """The one-line error for an ``OSError`` raised while writing into ``path`` (permissions, read-only
    mount, disk full), naming the file it happened on."""
    where = f" at {e.filename}" if e.filename and str(e.filename) != str(path) else ""
    if is_disk_full(e):
        return error(f"disk full while writing the {what} {path}{where}; free space and rerun.")
    return error(f"Cannot write the {what} {path} ({e.strerror or e}{where}); {_WRITE_FIX}.")


@contextlib.contextmanager
def writing(path: str | os.PathLike, what: str = "output directory",
            error: type[LLMCoreError] = CheckpointError) -> Any:
    """Check ``path`` with :func:`writable_dir`, then run the block, turning an ``OSError`` inside it into the
    one-line ``error`` of :func:`cannot_write` (so a save into a read-only directory is never a traceback)."""
    writable_dir(path, what, error)
    try:
        yield Path(path)
    except OSError as e:
        raise cannot_write(path, e, what, error) from e


def weight_files(directory: str | os.PathLike) -> list[Path]:
    """The safetensors files of a model directory: ``model.safetensors``, or the shards its index names.

    Every shard name in ``model.safetensors.index.json`` is checked with :func:`confined_file` (inside the
    directory, a regular file), and the index itself must map tensor names to file names.
    """
    d = Path(directory)
    if (d / WEIGHTS_NAME).exists() or (d / WEIGHTS_NAME).is_symlink():
        return [_checked_regular((d / WEIGHTS_NAME).resolve(), "model weights", None, CheckpointError)]
    if (d / INDEX_NAME).exists():
        index = read_json(d / INDEX_NAME, "safetensors shard index", CheckpointError)
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{d / INDEX_NAME}: 'weight_map' is {type(weight_map).__name__}, expected a "
                                  "non-empty JSON object mapping tensor names to shard file names.")
        bad = [(k, v) for k, v in weight_map.items() if not isinstance(v, str)]
        if bad:
            raise CheckpointError(f"{d / INDEX_NAME}: weight_map[{bad[0][0]!r}] is {bad[0][1]!r}, expected a shard "
                                  "file name (a string).")
        return [confined_file(d, name, f"shard listed in {INDEX_NAME}")
                for name in sorted(set(weight_map.values()))]
    raise CheckpointError(
        f"No {WEIGHTS_NAME} or {INDEX_NAME} in {d}; only safetensors weights are read "
        "(convert .bin/.pt checkpoints to safetensors first)."
    )


def _unreadable(f: Path, e: Exception) -> CheckpointError:
    return CheckpointError(f"Cannot read {f}: {e}. The file is truncated or corrupt; re-save or re-copy it.")


def read_state_dict(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of ``model.safetensors`` or of the shards listed in ``model.safetensors.index.json``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for f in weight_files(directory):
        try:
            state.update(load_file(str(f)))
        except (SafetensorError, OSError, ValueError) as e:
            raise _unreadable(f, e) from e
    return state


def read_header(directory: str | os.PathLike) -> tuple[dict[str, torch.Tensor], int]:
    """``({name: meta tensor of the stored shape and dtype}, bytes on disk)`` of a directory's weights.

    Only the safetensors headers are read (no tensor data), so a config can be checked against what is on
    disk before anything is allocated. A dtype torch has no name for reads as ``uint8`` (not a float: refused).
    """
    import torch
    from safetensors import SafetensorError, safe_open

    header: dict[str, torch.Tensor] = {}
    size = 0
    for f in weight_files(directory):
        try:
            with safe_open(str(f), framework="pt") as sf:
                for k in sf.keys():
                    sl = sf.get_slice(k)
                    dtype = getattr(torch, _ST_DTYPES.get(sl.get_dtype(), "uint8"), torch.uint8)
                    header[k] = torch.empty(tuple(sl.get_shape()), dtype=dtype, device="meta")
        except (SafetensorError, OSError, ValueError) as e:
            raise _unreadable(f, e) from e
        size += f.stat().st_size
    return header, size


def check_layers(config: Any, header: dict[str, Any], source: str) -> None:
    """Refuse a config with more layers than the weights hold tensors (every layer has one at least).

    Checked before the model is built, since building costs time and memory per layer.
    """
    layers = sum(int(getattr(config, f, 0) or 0) for f in ("n_layers", "n_encoder_layers"))
    if layers > len(header):
        raise CheckpointError(f"config.json asks for {layers} layers but {source} holds only {len(header)} "
                              "tensors; the config does not belong to these weights.")


def check_against(model: nn.Module, state: dict[str, torch.Tensor], source: str, weights_bytes: int) -> None:
    """Compare a (meta-device) ``model`` with ``state``: names, shapes, float dtypes and computed tables.

    Raises one CheckpointError listing every missing, misshapen, non-float and unexpected tensor, or naming
    the non-persistent buffers (RoPE / sinusoidal tables) when they would need far more memory than the
    weights themselves (``max(MAX_BUFFER_BYTES, 2 x weights_bytes)``).
    """
    _raise_state_mismatch(model, state, source)
    stored = set(model.state_dict())
    tables = [(n, b.numel() * b.element_size()) for n, b in model.named_buffers() if n not in stored]
    need = sum(n for _, n in tables)
    limit = max(MAX_BUFFER_BYTES, 2 * weights_bytes)
    if need > limit:
        cfg = getattr(model, "config", None)
        seq = f" max_seq_len={cfg.max_seq_len}" if hasattr(cfg, "max_seq_len") else ""
        names = [n for n, _ in sorted(tables, key=lambda t: -t[1])[:3]]
        raise CheckpointError(f"config.json{seq} needs {need / 2**20:.0f} MiB of computed tables ({', '.join(names)}) "
                              f"for {weights_bytes / 2**20:.1f} MiB of weights in {source}, over the "
                              f"{limit / 2**20:.0f} MiB limit; lower max_seq_len in config.json.")


def build_checked(build: Callable[[], nn.Module], state: dict[str, torch.Tensor], source: str,
                  weights_bytes: int) -> None:
    """Build the model on the ``meta`` device (no memory) and :func:`check_against` it with ``state``.

    A class whose ``__init__`` cannot run on ``meta`` (a user's architecture computing with tensor values)
    is not checked here; its full-size build and the load that follows still compare every tensor.
    """
    import torch

    try:
        with torch.device("meta"):
            model = build()
    except LLMCoreError:
        raise
    except (NotImplementedError, RuntimeError, TypeError, ValueError):
        return
    check_against(model, state, source, weights_bytes)


def tied_duplicates(module: nn.Module) -> dict[str, str]:
    """{duplicate name: first name} for parameters registered under several names (tied weights)."""
    first: dict[int, str] = {}
    dups: dict[str, str] = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        if id(p) in first:
            dups[name] = first[id(p)]
        else:
            first[id(p)] = name
    return dups


def raise_mismatch(what: str, missing: list[str], wrong: list[str], unexpected: list[str], hint: str,
                   dtypes: list[str] = ()) -> None:
    """CheckpointError ``"The <what>: N missing tensors (e.g. ...); ... <hint>"``, unless all are empty.

    One report for every tensor check (model loading here, the converters' ``StateReader``), listing all
    kinds of problem at once rather than the first.
    """
    parts = [f"{len(names)} {kind} (e.g. {list(names)[:3]})" for kind, names in
             (("missing tensors", missing), ("shape mismatches", wrong), ("unexpected tensors", unexpected),
              ("non-float tensors", dtypes)) if names]
    if parts:
        raise CheckpointError(f"The {what}: {'; '.join(parts)}. {hint}")


def _raise_state_mismatch(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    dups = tied_duplicates(model)
    expected = {k: v for k, v in model.state_dict().items() if k not in dups}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected) - set(dups))
    wrong = [f"{k}: {tuple(state[k].shape)} in {source} vs {tuple(v.shape)} in model"
             for k, v in expected.items() if k in state and state[k].shape != v.shape]
    dtypes = [f"{k}: {state[k].dtype}" for k, v in expected.items()
              if k in state and v.is_floating_point() and not state[k].is_floating_point()]
    raise_mismatch(f"{source} does not match the model config", missing, wrong, unexpected,
                   "Check that config.json belongs to these weights (weights are stored as floats).", dtypes)


def load_state_dict_checked(model: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Copy ``state`` into ``model`` after checking names, shapes and float dtypes; mismatches raise CheckpointError."""
    _raise_state_mismatch(model, state, source)
    dups = tied_duplicates(model)
    model.load_state_dict({k: v for k, v in state.items() if k not in dups}, strict=False)


def check_finite(state: dict[str, torch.Tensor], source: str) -> None:
    """Refuse float tensors holding NaN or inf (one pass over the weights): such a model only produces NaN."""
    import torch

    def finite(v: torch.Tensor) -> bool:  # in chunks of 2**20 values: the temporaries stay small
        flat = v.detach().reshape(-1)
        return all(bool(torch.isfinite(c).all()) for c in flat.split(2**20))

    bad = [k for k, v in state.items() if v.is_floating_point() and not finite(v)]
    if bad:
        shown = ", ".join(bad[:4]) + (f" and {len(bad) - 4} more" if len(bad) > 4 else "")
        raise CheckpointError(f"{source} holds NaN or inf values in {len(bad)} tensor(s) ({shown}); the weights are "
                              "corrupt or the run that saved them diverged. Re-save or re-download the model.")


def load_checked(build: Callable[[], nn.Module], directory: str | os.PathLike, source: str,
                 config: Any = None) -> nn.Module:
    """``build()`` a model and load a directory's weights into it, checking the config against the weights
    first, so that memory and time are bounded by what is on disk rather than by an untrusted config:

    1. the safetensors headers give every stored name, shape and dtype (:func:`read_header`, no data);
    2. a config with more layers than stored tensors is refused (:func:`check_layers`);
    3. the model is built on the ``meta`` device and compared (:func:`build_checked`); one CheckpointError
       lists every mismatch, and computed tables far larger than the weights are refused;
    4. only then is the real model built, and each tensor read from the files straight into it
       (:func:`read_into`), then checked for NaN / inf (:func:`check_finite`): the peak is about one copy of
       the weights (the model), where a state dict beside the model made it two.
    """
    header, size = read_header(directory)
    if config is not None:
        check_layers(config, header, source)
    build_checked(build, header, source, size)
    model = build()
    _raise_state_mismatch(model, header, source)  # again, for a class that could not be built on meta
    if direct_targets(model) is None:  # a module that loads its state its own way: through load_state_dict
        state = read_state_dict(directory)
        check_finite(state, source)
        load_state_dict_checked(model, state, source=source)
        return model
    loaded = read_into(model, directory, source)
    check_finite(loaded, source)
    return model


def direct_targets(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """``{state-dict name: the parameter or buffer itself, detached}`` (tied duplicates left out), or None when
    some module customises loading (``_load_from_state_dict``, load hooks) or its state dict names tensors
    that are not its own parameters / buffers: writing into those would bypass what the module does."""
    from torch import nn

    for m in model.modules():
        if (type(m)._load_from_state_dict is not nn.Module._load_from_state_dict or m._load_state_dict_pre_hooks
                or getattr(m, "_load_state_dict_post_hooks", None)):
            return None
    dups = tied_duplicates(model)
    out: dict[str, torch.Tensor] = {}
    for name, value in model.state_dict().items():
        if name in dups:
            continue
        try:
            own = model.get_parameter(name)
        except AttributeError:
            try:
                own = model.get_buffer(name)
            except AttributeError:
                return None
        if own.data_ptr() != value.data_ptr():
            return None
        out[name] = own.detach()  # the same memory; writable through numpy without autograd
    return out


def _data_layout(f: Path) -> tuple[int, dict[str, tuple[str, list[int], int, int]]]:
    """``(where the data starts, {name: (dtype code, shape, begin, end)})`` from a safetensors file's header.

    The file has passed ``safe_open`` (:func:`read_header`), which checks that the offsets tile the data exactly;
    the bounds are checked again here since the file is read anew."""
    try:
        with open(f, "rb") as fh:
            head = fh.read(8)
            n = int.from_bytes(head, "little")
            if len(head) < 8 or n > MAX_JSON_BYTES:
                raise ValueError(f"a header of {n} bytes")
            header = json.loads(fh.read(n))
    except (OSError, ValueError) as e:
        raise _unreadable(f, e) from e
    if not isinstance(header, dict):
        raise _unreadable(f, ValueError("the header is not a JSON object"))
    layout = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = (int(x) for x in entry["data_offsets"])
            layout[name] = (str(entry["dtype"]), [int(d) for d in entry["shape"]], begin, end)
        except (KeyError, TypeError, ValueError) as e:
            raise _unreadable(f, ValueError(f"header entry {name!r} is {entry!r}")) from e
    return 8 + n, layout


def _stored_dtype(f: Path, name: str, code: str, shape: list[int], begin: int, end: int) -> torch.dtype:
    """The torch dtype of a header entry whose byte range must hold exactly ``shape`` of it."""
    import torch

    dtype = getattr(torch, _ST_DTYPES.get(code, ""), None)
    numel = 1
    for dim in shape:
        numel *= dim
    if dtype is None or not 0 <= begin <= end or end - begin != numel * dtype.itemsize:
        raise _unreadable(f, ValueError(f"tensor {name!r} is {code} {shape} in bytes [{begin}, {end})"))
    return dtype


def _fill(fh: Any, f: Path, name: str, offset: int, buf: torch.Tensor) -> None:
    """Read ``buf``'s bytes from ``fh`` at ``offset`` straight into its memory (``readinto``: no mmap, no copy)."""
    import torch

    if not buf.numel():
        return
    view = memoryview(buf.reshape(-1).view(torch.uint8).numpy())
    try:
        fh.seek(offset)
        while len(view):
            got = fh.readinto(view)
            if not got:
                raise ValueError(f"the data of tensor {name!r} is cut short")
            view = view[got:]
    except (OSError, ValueError) as e:
        raise _unreadable(f, e) from e


class StoredTensors(Mapping):
    """``{name: tensor}`` of a directory's safetensors weights, each tensor read from its file when it is looked
    up and not kept: a converter walking it holds one tensor at a time, not a second copy of the model.

    Only the headers are read when it is made; ``name in stored``, ``len`` and iteration read no data. Every
    lookup reads the tensor anew (into fresh memory, never a file mapping, whose pages would stay resident).
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        self._where: dict[str, tuple[Path, int, str, list[int], int, int]] = {}
        for f in weight_files(directory):
            start, layout = _data_layout(f)
            for name, (code, shape, begin, end) in layout.items():
                self._where[name] = (f, start, code, shape, begin, end)

    def __getitem__(self, name: str) -> torch.Tensor:
        import torch

        f, start, code, shape, begin, end = self._where[name]
        buf = torch.empty(shape, dtype=_stored_dtype(f, name, code, shape, begin, end))
        try:
            with open(f, "rb", buffering=0) as fh:
                _fill(fh, f, name, start + begin, buf)
        except OSError as e:
            raise _unreadable(f, e) from e
        return buf

    def __contains__(self, name: object) -> bool:  # Mapping's default would read the tensor
        return name in self._where

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)


def read_into(model: nn.Module, directory: str | os.PathLike, source: str) -> dict[str, torch.Tensor]:
    """Copy every stored tensor of a directory's weights straight from the files into ``model``'s parameters
    and persistent buffers, one tensor at a time; returns ``{name: the model's tensor}`` of those loaded.

    Reading with ``readinto`` into the tensors' own memory (no ``mmap``, no intermediate state dict) keeps the
    peak at the model's size: loading needs about 1x the weights, not 2x. A stored dtype other than the model's
    goes through one temporary of that tensor's size. Names, shapes and dtypes must have been checked against
    the model (:func:`check_against`); a tensor whose bytes are not all in the file is a CheckpointError.
    """
    import torch

    targets = direct_targets(model)
    if targets is None:
        raise CheckpointError(f"{type(model).__name__} customises how its state is loaded; load {source} with "
                              "load_state_dict_checked(model, read_state_dict(directory)) instead.")
    loaded: dict[str, torch.Tensor] = {}
    for f in weight_files(directory):
        start, layout = _data_layout(f)
        with open(f, "rb", buffering=0) as fh, torch.no_grad():
            for name, (code, shape, begin, end) in sorted(layout.items(), key=lambda kv: kv[1][2]):
                target = targets.get(name)
                if target is None or name in loaded:
                    continue  # a tied duplicate stored too (it is the same tensor as its first name)
                dtype = _stored_dtype(f, name, code, shape, begin, end)
                if list(target.shape) != shape:
                    raise _unreadable(f, ValueError(f"tensor {name!r} is {code} {shape} in bytes [{begin}, {end})"))
                direct = target.dtype == dtype and target.device.type == "cpu" and target.is_contiguous()
                buf = target if direct else torch.empty(shape, dtype=dtype, device="cpu")
                _fill(fh, f, name, start + begin, buf)
                if not direct:
                    target.copy_(buf)
                loaded[name] = target
    return loaded


class IntoModel(MutableMapping):
    """A state dict that is the model itself: assigning ``sink[name] = tensor`` copies the tensor into the model's
    parameter or buffer of that name at once, and looking a name up gives the model's tensor back.

    A converter that builds a state dict (``out[name] = ...``) can write into a built model through it, so a
    converted load holds the model plus the tensor in hand, not the model plus a whole converted copy.
    Placeholders on the ``meta`` device (what a converter's reader hands out for a missing tensor) are
    kept aside, not copied: the reader's own report names them.

    Args:
        model: the built model; its tensors are found as :func:`direct_targets` finds them.
        source: what is being loaded, for messages.
    """

    def __init__(self, model: nn.Module, source: str) -> None:
        targets = direct_targets(model)
        if targets is None:
            raise CheckpointError(f"{type(model).__name__} customises how its state is loaded; it cannot be "
                                  f"filled tensor by tensor from {source}.")
        self.targets = targets
        self.source = source
        self.filled: dict[str, torch.Tensor] = {}
        self.placeholders: dict[str, torch.Tensor] = {}

    def __setitem__(self, name: str, value: torch.Tensor) -> None:
        import torch

        if value.is_meta:
            self.placeholders[name] = value
            return
        target = self.targets.get(name)
        if target is None or target.shape != value.shape:
            shape = None if target is None else tuple(target.shape)
            raise CheckpointError(f"The {self.source} gives {name} {tuple(value.shape)}, but the model has "
                                  f"{shape if shape is not None else 'no such tensor'}; the weights changed while "
                                  "they were loaded, or the config does not belong to them.")
        with torch.no_grad():
            target.copy_(value)
        self.filled[name] = target

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.filled[name] if name in self.filled else self.placeholders[name]

    def __delitem__(self, name: str) -> None:
        raise TypeError("tensors written into a model are not taken back out")

    def __iter__(self) -> Iterator[str]:
        return iter(self.filled)

    def __len__(self) -> int:
        return len(self.filled)

    def finish(self) -> dict[str, torch.Tensor]:
        """``{name: the model's tensor}`` of all filled; CheckpointError naming any the conversion never gave."""
        raise_mismatch(f"{self.source} does not fill the model", sorted(set(self.targets) - set(self.filled)),
                       [], [], "Check that config.json belongs to these weights.")
        return self.filled


__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "INDEX_NAME", "MAX_JSON_BYTES", "MAX_BUFFER_BYTES", "writable_dir",
           "cannot_write", "writing", "read_json",
           "read_jsonl", "atomic_write_json", "confined_file", "read_bounded", "save_safetensors", "weight_files",
           "read_state_dict", "read_into", "StoredTensors", "IntoModel", "direct_targets", "read_header", "check_layers", "check_against", "build_checked", "tied_duplicates",
           "raise_mismatch", "load_state_dict_checked", "load_checked"]
