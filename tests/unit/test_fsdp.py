"""FSDP2 under a 2-process gloo group: equal to DDP and to one process, sharded checkpoints that resume exactly
and reshard (2 -> 1, 1 -> 2), clipping of the global norm, fine-tuning strategies, bf16.

One spawned launch runs every 2-process case in turn (each starts two interpreters: seconds), with a join
deadline; the one-process references run in the test process. The data are those of ``test_distributed``: the
global batch is drawn identically on every rank and each rank builds its rows, so 2 ranks x batch 2 == 1 process
x batch 4, and the runs may differ only by the order of floating-point sums.

bf16 (``dtype="bfloat16"``): FSDP computes with bf16 *copies of the weights* (``MixedPrecisionPolicy``), one process
with fp32 weights under autocast, so elementwise products with weights (norm gains) round differently, and bf16
keeps 8 bits of mantissa (a relative step of 2**-8 = 0.4% per rounded value). Measured over 6 steps: losses within
5e-4 (the test allows 5e-3), weights within 1.6e-2, as far apart as one bf16 process is from one fp32 process
(1.6e-2): AdamW turns a sign flip of a tiny gradient entry into a step of size lr (1e-2 here). So bf16 runs are
compared by loss at ~1e-3, never bitwise; fp32 runs agree to 1e-5 (measured 3e-7 losses, 3e-6 weights).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from llmcore import ModelConfig, TransformerLM
from llmcore.data import TokenDataset
from llmcore.errors import ConfigError
from llmcore.training import TrainConfig, Trainer, fsdp, lm_loss
from llmcore.training import distributed as dist

STEPS, SAVE_AT = 20, 10
BF16_TOL = 5e-3  # measured 5e-4: see the module docstring


def _model() -> TransformerLM:
    torch.manual_seed(0)
    return TransformerLM(ModelConfig.from_preset("debug", vocab_size=32, max_seq_len=16))


def _train(batch_size: int, distributed: str = "ddp", out_dir: str | Path | None = None, resume: bool = False,
           strategy: str | None = None, steps: int = STEPS, eval_interval: int = SAVE_AT, **cfg_kw) -> dict:
    """A 20-step run (checkpoints at 10 and 20 with out_dir); {"losses": {step: loss}, "val", "params"}."""
    torch.set_num_threads(1)
    from llmcore.finetune import GradualUnfreeze, LoRA

    model = _model()
    g = torch.Generator().manual_seed(0)
    train = TokenDataset(torch.randint(0, 32, (500,), generator=g), 8)
    val = TokenDataset(torch.randint(0, 32, (300,), generator=g), 8)
    cfg = TrainConfig(max_steps=steps, batch_size=batch_size, grad_accum=2, warmup_steps=2, lr=1e-2, min_lr=1e-3,
                      eval_interval=eval_interval, eval_batches=3, progress=False, num_samples=0, device="cpu",
                      out_dir=None if out_dir is None else str(out_dir), keep_last=5, distributed=distributed,
                      **cfg_kw)
    strategies = {None: [], "unfreeze": [GradualUnfreeze(every_n_steps=2)], "lora": [LoRA(rank=4, alpha=8.0)]}
    losses, vals, out = {}, [], {}
    trainer = Trainer(model, cfg, train, val, strategies=strategies[strategy])
    trainer.add_callback("on_step_end", lambda t, info: losses.__setitem__(info["step"], info["train_loss"]))
    trainer.add_callback("on_eval", lambda t, info: vals.append(info["val_loss"]))
    # under FSDP the parameters are shards: gather them (a collective) while the process group is up
    trainer.add_callback("on_train_end", lambda t, info: out.__setitem__(
        "params", {n: fsdp.full(p).detach().flatten().tolist() for n, p in model.named_parameters()}))
    trainer.fit(resume=resume)
    return {"losses": losses, "val": vals, "params": out["params"]}


def _clip_case(sharded: bool) -> dict:
    """One backward on a fixed batch, then clip_grad_norm_ to 0.05: the norm and the clipped gradients."""
    model = _model()
    if sharded:
        fsdp.shard(model, dist.detect(), torch.device("cpu"), bf16=False)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randint(0, 32, (4, 8), generator=g), torch.randint(0, 32, (4, 8), generator=g)
    lm_loss(model(x), y).backward()  # the same batch on both ranks: the averaged gradient is the full one
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 0.05)
    return {"norm": fsdp.scalar(norm), "grads": {n: fsdp.full(p.grad).flatten().tolist()
                                                 for n, p in model.named_parameters()}}


def _disk_full_case(out: Path) -> str:
    """Rank 1 runs out of disk writing its shard of the step-4 checkpoint: the error every rank raises."""
    import errno

    from llmcore.errors import CheckpointError
    from llmcore.training import sharded

    real = sharded.write_local

    def failing(directory, group, local, env, step):
        if env.rank == 1 and step == 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(directory, group, local, env, step)

    sharded.write_local = failing
    try:
        _train(2, "fsdp", out, steps=4, eval_interval=2)
    except CheckpointError as e:
        return str(e)
    finally:
        sharded.write_local = real
    return "no error"


def _copy_until(src: Path, dst: Path, step: int) -> None:
    """A copy of run ``src`` as it was after the checkpoint of ``step`` (later checkpoints dropped)."""
    shutil.copytree(src, dst)
    for c in (dst / "trainer_state").iterdir():
        if int(c.name.split("-")[1]) > step:
            shutil.rmtree(c)


def _worker(rank: int, world: int, port: int, root: str) -> None:
    import torch.distributed as tdist

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    tdist.init_process_group("gloo")  # one group for every case (each Trainer finds it and leaves it up)
    root_p = Path(root)
    res = {"fsdp": _train(2, "fsdp", root_p / "fsdp"), "ddp": _train(2, "ddp")}
    if rank == 0:
        _copy_until(root_p / "fsdp", root_p / "resume2", SAVE_AT)  # 2 ranks -> 2 ranks
        _copy_until(root_p / "single", root_p / "from1", SAVE_AT)  # 1 process -> 2 ranks
    tdist.barrier()
    res["resume2"] = _train(2, "fsdp", root_p / "resume2", resume=True)
    res["from1"] = _train(2, "fsdp", root_p / "from1", resume=True)
    res["ac"] = _train(2, "fsdp", activation_checkpointing=True, steps=4)
    res["unfreeze"] = _train(2, "fsdp", strategy="unfreeze", steps=8)
    res["lora"] = _train(2, "fsdp", strategy="lora", steps=4)
    res["bf16"] = _train(2, "fsdp", dtype="bfloat16", steps=4)
    res["clip"] = _clip_case(sharded=True)
    res["disk_full"] = _disk_full_case(root_p / "disk_full")
    (root_p / f"rank{rank}.json").write_text(json.dumps(res))
    tdist.destroy_process_group()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """The one-process reference (with checkpoints, for 1 -> 2), then ONE 2-process launch of every case."""
    root = tmp_path_factory.mktemp("fsdp")
    single = _train(4, out_dir=root / "single")
    ctx = mp.start_processes(_worker, args=(2, _free_port(), str(root)), nprocs=2, join=False, start_method="spawn")
    deadline = time.monotonic() + 300
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("the 2-process FSDP runs did not finish in 300 s")
    ranks = [json.loads((root / f"rank{r}.json").read_text()) for r in range(2)]
    return {"root": root, "single": single, "ranks": ranks, "r0": ranks[0]}


def _close(a: dict, b: dict, tol: float) -> None:
    """Run ``a`` has ``b``'s losses (step keys may be JSON strings) within ``tol``, and its weights within 10x."""
    losses = {int(k): v for k, v in a["losses"].items()}
    assert set(losses) == {int(k) for k in b["losses"]}
    for step, loss in b["losses"].items():
        assert losses[int(step)] == pytest.approx(loss, abs=tol), step
    for name, values in b["params"].items():
        assert a["params"][name] == pytest.approx(values, abs=tol * 10), name


def test_fsdp_equals_ddp_equals_one_process(runs):
    single, r0 = runs["single"], runs["r0"]
    assert len(single["losses"]) == STEPS
    _close(r0["fsdp"], single, 1e-5)  # measured: losses within 3e-7, weights within 3e-6 after 20 steps
    _close(r0["ddp"], single, 1e-5)
    assert r0["fsdp"]["val"] == pytest.approx(single["val"], abs=1e-5)
    assert runs["ranks"][0]["fsdp"]["params"] == runs["ranks"][1]["fsdp"]["params"]  # one model, gathered


def test_sharded_checkpoint_is_safetensors_and_json_only(runs):
    ckpt = runs["root"] / "fsdp" / "trainer_state" / f"ckpt-{SAVE_AT:06d}"
    names = sorted(p.name for p in ckpt.iterdir())
    assert names == ["model-rank00000-of-00002.safetensors", "model-rank00001-of-00002.safetensors",
                     "optimizer-rank00000-of-00002.safetensors", "optimizer-rank00001-of-00002.safetensors",
                     "shards.json", "trainer_state.json"]
    index = json.loads((ckpt / "shards.json").read_text())
    qkv = index["groups"]["model"]["tensors"]["blocks.0.attn.qkv_proj.weight"]
    assert qkv["shape"] == [64, 32] and [s["rows"] for s in qkv["shards"]] == [[0, 32], [32, 64]]
    from safetensors.torch import load_file

    assert load_file(str(ckpt / "model-rank00001-of-00002.safetensors"))["blocks.0.attn.qkv_proj.weight"].shape \
        == (32, 32)  # each rank wrote only its rows
    # the run directory's model (the best by validation loss) is a normal one, streamed from the shards one
    # gathered tensor at a time: from_pretrained reads it, and it holds what the best checkpoint's shards hold
    from llmcore.training.sharded import TensorFiles

    state = json.loads((runs["root"] / "fsdp" / "trainer_state" / f"ckpt-{STEPS:06d}" / "trainer_state.json")
                       .read_text())
    model = TransformerLM.from_pretrained(runs["root"] / "fsdp")
    with TensorFiles(runs["root"] / "fsdp" / "trainer_state" / state["trainer"]["best_checkpoint"], "model") as f:
        for name, p in model.named_parameters():
            assert torch.equal(p.detach(), f.read(name)), name


def test_resume_at_the_same_world_size_is_bit_identical(runs):
    full, resumed = runs["r0"]["fsdp"], runs["r0"]["resume2"]
    assert sorted(int(k) for k in resumed["losses"]) == list(range(SAVE_AT + 1, STEPS + 1))
    assert all(resumed["losses"][k] == full["losses"][k] for k in resumed["losses"])
    assert resumed["params"] == full["params"]


def test_reshard_one_to_two_and_two_to_one(runs, tmp_path):
    single, r0 = runs["single"], runs["r0"]
    tail = {"losses": {k: v for k, v in single["losses"].items() if k > SAVE_AT}, "params": single["params"]}
    _close(r0["from1"], tail, 1e-5)  # a one-process checkpoint resumed by 2 FSDP ranks
    _copy_until(runs["root"] / "fsdp", tmp_path / "to1", SAVE_AT)
    to1 = _train(4, out_dir=tmp_path / "to1", resume=True)  # the 2-rank sharded checkpoint in one process
    assert sorted(to1["losses"]) == list(range(SAVE_AT + 1, STEPS + 1))
    _close(to1, tail, 1e-5)


def test_clipping_under_fsdp_is_clipping_of_the_full_model(runs):
    full, sharded = _clip_case(sharded=False), runs["r0"]["clip"]
    assert full["norm"] > 0.05  # the clip engaged
    assert sharded["norm"] == pytest.approx(full["norm"], rel=1e-6)
    for name, g in full["grads"].items():
        assert sharded["grads"][name] == pytest.approx(g, abs=1e-8), name


def test_a_full_disk_on_one_rank_fails_the_save_on_every_rank(runs):
    for r in runs["ranks"]:
        assert r["disk_full"].startswith("disk full while writing checkpoint") and "ckpt-000004" in r["disk_full"]
        assert "ckpt-000002 is intact" in r["disk_full"] and "\n" not in r["disk_full"]
    assert sorted(p.name for p in (runs["root"] / "disk_full" / "trainer_state").iterdir()) == ["ckpt-000002"]


def test_strategies_activation_checkpointing_and_bf16_under_fsdp(runs):
    r0 = runs["r0"]
    _close(r0["ac"], _train(4, steps=4), 1e-5)  # recomputed activations: the same numbers
    _close(r0["unfreeze"], _train(4, strategy="unfreeze", steps=8), 1e-5)  # optimizer re-built 3 times
    _close(r0["lora"], _train(4, strategy="lora", steps=4), 1e-5)  # frozen base, random A from rank 0
    bf16 = _train(4, dtype="bfloat16", steps=4)
    for step, loss in bf16["losses"].items():
        assert r0["bf16"]["losses"][str(step)] == pytest.approx(loss, abs=BF16_TOL), step


def test_mode_checks():
    one, two = dist.DistEnv(), dist.DistEnv(0, 2, 0)
    assert dist.check_mode("fsdp", one) == "none" and dist.check_mode("fsdp", two) == "fsdp"
    with pytest.raises(ConfigError, match="unsynchronised"):
        dist.check_mode("none", two)
    with pytest.raises(ConfigError, match="distributed"):
        TrainConfig(distributed="zero3")
    from llmcore.models import LSTMLM

    lstm = LSTMLM(ModelConfig.from_preset("debug", vocab_size=32))
    trainer = Trainer(lstm, TrainConfig(activation_checkpointing=True, max_steps=1, progress=False, num_samples=0,
                                        device="cpu"), TokenDataset(torch.randint(0, 32, (100,)), 8))
    with pytest.raises(ConfigError, match="activation_checkpointing"):
        trainer.fit()


DRIVER = '''
import json, os, signal, sys
from pathlib import Path
import torch
from llmcore import ModelConfig, TransformerLM
from llmcore.data import TokenDataset
from llmcore.training import TrainConfig, Trainer, fsdp
from llmcore.training import distributed as dist

out, kill_at, marker = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
torch.set_num_threads(1)
torch.manual_seed(0)
model = TransformerLM(ModelConfig.from_preset("debug", vocab_size=32, max_seq_len=16))
g = torch.Generator().manual_seed(0)
train = TokenDataset(torch.randint(0, 32, (500,), generator=g), 8)
cfg = TrainConfig(max_steps=16, batch_size=2, grad_accum=2, warmup_steps=2, lr=1e-2, eval_interval=4,
                  progress=False, num_samples=0, device="cpu", out_dir=str(out), distributed="fsdp")
trainer = Trainer(model, cfg, train)


def kill(t, info):  # rank 1 dies mid-run, once: the restarted job must not die again
    if info["step"] == kill_at and t.env.rank == 1 and not marker.exists():
        marker.write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)


def final(t, info):
    params = {n: fsdp.full(p).detach().flatten().tolist() for n, p in model.named_parameters()}
    if t.env.is_main:
        (out / "final.json").write_text(json.dumps({"params": params, "restarts": dist.restart_count()}))


trainer.add_callback("on_step_end", kill)
trainer.add_callback("on_train_end", final)
trainer.fit(resume=dist.restart_count() > 0)
'''


def _torchrun(tmp_path: Path, name: str, kill_at: int) -> dict:
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    src = Path(__file__).resolve().parents[2] / "src"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "--max-restarts", "1", "--monitor-interval", "0.5", str(script), str(tmp_path / name), str(kill_at),
           str(tmp_path / f"{name}.killed")]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own process group: a hang is killed with its workers
    try:
        _, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        pytest.fail(f"torchrun ({name}) did not finish in 300 s: {err[-2000:]}")
    assert proc.returncode == 0, err[-3000:]
    return json.loads((tmp_path / name / "final.json").read_text())


@pytest.mark.slow
def test_rank_killed_under_torchrun_max_restarts_recovers_the_same_weights(tmp_path):
    plain = _torchrun(tmp_path, "plain", kill_at=0)  # step 0 never ends: nobody dies
    killed = _torchrun(tmp_path, "killed", kill_at=10)  # after the step-8 checkpoint, before step 12's
    assert (tmp_path / "killed.killed").is_file() and not (tmp_path / "plain.killed").exists()
    assert killed["restarts"] == 1 and plain["restarts"] == 0
    assert killed["params"] == plain["params"]  # resumed from ckpt-000008: bit-identical, not merely close


def test_a_damaged_shard_index_is_refused_in_one_line(runs, tmp_path):
    from llmcore.errors import CheckpointError
    from llmcore.training.sharded import TensorFiles

    src = runs["root"] / "fsdp" / "trainer_state" / f"ckpt-{SAVE_AT:06d}"
    cases = {
        "outside": lambda ix: ix["groups"]["model"]["files"].__setitem__(1, "../../../outside.safetensors"),
        "do not continue": lambda ix: ix["groups"]["model"]["tensors"]["lm_head.weight"]["shards"][1]
        .__setitem__("rows", [20, 32]),
        "dtype": lambda ix: ix["groups"]["model"]["tensors"]["lm_head.weight"].__setitem__("dtype", "object"),
        "the index says": lambda ix: ix["groups"]["model"]["tensors"]["lm_head.weight"].__setitem__("shape", [33, 32]),
    }
    for i, (message, damage) in enumerate(cases.items()):
        ckpt = tmp_path / f"ckpt-{i:06d}"
        shutil.copytree(src, ckpt)
        index = json.loads((ckpt / "shards.json").read_text())
        damage(index)
        if message == "the index says":  # a consistent index that lies about the rows the files hold
            index["groups"]["model"]["tensors"]["lm_head.weight"]["shards"][1]["rows"] = [16, 33]
        (ckpt / "shards.json").write_text(json.dumps(index))
        with pytest.raises(CheckpointError, match=message) as e:
            with TensorFiles(ckpt, "model") as f:
                f.read("lm_head.weight")
        assert "\n" not in str(e.value)


def _compile_worker(rank: int, world: int, port: int, root: str) -> None:
    import torch.distributed as tdist

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    tdist.init_process_group("gloo")
    out = _train(2, "fsdp", compile=True, steps=3)
    (Path(root) / f"compile{rank}.json").write_text(json.dumps(out))
    tdist.destroy_process_group()


@pytest.mark.slow
def test_torch_compile_under_fsdp_equals_eager_one_process(tmp_path):
    ctx = mp.start_processes(_compile_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + 600
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("the compiled 2-process FSDP run did not finish in 600 s")
    compiled = json.loads((tmp_path / "compile0.json").read_text())
    _close(compiled, _train(4, steps=3), 1e-5)


def test_llmcore_train_resumes_by_itself_after_a_torchrun_restart(tmp_path, monkeypatch):
    """torchrun --max-restarts re-runs the same command line: without --resume, the restarted run continues the
    newest checkpoint (TORCHELASTIC_RESTART_COUNT > 0) instead of refusing the directory's checkpoints."""
    from llmcore.errors import CheckpointError
    from llmcore.training.run import RunConfig, train

    text = tmp_path / "text.txt"
    text.write_text("the quick brown fox jumps over the lazy dog\n" * 40)

    def run(steps: int) -> dict:
        return train(RunConfig(data=[str(text)], preset="debug", out_dir=str(tmp_path / "run"),
                               train={"max_steps": steps, "eval_interval": 2, "eval_batches": 1, "batch_size": 2, "num_samples": 0,
                                      "progress": False, "device": "cpu"}, model={"max_seq_len": 16}))

    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT", raising=False)
    assert run(2)["steps"] == 2
    with pytest.raises(CheckpointError, match="--resume"):  # a plain second start is refused, as before
        run(4)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert run(4)["steps"] == 4  # steps 3 and 4 only: it resumed from ckpt-000002
    assert dist.restart_count() == 1
