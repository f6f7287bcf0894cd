"""Serving throughput and latency: ``llmcore serve`` at concurrency 1, 4 and 16, against two references.

* **server, continuous batching** — ``llmcore serve`` (default ``--max-batch-rows 16``), clients streaming
  through the official ``openai`` client from threads of this process;
* **server, one request at a time** (the floor) — the same server with ``--max-batch-rows 1``;
* **in-process batched generate** (the ceiling) — ``llmcore.generation.stream`` on a left-padded batch of as
  many prompts as there are clients: no HTTP, no scheduling, every row in lock-step.

Every request is greedy and produces exactly ``--max-tokens`` tokens (``min_tokens`` = ``max_tokens``, so no
early EOS). Throughput is generated tokens / wall time of the whole level; TTFT is the time from sending a
request to its first streamed text (for the ceiling: to the batch's first step). The server runs with
``--threads`` torch threads; the clients share the machine with it, so on a small CPU they cost it some time.

    python benchmarks/serve.py                                  # bundled shakespeare, 1 thread (~8 min)
    python benchmarks/serve.py --model runs/mine --max-tokens 32 --repeats 1
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

PROMPTS = ["ROMEO:", "JULIET:", "To be, or not", "First Citizen:", "KING HENRY:", "O, what a", "HAMLET:",
           "Now is the winter", "MACBETH:", "All the world", "PORTIA:", "Friends, Romans,", "LEAR:", "But, soft!",
           "OTHELLO:", "What light"]


def start_server(model: str, threads: int, rows: int) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = dict(os.environ, PYTHONPATH=src + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS=str(threads))
    proc = subprocess.Popen([sys.executable, "-m", "llmcore", "serve", "--model", model, "--port", str(port),
                             "--threads", str(threads), "--max-batch-rows", str(rows), "--max-queue", "256"],
                            env=env, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            urllib.request.urlopen(url + "/health", timeout=5)
            return proc, url
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server did not start")


def one_request(client, name: str, prompt: str, max_tokens: int) -> tuple[float, int]:
    """(time to first text, tokens) of one streamed greedy completion."""
    start, first, tokens = time.perf_counter(), None, 0
    for chunk in client.completions.create(model=name, prompt=prompt, max_tokens=max_tokens, temperature=0,
                                           stream=True, stream_options={"include_usage": True},
                                           extra_body={"min_tokens": max_tokens}):
        if chunk.choices and chunk.choices[0].text and first is None:
            first = time.perf_counter() - start
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    return (first if first is not None else time.perf_counter() - start), tokens


def through_server(url: str, name: str, concurrency: int, requests: int, max_tokens: int) -> dict[str, float]:
    import openai

    clients = [openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0) for _ in range(concurrency)]
    one_request(clients[0], name, PROMPTS[0], 4)  # warm-up
    jobs = [PROMPTS[i % len(PROMPTS)] for i in range(requests)]
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda a: one_request(clients[a[0] % concurrency], name, a[1], max_tokens),
                                enumerate(jobs)))
    wall = time.perf_counter() - start
    ttft = sorted(r[0] for r in results)
    return {"tok_s": sum(r[1] for r in results) / wall, "ttft_p50": statistics.median(ttft),
            "ttft_p95": ttft[min(len(ttft) - 1, round(0.95 * (len(ttft) - 1)))], "tokens": sum(r[1] for r in results)}


def in_process(model_name: str, threads: int, batch: int, requests: int, max_tokens: int) -> dict[str, float]:
    import torch

    from llmcore.generation import stream
    from llmcore.models import TransformerLM
    from llmcore.tokenizer import load_tokenizer

    torch.set_num_threads(threads)
    model, tok = TransformerLM.from_pretrained(model_name).eval(), load_tokenizer(model_name)
    prompts = [tok.encode(PROMPTS[i % len(PROMPTS)]) for i in range(requests)]
    tokens, ttfts, start = 0, [], time.perf_counter()
    for s in range(0, requests, batch):
        rows = prompts[s:s + batch]
        width = max(map(len, rows))
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, p in enumerate(rows):
            ids[r, width - len(p):], mask[r, width - len(p):] = torch.tensor(p), 1
        t0 = time.perf_counter()
        for i, _ in enumerate(stream(model, ids, None if bool(mask.all()) else mask, max_new_tokens=max_tokens,
                                     min_new_tokens=max_tokens, eos_token_id=[])):
            if i == 0:
                ttfts += [time.perf_counter() - t0] * len(rows)
            tokens += len(rows)
    wall = time.perf_counter() - start
    ttfts.sort()
    return {"tok_s": tokens / wall, "ttft_p50": statistics.median(ttfts),
            "ttft_p95": ttfts[min(len(ttfts) - 1, round(0.95 * (len(ttfts) - 1)))], "tokens": tokens}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="shakespeare", help="model directory or bundled name")
    p.add_argument("--max-tokens", type=int, default=64, help="tokens per request")
    p.add_argument("--requests", type=int, default=16, help="requests per concurrency level (at least the level)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--threads", type=int, default=1, help="torch threads of the server and of the in-process run")
    p.add_argument("--repeats", type=int, default=2, help="rounds; each row keeps its best (highest tokens/s)")
    args = p.parse_args()
    name = Path(os.path.normpath(args.model)).name
    # Both servers stay up the whole time (an idle one costs nothing), and the three ways are interleaved
    # level by level and round by round, so the background load of a shared machine hits them alike.
    servers = {"server, continuous batching": start_server(args.model, args.threads, max(args.concurrency)),
               "server, one request at a time": start_server(args.model, args.threads, 1)}
    best: dict[tuple[str, int], dict[str, float]] = {}
    try:
        for _ in range(args.repeats):
            for c in args.concurrency:
                n = max(args.requests, c)
                for label in (*servers, "in-process batched generate"):
                    if label in servers:
                        r = through_server(servers[label][1], name, c, n, args.max_tokens)
                    else:
                        r = in_process(args.model, args.threads, c, n, args.max_tokens)
                    print(label, c, {k: round(v, 3) for k, v in r.items()}, file=sys.stderr, flush=True)
                    if r["tok_s"] > best.get((label, c), {"tok_s": 0})["tok_s"]:
                        best[(label, c)] = r
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(30)
    print(f"\n{args.model}, {args.max_tokens} tokens per request, {args.threads} thread(s), best of {args.repeats}\n")
    print("| how | concurrency | tokens/s | TTFT p50 (ms) | TTFT p95 (ms) |\n|---|---:|---:|---:|---:|")
    for label in ("server, continuous batching", "server, one request at a time", "in-process batched generate"):
        for c in args.concurrency:
            r = best[(label, c)]
            print(f"| {label} | {c} | {r['tok_s']:,.0f} | {1000 * r['ttft_p50']:,.0f} | {1000 * r['ttft_p95']:,.0f} |")


if __name__ == "__main__":
    main()
