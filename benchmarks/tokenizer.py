"""Encode throughput of llmcore's SentencePieceTokenizer against raw sentencepiece on the same model.

Trains (or loads with --model) a BPE model with vocab 8000 on the Shakespeare corpus (about 5 MB), then
times, best of --repeats:

- the whole corpus as one string: raw ``sp.encode(text)`` vs ``tok.encode(text)``; the wrapper splits on
  newlines and encodes the lines in parallel (same ids), and a pass-through row shows the bare call overhead;
- the corpus as a list of lines: raw ``sp.encode(lines)`` vs ``tok.encode(lines)`` (both threaded batches).

Prints a Markdown table: MB/s of UTF-8 input (wall clock) and the wrapper / raw ratios of wall-clock and
CPU time, each the best of the repeats (the target is <= 1.10).

    python benchmarks/tokenizer.py [CORPUS] [--model DIR] [--repeats 3]
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys
import time
from pathlib import Path

from llmcore.tokenizer import SentencePieceTokenizer, load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = ROOT / ".." / "shared" / "data" / "shakespeare" / "complete.txt"
BUNDLED_CORPUS = ROOT / "src" / "llmcore" / "data" / "corpora" / "shakespeare.txt.gz"


def read_corpus(path: Path | None) -> tuple[str, Path]:
    """The corpus text: the given path, else the shared Shakespeare file, else the bundled one."""
    for candidate in [path] if path else [DEFAULT_CORPUS, BUNDLED_CORPUS]:
        if candidate.is_file():
            opener = gzip.open if candidate.suffix == ".gz" else open
            with opener(candidate, "rt", encoding="utf-8") as f:
                return f.read(), candidate
    sys.exit(f"corpus not found: {path or f'{DEFAULT_CORPUS} or {BUNDLED_CORPUS}'}")


def timed(fn) -> tuple[float, float, object]:
    """Wall-clock and process CPU seconds of one call (CPU time sums threads; it is steadier on a busy box)."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", nargs="?", type=Path, default=None)
    parser.add_argument("--model", type=Path, default=None, help="load this tokenizer instead of training")
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    text, path = read_corpus(args.corpus)
    lines = text.split("\n")
    mb = len(text.encode("utf-8")) / 1e6
    if args.model:
        tok = load_tokenizer(args.model)
    else:
        start = time.perf_counter()
        tok = SentencePieceTokenizer.train([text], args.vocab_size, model_type="bpe")
        print(f"trained BPE vocab {tok.vocab_size} on {path.name} in {time.perf_counter() - start:.1f} s")
    sp = tok.sp
    passthrough = SentencePieceTokenizer(tok.model_proto)  # no newline split: the bare wrapper call

    cases = [
        ("one string (whole corpus)", lambda: sp.encode(text), lambda: tok.encode(text)),
        (
            "one string, pass-through (no newline split)",
            lambda: sp.encode(text),
            lambda: passthrough.encode(text),
        ),
        (f"list of {len(lines)} lines", lambda: sp.encode(lines), lambda: tok.encode(lines)),
    ]
    print(f"\ncorpus: {path} ({mb:.2f} MB UTF-8), {os.cpu_count()} CPU cores, best of {args.repeats}\n")
    print(
        "| input | raw sentencepiece MB/s | llmcore MB/s | llmcore / raw, wall time | llmcore / raw, CPU time |"
    )
    print("|---|---:|---:|---:|---:|")
    for name, raw_fn, ours_fn in cases:
        best = {"raw": [float("inf")] * 2, "ours": [float("inf")] * 2}
        outs = {}
        for _ in range(args.repeats):  # alternate the two so load changes on the machine hit both alike
            for key, fn in (("raw", raw_fn), ("ours", ours_fn)):
                wall, cpu, outs[key] = timed(fn)
                best[key] = [min(best[key][0], wall), min(best[key][1], cpu)]
        if outs["ours"] != outs["raw"]:
            sys.exit(f"{name}: llmcore ids differ from raw sentencepiece ids")
        (raw_w, raw_c), (our_w, our_c) = best["raw"], best["ours"]
        print(f"| {name} | {mb / raw_w:.2f} | {mb / our_w:.2f} | {our_w / raw_w:.3f} | {our_c / raw_c:.3f} |")


if __name__ == "__main__":
    main()
