"""Distributed: environment detection, and a 2-process gloo DDP run equal to one process (same global batch).

Both runs see the same data: every rank draws the global batch's indices with an identically seeded generator
and builds only its own rows (``sample_batch(..., rows=)``), so 2 ranks x batch 2 x 2 micro-batches ==
1 process x batch 4 x 2 micro-batches.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from llmcore import ModelConfig, TransformerLM
from llmcore.data import TokenDataset
from llmcore.errors import ConfigError
from llmcore.finetune import GradualUnfreeze
from llmcore.training import TrainConfig, Trainer
from llmcore.training import distributed as dist


def _train(batch_size: int, out_dir: str | None = None, unfreeze: bool = False) -> dict:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = TransformerLM(ModelConfig.from_preset("debug", vocab_size=32, max_seq_len=16))
    g = torch.Generator().manual_seed(0)
    train = TokenDataset(torch.randint(0, 32, (500,), generator=g), 8)
    val = TokenDataset(torch.randint(0, 32, (300,), generator=g), 8)
    cfg = TrainConfig(max_steps=4, batch_size=batch_size, grad_accum=2, warmup_steps=1, lr=1e-2, min_lr=1e-3,
                      eval_interval=2, eval_batches=3, progress=False, num_samples=0, device="cpu", out_dir=out_dir)
    losses, vals = [], []
    # GradualUnfreeze: one more layer group trains every step, so DDP is re-wrapped mid-run three times
    strategies = [GradualUnfreeze(every_n_steps=1)] if unfreeze else []
    trainer = Trainer(model, cfg, train, val, strategies=strategies)
    trainer.add_callback("on_step_end", lambda t, info: losses.append(info["train_loss"]))
    trainer.add_callback("on_eval", lambda t, info: vals.append(info["val_loss"]))
    trainer.fit()
    return {"losses": losses, "val": vals, "params": [p.detach().flatten()[:50].tolist() for p in model.parameters()]}


def _worker(rank: int, world: int, ports: dict[str, int], out: str) -> None:
    """Both 2-process runs, one after the other (the first Trainer creates the process group, the second finds it
    up: see test_finetune_distributed)."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1")
    results = {}
    for name, port in ports.items():  # a port per run: the first run's store may linger on its port
        os.environ["MASTER_PORT"] = str(port)
        results[name] = _train(batch_size=2, out_dir=os.path.join(out, name), unfreeze=name == "unfreeze")
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(results, f)


def _free_ports(n: int) -> list[int]:
    """``n`` distinct free ports (all bound at once, so no two are the same)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


@pytest.fixture(scope="module")
def ddp(tmp_path_factory) -> tuple[Path, list[dict]]:
    """(the output root, each rank's results) of ONE 2-process launch that runs both DDP cases, "plain" and
    "unfreeze" (GradualUnfreeze): starting two spawned interpreters costs seconds, the runs themselves less."""
    out = tmp_path_factory.mktemp("ddp")
    # spawn, not fork: the parent has just run torch ops, and a child forked from a process whose OpenMP
    # thread pool is live can deadlock (a full-suite run hung here in this test). A spawned interpreter
    # re-imports torch, a few seconds. The join has a deadline so a hang fails the test instead of CI.
    ports = dict(zip(("plain", "unfreeze"), _free_ports(2)))
    ctx = mp.start_processes(_worker, args=(2, ports, str(out)), nprocs=2, join=False, start_method="spawn")
    deadline = time.monotonic() + 240
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("the 2-process gloo runs did not finish in 240 s")
    return out, [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def test_two_process_gloo_equals_one_process(ddp):
    single = _train(batch_size=4)
    out, ranks = ddp
    ranks = [r["plain"] for r in ranks]
    for r in ranks:
        assert r["losses"] == pytest.approx(single["losses"], abs=1e-5)
        assert r["val"] == pytest.approx(single["val"], abs=1e-5)
        for a, b in zip(r["params"], single["params"]):
            assert a == pytest.approx(b, abs=1e-5)
    assert ranks[0]["params"] == ranks[1]["params"]  # DDP keeps the replicas identical
    run = out / "plain"  # only rank 0 wrote, and the checkpoint loads in a single process
    assert (run / "trainer_state" / "ckpt-000004" / "trainer_state.json").is_file()
    assert TransformerLM.from_pretrained(run).config.vocab_size == 32


def test_detect_reads_torchrun_env(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert dist.detect() == dist.DistEnv(0, 1, 0) and not dist.detect().enabled
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    env = dist.detect()
    assert (env.rank, env.world_size, env.local_rank, env.enabled, env.is_main) == (3, 4, 1, True, False)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ConfigError, match="outside WORLD_SIZE"):
        dist.detect()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(ConfigError, match="integers"):
        dist.detect()


def test_device_resolution_and_unwrap():
    env = dist.DistEnv()
    assert dist.resolve_device("cpu", env).type == "cpu"
    with pytest.raises(ConfigError, match="device='tpu'"):
        dist.resolve_device("tpu", env)
    if not torch.cuda.is_available():
        assert dist.resolve_device("auto", env).type == "cpu"
        with pytest.raises(ConfigError, match="CUDA is not available"):
            dist.resolve_device("cuda", env)
    model = torch.nn.Linear(2, 2)
    assert dist.wrap(model, env, torch.device("cpu")) is model and dist.unwrap(model) is model
    assert float(dist.all_reduce_sum(torch.tensor(2.0), env)) == 2.0


def test_gradual_unfreeze_under_two_process_ddp_equals_one_process(ddp):
    single = _train(batch_size=4, unfreeze=True)
    ranks = [r["unfreeze"] for r in ddp[1]]
    frozen_start = _train(batch_size=4)  # without the strategy the weights end elsewhere: the test can fail
    flat = [v for p in single["params"] for v in p]
    assert [v for p in frozen_start["params"] for v in p] != pytest.approx(flat, abs=1e-3)
    for r in ranks:
        assert r["losses"] == pytest.approx(single["losses"], abs=1e-5)
        for a, b in zip(r["params"], single["params"]):
            assert a == pytest.approx(b, abs=1e-5)
    assert ranks[0]["params"] == ranks[1]["params"]
