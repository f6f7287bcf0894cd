"""The benchmark suite: every comparison in one process, and the tables of docs/benchmarks.md written from it.

Each benchmark is one of the scripts beside this file, run in this process (its ``main()`` with the argument
list below, stdout captured and echoed). The Markdown tables it prints are its results. With ``--write-docs``
they replace what stands between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->`` in docs/benchmarks.md,
under a line that gives the command, the date, the versions, the CPU and the load average before and after, so no
number in those sections is copied by hand. Every run also writes ``benchmarks/results/NAME.md``.

    python -m benchmarks                          # the whole suite (~40 min on 2 cores)
    python -m benchmarks --only decode quantize --write-docs
    python -m benchmarks --quick                  # every benchmark in its smoke-test mode (minutes)

The reference systems come from the ``bench`` extra (``pip install -e ".[bench]"``: transformers,
CTranslate2, sacrebleu). Timing inside each script is interleaved between the systems it compares, median
(or best, where the script says so) of N rounds, so a busy machine slows every system alike; the load
average is recorded because absolute numbers still depend on it, and only ratios should be quoted.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import io
import os
import re
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DOCS = HERE.parent / "docs" / "benchmarks.md"

# name -> (script, full arguments, quick arguments)
SUITE: dict[str, tuple[str, list[str], list[str]]] = {
    "decode": ("decode.py", [], ["--layers", "2", "--new", "16", "--repeats", "1"]),
    "quantize": ("quantize.py", [], ["--models", "shakespeare", "--prompts", "4", "--new", "16", "--repeats", "1"]),
    "kernels": ("quantize.py", ["--kernels", "--models"], ["--kernels", "--models", "--repeats", "1"]),
    "generate": ("generate.py", [], ["--quick", "--repeats", "1"]),
    "train": ("train.py", [], ["--steps", "2", "--warmup", "1"]),
    "train-gpt2": ("train_gpt2.py", ["--memory"], ["--layers", "1", "--seq", "64", "--steps", "1", "--threads", "1",
                                                  "--dtypes", "fp32"]),
    "tokenizer": ("tokenizer.py", [], ["--repeats", "1", "--vocab-size", "1000"]),
    "serve": ("serve.py", [], ["--max-tokens", "4", "--requests", "2", "--concurrency", "1", "2", "--repeats", "1"]),
    "train-distributed": ("train.py", ["--distributed"], ["--distributed", "--steps", "2", "--warmup", "1"]),
    "prepare": ("prepare.py", [], ["--size-mb", "1", "--files", "2", "--vocab-size", "1000"]),
    "train-compile": ("train_compile.py", [], ["--layers", "1", "--seq", "64", "--steps", "1"]),
}


class Tee(io.TextIOBase):
    """Writes to the real stdout and keeps a copy (the script's output is both shown and parsed)."""

    def __init__(self, out) -> None:
        self.out, self.buffer_ = out, io.StringIO()

    def write(self, s: str) -> int:
        self.out.write(s)
        self.out.flush()
        return self.buffer_.write(s)

    def getvalue(self) -> str:
        return self.buffer_.getvalue()


def run_script(script: str, argv: list[str]) -> str:
    """Import ``benchmarks/SCRIPT`` and call its ``main()`` with ``argv``; returns what it printed."""
    # named as the package's own module and registered, so that a process the script spawns (train.py
    # --distributed: torch.multiprocessing, start method spawn) can import the function it is handed
    name = f"benchmarks.{Path(script).stem}"
    spec = importlib.util.spec_from_file_location(name, HERE / script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    sys.path.insert(0, str(HERE))
    old_argv = sys.argv
    tee = Tee(sys.stdout)
    try:
        spec.loader.exec_module(module)
        sys.argv = [str(HERE / script), *argv]
        with contextlib.redirect_stdout(tee):
            module.main()
    finally:
        sys.argv = old_argv
        sys.path.remove(str(HERE))
    return tee.getvalue()


def tables(output: str) -> str:
    """The Markdown tables of a script's output (runs of lines starting with '|'), with any one-line caption
    printed right before or after each."""
    lines, keep, out = output.splitlines(), [], []
    for i, line in enumerate(lines):
        if line.startswith("|"):
            keep.append(i)
    blocks: list[list[int]] = []
    for i in keep:
        if blocks and i == blocks[-1][-1] + 1:
            blocks[-1].append(i)
        else:
            blocks.append([i])
    for b in blocks:
        after = b[-1] + 2  # a caption such as "Greedy agreement ..." one blank line below the table
        out.append("\n".join(lines[b[0]:b[-1] + 1]))
        if after < len(lines) and lines[after] and not lines[after].startswith(("|", "{")) \
                and lines[b[-1] + 1] == "":
            out.append(lines[after])
    return "\n\n".join(out)


def versions() -> str:
    import torch

    parts = [f"torch {torch.__version__}"]
    for name in ("transformers", "ctranslate2"):
        try:
            parts.append(f"{name} {__import__(name).__version__}")
        except ImportError:
            pass
    return ", ".join(parts)


def machine() -> str:
    """The CPU the numbers come from: model, cores, and the vector extensions the kernels choose by (fbgemm's
    int8 path and bf16 matmuls differ between AVX2, AVX-512, VNNI and AMX machines)."""
    model, flags = "unknown CPU", set()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
    except OSError:
        pass
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile") if f in flags]
    return f"{model}, {os.cpu_count()} cores, {' '.join(isa) or 'no AVX2'}"


def write_docs(name: str, body: str, path: Path = DOCS) -> bool:
    """Replace the ``bench:NAME`` section of ``path``; False when the page has no such markers."""
    text = path.read_text(encoding="utf-8")
    pattern = re.compile(rf"(<!-- bench:{name} -->\n).*?(\n<!-- /bench:{name} -->)", re.S)
    if not pattern.search(text):
        return False
    path.write_text(pattern.sub(lambda m: m.group(1) + body + m.group(2), text), encoding="utf-8")
    return True


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", choices=sorted(SUITE), default=None, help="run these benchmarks only")
    p.add_argument("--quick", action="store_true", help="each benchmark in its smoke-test mode")
    p.add_argument("--write-docs", action="store_true",
                   help="replace the bench:NAME sections of docs/benchmarks.md (not with --quick)")
    p.add_argument("--out", type=Path, default=HERE / "results", help="where NAME.md results go")
    args = p.parse_args()
    if args.write_docs and args.quick:
        p.error("--write-docs takes full runs only: smoke-test numbers do not belong in the docs")
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.only or list(SUITE):
        script, full, quick = SUITE[name]
        argv = quick if args.quick else full
        before, t0 = os.getloadavg()[0], time.perf_counter()
        print(f"\n===== {name}: benchmarks/{script} {' '.join(argv)}", flush=True)
        output = run_script(script, argv)
        minutes = (time.perf_counter() - t0) / 60
        command = f"python -m benchmarks --only {name}" + (" --quick" if args.quick else "")
        header = (f"Measured by `{command}` on {datetime.date.today().isoformat()} ({versions()}; "
                  f"{machine()}; {minutes:.1f} min; 1-minute load average {before:.2f} before, {os.getloadavg()[0]:.2f} after).")
        body = header + "\n\n" + tables(output)
        (args.out / f"{name}.md").write_text(body + "\n", encoding="utf-8")
        if args.write_docs and not write_docs(name, body):
            print(f"docs/benchmarks.md has no bench:{name} section; results are in {args.out / (name + '.md')}")
    print("\nbenchmark suite finished")


if __name__ == "__main__":
    main()
