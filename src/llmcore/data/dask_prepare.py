"""``prepare`` on a Dask cluster: one task per part, the same shards and ``meta.json`` as a local run.

:func:`llmcore.data.prepare` with ``dask="local:4"`` (a ``LocalCluster`` of 4 single-threaded worker processes,
closed at the end) or ``dask="tcp://scheduler:8786"`` (an existing cluster) runs both passes of
:mod:`llmcore.data.parts` as Dask tasks: pass 1 counts each part, the client places the train/val cut, pass 2
tokenizes each part into its own staged shard file, and the client then writes the index, last. Dask is an
optional extra (``pip install 'llmcore[dask]'``); nothing here imports it until a run starts.

What the workers need: llmcore installed, and the input files and the output directory at the same paths as
the client (a shared filesystem; relative paths are made absolute first). The tokenizer travels as the bytes
of its saved files (a sentencepiece model is a few hundred kB) and is loaded once per worker process; a
tokenizer that is not one of llmcore's kinds travels as the object itself (pickled by Dask).

Failures: a worker that dies mid-task (killed, out of memory) loses only that task's temporary file; the
scheduler runs the task again on another worker, which writes the same bytes. A task that keeps killing its
workers (``distributed.scheduler.allowed-failures``, default 3) fails the run with a :class:`DataError` naming
the part; then, as for any error, no ``meta.json`` is written and the staged shards are removed.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from concurrent.futures import CancelledError
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError
from .parts import (
    ChunkEncoder,
    Count,
    Job,
    Part,
    Piece,
    Settings,
    count_part,
    describe,
    one_thread,
    write_part,
)

INSTALL_HINT = "pip install 'llmcore[dask]'"
_LOCAL = re.compile(r"local:(\d+)")


def check_spec(spec: Any) -> Any:
    """``spec`` if it names a cluster (``local:N`` with N >= 1, a scheduler address) or is a Client."""
    if not isinstance(spec, str):
        if hasattr(spec, "submit") and hasattr(spec, "gather"):
            return spec
        raise ConfigError(f"dask={spec!r} is not a Dask cluster: pass 'local:N', a scheduler address such as "
                          "'tcp://host:8786', or a distributed.Client")
    m = _LOCAL.fullmatch(spec)
    if spec.startswith("local") and not (m and int(m.group(1)) >= 1):
        raise ConfigError(f"--dask {spec}: a local cluster is local:N with N >= 1 worker processes, e.g. local:4")
    if not m and not re.fullmatch(r"([a-z]+://)?[^\s:/]+:\d+", spec):
        raise ConfigError(f"--dask {spec} is not a scheduler address: use tcp://HOST:PORT (e.g. tcp://10.0.0.1:8786) "
                          "or local:N for a local cluster of N workers")
    return spec


def import_distributed() -> Any:
    """The ``distributed`` module, or a ConfigError that says how to install it."""
    try:
        import distributed
    except ImportError:
        raise ConfigError(f"--dask needs Dask, which is not installed: {INSTALL_HINT}") from None
    return distributed


# ------------------------------------------------------------------------------------------------ the tokenizer
def tokenizer_payload(tokenizer: Any) -> tuple[str, Any, str]:
    """``("files", {name: bytes}, digest)`` for a tokenizer llmcore saves and loads as itself, else the object."""
    from ..tokenizer import Tokenizer, load_tokenizer

    if isinstance(tokenizer, Tokenizer) and "kind" in type(tokenizer).__dict__:  # not a subclass of a kind
        with tempfile.TemporaryDirectory(prefix="llmcore-tokenizer-") as tmp:
            saved = Path(tokenizer.save(Path(tmp) / "tok"))
            if type(load_tokenizer(saved)) is type(tokenizer):
                files = {p.relative_to(saved).as_posix(): p.read_bytes() for p in sorted(saved.rglob("*"))
                         if p.is_file()}
                digest = hashlib.sha256()
                for name, data in files.items():
                    digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
                return "files", files, digest.hexdigest()
    return "object", tokenizer, ""


_TOKENIZERS: dict[str, Any] = {}  # digest -> tokenizer, in each worker process


def _load(payload: tuple[str, Any, str]) -> Any:
    kind, value, digest = payload
    if kind == "object":
        return value
    if digest not in _TOKENIZERS:
        from ..tokenizer import load_tokenizer

        with tempfile.TemporaryDirectory(prefix="llmcore-tokenizer-") as tmp:
            for name, data in value.items():
                (Path(tmp) / name).parent.mkdir(parents=True, exist_ok=True)
                (Path(tmp) / name).write_bytes(data)
            _TOKENIZERS[digest] = load_tokenizer(tmp)
    return _TOKENIZERS[digest]


# ------------------------------------------------------------------------------------------------ tasks
def _hold(value: Any) -> Any:
    return value


def count_task(part: Part, text_field: str) -> Count:
    return count_part(part, text_field)


def encode_task(job: Job, payload: tuple[str, Any, str], settings: Settings) -> list[Piece]:
    encoder = ChunkEncoder(one_thread(_load(payload)), settings.dtype, settings.vocab_size)
    return write_part(job, encoder, settings)


# ------------------------------------------------------------------------------------------------ the runner
class DaskRunner:
    """Both passes of prepare as Dask tasks (the interface of :class:`llmcore.data.shards.LocalRunner`)."""

    def __init__(self, spec: Any, tokenizer: Any) -> None:
        self.spec, self.tokenizer = check_spec(spec), tokenizer
        self.client: Any = None
        self.cluster: Any = None

    def __enter__(self) -> DaskRunner:
        distributed = import_distributed()
        if not isinstance(self.spec, str):
            self.client = self.spec  # the caller's client: used, not closed
            self.owned = False
            return self
        self.owned = True
        m = _LOCAL.fullmatch(self.spec)
        if m:
            # processes, not threads: tokenizers hold the GIL; one thread each, as many processes as asked for
            self.cluster = distributed.LocalCluster(n_workers=int(m.group(1)), threads_per_worker=1,
                                                    processes=True, dashboard_address=None)
            self.client = distributed.Client(self.cluster)
        else:
            try:
                self.client = distributed.Client(self.spec, timeout="30s")
            except OSError as e:
                raise DataError(f"cannot reach the Dask scheduler at {self.spec} ({e}); start it (dask scheduler) "
                                "or check the address") from None
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.owned:
            self.client.close()
            if self.cluster is not None:
                self.cluster.close()

    def _run(self, fn: Any, items: list[Any], what: list[Part], bar: Any = None, sizes: list[int] | None = None,
             **kwargs: Any) -> list[Any]:
        """``fn(item, **kwargs)`` for every item as tasks; results in item order; errors name the part."""
        distributed = import_distributed()
        futures = self.client.map(fn, items, pure=False, **kwargs)
        index = {f.key: i for i, f in enumerate(futures)}
        results: list[Any] = [None] * len(items)
        try:
            for future in distributed.as_completed(futures):
                i = index[future.key]
                try:
                    results[i] = future.result()
                except distributed.KilledWorker:
                    raise DataError(f"Dask workers died each time they ran the task for {describe(what[i])} (killed, "
                                    "or out of memory; distributed.scheduler.allowed-failures); nothing was indexed. "
                                    "Give the workers more memory or lower the shard size, and run prepare again") from None
                except CancelledError:
                    raise DataError(f"the Dask task for {describe(what[i])} was cancelled (the cluster shut down or "
                                    "restarted); nothing was indexed: run prepare again") from None
                if bar is not None and sizes is not None:
                    bar.update(sizes[i])
        except BaseException:
            self.client.cancel(futures)
            raise
        return results

    def count(self, parts: list[Part], text_field: str) -> list[Count]:
        return self._run(count_task, parts, parts, text_field=text_field)

    def encode(self, jobs: list[Job], settings: Settings, bar: Any) -> list[Piece]:
        # One task holds the tokenizer and every encode task depends on it: the workers fetch it from each other
        # and the scheduler stores it once. Not client.scatter: scattered data dies with the last worker that
        # holds it, and then every task that needs it is cancelled; a task's result is computed again.
        payload = self.client.submit(_hold, tokenizer_payload(self.tokenizer), pure=False)
        results = self._run(encode_task, jobs, [j.part for j in jobs], bar, [j.chars for j in jobs],
                            payload=payload, settings=settings)
        return [piece for pieces in results for piece in pieces]


__all__ = ["DaskRunner", "check_spec", "import_distributed", "tokenizer_payload"]
