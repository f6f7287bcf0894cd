"""Engine: the scheduler thread that decodes every request of the server in one shared batch.

Continuous batching: between two decoding steps the engine admits waiting requests (prefilling their prompts
together, left-padded, as ``generate`` does for a batch) and retires the finished ones, so a request never
waits for the batch it joined to finish, and one forward pass serves every running request
(:class:`~.batch.BatchCache` keeps the shared KV cache). Each request keeps its own sampling state
(:class:`~.job.Job`), so it gets the tokens it would get decoded alone.

The engine is the only thread that touches the model: the HTTP layer builds and validates jobs, hands them
over with :meth:`Engine.submit`, and gets events back through each job's ``emit`` callback. Other work on the
model (the translation endpoint) goes through :meth:`Engine.call` and runs between two steps. A model whose
``make_cache`` returns something other than a :class:`~llmcore.modules.KVCache` (an LSTM state) is decoded
one request at a time by the same loop.
"""

from __future__ import annotations

import collections
import concurrent.futures
import inspect
import logging
import threading
from collections.abc import Callable
from typing import Any

import torch

from ..errors import LLMCoreError
from ..generation.processors import nonfinite_rows
from ..modules import KVCache
from .batch import BatchCache
from .job import Job

log = logging.getLogger("llmcore.serve")


class QueueFull(Exception):
    """More requests are waiting than the server accepts (the HTTP layer answers 429)."""


def _takes_logits_to_keep(model: Any) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


class Engine:
    """Run ``model`` on a background thread, decoding the submitted jobs together.

    Args:
        model: a decoder-only model with ``make_cache`` (see :mod:`llmcore.generation.decode` for the protocol).
        max_batch_rows: most rows decoded together (a request with ``n`` choices takes ``n`` rows); 1 serves
            one request at a time (the benchmark's floor).
        max_queue: most requests waiting to be admitted; :meth:`submit` raises :class:`QueueFull` beyond it.
    """

    def __init__(self, model: torch.nn.Module, max_batch_rows: int = 16, max_queue: int = 64) -> None:
        if not callable(getattr(model, "make_cache", None)):
            raise LLMCoreError(f"{type(model).__name__} has no make_cache(); the server decodes with a cache.")
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.continuous = isinstance(model.make_cache(1, 1), KVCache) and \
            getattr(getattr(model, "config", None), "max_seq_len", None) is not None
        self.max_batch_rows, self.max_queue = max_batch_rows, max_queue
        self.keep = {"logits_to_keep": 1} if _takes_logits_to_keep(model) else {}
        self.slots = BatchCache(model, self.continuous)
        self.running: list[Job] = []
        self.pending = torch.zeros(0, dtype=torch.long, device=self.device)  # (B,) the next token of each row
        self.waiting: collections.deque[Job] = collections.deque()
        self.calls: collections.deque[tuple[Callable[[], Any], concurrent.futures.Future]] = collections.deque()
        self.cv = threading.Condition()
        self.stopping = False
        self.stats = {"steps": 0, "prefills": 0, "tokens": 0, "max_rows": 0}
        self.thread = threading.Thread(target=self._loop, name="llmcore-engine", daemon=True)
        self.thread.start()

    # ------------------------------------------------------------------ called from other threads
    def submit(self, jobs: list[Job]) -> None:
        """Queue ``jobs`` (all or none: :class:`QueueFull` when they do not fit in the queue)."""
        with self.cv:
            if self.stopping:
                raise QueueFull("the server is shutting down")
            if len(self.waiting) + len(jobs) > self.max_queue:
                raise QueueFull(f"{len(self.waiting)} requests are waiting (the limit is {self.max_queue})")
            self.waiting.extend(jobs)
            self.cv.notify()

    def call(self, fn: Callable[[], Any]) -> concurrent.futures.Future:
        """Run ``fn()`` on the engine thread between two steps (it then has the model to itself)."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self.cv:
            self.calls.append((fn, future))
            self.cv.notify()
        return future

    def load(self) -> dict[str, int]:
        """Requests waiting and running, and rows in the batch (for ``/health``)."""
        with self.cv:
            return {"waiting": len(self.waiting), "running": len(self.running), "rows": self.slots.rows}

    def stop(self) -> None:
        with self.cv:
            self.stopping = True
            self.cv.notify()
        self.thread.join(timeout=10)

    # ------------------------------------------------------------------ the engine thread
    def _loop(self) -> None:
        while True:
            with self.cv:
                while not (self.waiting or self.calls or self.running or self.stopping):
                    self.cv.wait()
                if self.stopping:
                    break
                calls = list(self.calls)
                self.calls.clear()
                admitted = self._admit()
            for fn, future in calls:
                self._run_call(fn, future)
            try:
                with torch.no_grad():
                    if admitted:
                        self._prefill(admitted)
                    if self.running:
                        self._step()
            except Exception as e:  # a failing forward pass ends the requests in it, never the server
                log.exception("decoding failed")
                for job in self.running + [j for j in admitted if j not in self.running]:
                    if not job.done:
                        job.fail(f"decoding failed: {type(e).__name__}: {e}")
                self._reset()
        for job in self.running + list(self.waiting):
            if not job.done:
                job.fail("the server is shutting down", status=503)

    def _admit(self) -> list[Job]:
        """Waiting jobs that fit into the batch now, oldest first (called with the lock held)."""
        rows = self.slots.rows
        admitted: list[Job] = []
        while self.waiting:
            job = self.waiting[0]
            if job.cancelled:
                self.waiting.popleft()
                continue
            if self.continuous:
                if rows + job.rows > self.max_batch_rows and (rows or admitted):
                    break
            elif rows or admitted:  # one request at a time without a shareable cache
                break
            admitted.append(self.waiting.popleft())
            rows += job.rows
        return admitted

    def _run_call(self, fn: Callable[[], Any], future: concurrent.futures.Future) -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            with torch.no_grad():
                future.set_result(fn())
        except BaseException as e:  # handed to the waiting request, which reports it
            future.set_exception(e)

    def _prefill(self, jobs: list[Job]) -> None:
        """Run the admitted prompts as one left-padded batch, choose their first tokens, add their rows."""
        R, L = sum(j.rows for j in jobs), max(j.T for j in jobs)
        ids = torch.zeros((R, L), dtype=torch.long, device=self.device)
        mask = torch.zeros((R, L), dtype=torch.long, device=self.device)
        r = 0
        for job in jobs:
            ids[r:r + job.rows, L - job.T:] = job.seq[:, :job.T]
            mask[r:r + job.rows, L - job.T:] = 1
            r += job.rows
        # Continuous: a cache of exactly the prompt width, copied into the batch's right after. Otherwise the
        # model's own cache, sized for the whole request (it is the batch's cache from now on).
        length = L if self.continuous else L + jobs[0].params.max_tokens
        cache = self.slots.new_cache(R, length)
        logits = self.model(ids, attention_mask=None if bool(mask.all()) else mask, kv_cache=cache,
                            **self.keep)[:, -1].float()  # (R, V)
        self.stats["prefills"] += 1
        toks = self._choose(jobs, logits, torch.zeros(R, dtype=torch.long, device=self.device))
        self.slots.add(cache, [j.T for j in jobs for _ in range(j.rows)])
        self.running += jobs
        self.pending = torch.cat([self.pending, toks])
        self._retire()

    def _step(self) -> None:
        """One forward pass over every running row: feed each row's pending token, choose the next."""
        self.slots.reserve(1)
        mask = self.slots.mask(1)
        logits = self.model(self.pending[:, None], attention_mask=mask, kv_cache=self.slots.cache,
                            **self.keep)[:, -1].float()  # (B, V)
        self.slots.advance(1)
        self.stats["steps"] += 1
        self.stats["max_rows"] = max(self.stats["max_rows"], self.slots.rows)
        self.pending = self._choose(self.running, logits, self.pending)
        self._retire()

    def _choose(self, jobs: list[Job], logits: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
        """Each job picks its tokens from its rows of ``logits``; a job that fails (or was cancelled) keeps
        ``fallback``'s tokens and is retired after this step."""
        # Once for the whole batch instead of once per job (each is a small kernel, and the check a host sync):
        # the argmax that plain greedy jobs take as it is, and which rows hold non-finite logits.
        argmax = logits.argmax(dim=-1)
        bad = nonfinite_rows(logits).tolist()
        out, r = [], 0
        for job in jobs:
            rows = slice(r, r + job.rows)
            r += job.rows
            if job.cancelled:
                job.done = True
                out.append(fallback[rows])
                continue
            try:
                out.append(job.step(logits[rows], nonfinite=any(bad[rows]), argmax=argmax[rows]))
                self.stats["tokens"] += job.rows
            except LLMCoreError as e:  # e.g. non-finite logits: this request fails, the others go on
                job.fail(str(e))
                out.append(fallback[rows])
        return torch.cat(out) if out else fallback[:0]

    def _retire(self) -> None:
        """Drop the rows of finished, failed and cancelled jobs from the batch."""
        keep, running, r = [], [], 0
        for job in self.running:
            if not (job.done or job.cancelled):
                keep += range(r, r + job.rows)
                running.append(job)
            r += job.rows
        if len(running) == len(self.running):
            return
        self.slots.keep(keep)
        self.pending = self.pending[torch.tensor(keep, dtype=torch.long, device=self.device)]
        with self.cv:
            self.running = running

    def _reset(self) -> None:
        self.slots.keep([])
        self.pending = self.pending[:0]
        with self.cv:
            self.running = []
