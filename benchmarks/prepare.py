"""Throughput and memory of ``prepare``: locally (1 and 2 processes) and on a Dask LocalCluster (1 and 2 workers).

Assembles a corpus of at least ``--size-mb`` MB from the shared data (Shakespeare, the King James and World
English bibles, repeated) as ``--files`` plain text files, trains a sentencepiece BPE (vocab 8000) on its first
5 MB once, then runs each configuration in a fresh subprocess, one after the other, on the same files:

- ``local1``: ``prepare(num_workers=0)``, in-process, the tokenizer on one thread (so one process = one core);
- ``local2``: ``prepare(num_workers=2)``, a pool of 2 processes (one thread each, as prepare runs them);
- ``dask1`` / ``dask2``: ``prepare(dask=client)`` on a ``LocalCluster`` of 1 / 2 single-threaded worker
  processes, started before the clock starts (its start-up time is reported apart).

Prints a Markdown table: tokens/s and MB/s of input (wall clock, both passes), the ratio to ``local1``, the CPU
seconds of all its processes together, and the peak resident memory (``VmHWM``) of the main process and of the
largest worker process (sampled from /proc every 0.2 s; Linux); then checks that the four output directories
hold the same files, byte for byte (sha256 of each, meta.json included). ``ru_maxrss`` would not do: Linux
carries it over ``fork`` + ``exec``, so a child would report its parent's peak.

    python benchmarks/prepare.py [--size-mb 100] [--files 8] [--vocab-size 8000] [--configs local1,local2,dask1,dask2]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the shared data sits beside the checkout (../shared/data), or beside the worktrees' parent (../../shared/data)
SHARED = next((p / "shared" / "data" for p in ROOT.parents if (p / "shared" / "data").is_dir()), ROOT / "shared")
SOURCES = [SHARED / "shakespeare" / "complete.txt", SHARED / "bible-text" / "kjv.txt", SHARED / "bible-text" / "web.txt"]
CONFIGS = {"local1": ("local", 1), "local2": ("local", 2), "dask1": ("dask", 1), "dask2": ("dask", 2)}


def build_corpus(work: Path, size_mb: float, n_files: int) -> list[Path]:
    """``n_files`` files, each the shared texts concatenated and repeated, together >= ``size_mb`` MB."""
    corpus = work / f"corpus-{size_mb}mb-{n_files}"
    files = [corpus / f"part{i:02d}.txt" for i in range(n_files)]
    if all(f.is_file() for f in files):  # written by an earlier run (or the parent of this one)
        return files
    base = "".join(p.read_text(encoding="utf-8") for p in SOURCES if p.is_file()).encode("utf-8")
    if not base:
        sys.exit(f"none of {', '.join(map(str, SOURCES))} found")
    per_file = int(size_mb * 10**6 / n_files) + 1
    data = base * -(-per_file // len(base))
    end = data.find(b"\n", per_file)  # cut after a line, so every file is whole lines
    data = data[:end + 1] if end >= 0 else data
    corpus.mkdir(parents=True, exist_ok=True)
    for f in files:
        f.write_bytes(data)
    return files


def build_tokenizer(work: Path, files: list[Path], vocab_size: int) -> Path:
    from llmcore.tokenizer import SentencePieceTokenizer

    out = work / f"tokenizer-bpe{vocab_size}"
    if not (out / "llmcore_tokenizer.json").is_file():
        with open(files[0], encoding="utf-8") as f:
            head = f.read(5_000_000)
        SentencePieceTokenizer.train(input=head.split("\n"), vocab_size=vocab_size, model_type="bpe").save(out)
    return out


def _hwm_mb(pid: int | str) -> float:
    """Peak resident memory of a process since it started (VmHWM), in MB; 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class PeakMonitor(threading.Thread):
    """Every 0.2 s, the VmHWM of each descendant of this process (pool processes, Dask workers)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peaks: dict[int, float] = {}
        self.done = threading.Event()

    def _descendants(self) -> list[int]:
        parent: dict[int, int] = {}
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    pass
        found, frontier = [], [os.getpid()]
        while frontier:
            kids = [p for p, pp in parent.items() if pp in frontier]
            found += kids
            frontier = kids
        return found

    def run(self) -> None:
        while not self.done.wait(0.2):
            for pid in self._descendants():
                self.peaks[pid] = max(self.peaks.get(pid, 0.0), _hwm_mb(pid))

    def largest(self) -> float | None:
        self.done.set()
        self.join()
        return max(self.peaks.values(), default=None)


def _cpu_s() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run_one(config: str, files: list[Path], tokenizer_dir: Path, out: Path) -> dict:
    """One configuration, in this (fresh) process: wall time, counts, peak memory."""
    from llmcore.data import prepare
    from llmcore.tokenizer import load_tokenizer

    kind, n = CONFIGS[config]
    tok = load_tokenizer(tokenizer_dir)
    tok.num_threads = 1  # one process, one core (pool processes and Dask workers use one thread anyway)
    shutil.rmtree(out, ignore_errors=True)
    result: dict = {"config": config}
    monitor = PeakMonitor()
    monitor.start()
    if kind == "local":
        cpu, t = _cpu_s(), time.perf_counter()
        meta = prepare(files, tok, out, num_workers=0 if n == 1 else n, progress=False)
        result["wall_s"] = time.perf_counter() - t
        result["cpu_s"] = _cpu_s() - cpu  # the pool's processes are terminated and reaped by now
    else:
        from dask.distributed import Client, LocalCluster

        t = time.perf_counter()
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None)
        client = Client(cluster)
        client.wait_for_workers(n)
        result["startup_s"] = time.perf_counter() - t
        before = sum(client.run(lambda: sum(os.times()[:2])).values())  # the workers' start-up CPU, left out
        cpu, t = _cpu_s(), time.perf_counter()
        meta = prepare(files, tok, out, dask=client, progress=False)
        result["wall_s"] = time.perf_counter() - t
        workers = sum(client.run(lambda: sum(os.times()[:2])).values())
        result["cpu_s"] = _cpu_s() - cpu + workers - before
        client.close()
        cluster.close()
    largest = monitor.largest()
    result["worker_rss_mb"] = largest if n > 1 or kind == "dask" else None
    result["main_rss_mb"] = _hwm_mb("self")
    result["tokens"] = meta["n_train_tokens"] + meta["n_val_tokens"]
    result["mb"] = sum(f.stat().st_size for f in files) / 1e6
    result["shards"] = len(meta["shards"]["train"]) + len(meta["shards"]["val"])
    return result


def digest(directory: Path) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(directory.iterdir()) if f.is_file()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=100, help="corpus size, at least (default: 100)")
    parser.add_argument("--files", type=int, default=8, help="files the corpus is written as (default: 8)")
    parser.add_argument("--vocab-size", type=int, default=8000, help="of the sentencepiece BPE (default: 8000)")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated, of " + ", ".join(CONFIGS))
    parser.add_argument("--work", type=Path, default=Path("/tmp/llmcore-bench-prepare"),
                        help="corpus, tokenizer and outputs (reused between runs)")
    parser.add_argument("--run", help=argparse.SUPPRESS)  # internal: one configuration, in a subprocess
    args = parser.parse_args()

    args.work.mkdir(parents=True, exist_ok=True)
    files = build_corpus(args.work, args.size_mb, args.files)
    tokenizer_dir = build_tokenizer(args.work, files, args.vocab_size)
    if args.run:
        print(json.dumps(run_one(args.run, files, tokenizer_dir, args.work / f"out-{args.run}")))
        return
    results = []
    for config in args.configs.split(","):
        cmd = [sys.executable, __file__, "--size-mb", str(args.size_mb), "--files", str(args.files),
               "--vocab-size", str(args.vocab_size), "--work", str(args.work), "--run", config]
        line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        results.append(json.loads(line))
        print(f"# {config}: {results[-1]}", file=sys.stderr)
    base = next((r for r in results if r["config"] == "local1"), results[0])
    print(f"{results[0]['mb']:.1f} MB in {args.files} files, {results[0]['tokens']:,} tokens, "
          f"{results[0]['shards']} shards; load average {os.getloadavg()[0]:.1f}\n")
    print("| configuration | wall s | tokens/s | MB/s | vs local1 | CPU s | main peak RSS MB | largest worker peak RSS MB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        worker = "—" if r["worker_rss_mb"] is None else f"{r['worker_rss_mb']:.0f}"
        extra = f" (cluster start-up {r['startup_s']:.1f} s, not counted)" if "startup_s" in r else ""
        print(f"| {r['config']}{extra} | {r['wall_s']:.1f} | {r['tokens'] / r['wall_s']:,.0f} | "
              f"{r['mb'] / r['wall_s']:.2f} | {base['wall_s'] / r['wall_s']:.2f}x | {r['cpu_s']:.1f} | "
              f"{r['main_rss_mb']:.0f} | {worker} |")
    digests = [digest(args.work / f"out-{r['config']}") for r in results]
    print(f"\nidentical outputs: {'yes' if all(d == digests[0] for d in digests) else 'NO'} "
          f"({len(digests[0])} files each)")


if __name__ == "__main__":
    main()
