"""Checkpoints: exact resume (bit-identical on CPU), atomicity, no pickle, and the bad-input errors."""

from __future__ import annotations

import errno
import json
import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from helpers import Crash, run
from llmcore import ModelConfig, TransformerLM
from llmcore.data import TokenDataset
from llmcore.errors import CheckpointError
from llmcore.models.pretrained import read_state_dict
from llmcore.training import TrainConfig, Trainer
from llmcore.training import checkpoint as ckpt


def data(seed=0, n=600, V=32):
    g = torch.Generator().manual_seed(seed)
    return TokenDataset(torch.randint(0, V, (n,), generator=g), 8)


def make_trainer(out, max_steps=12, model=None, **kw):
    torch.manual_seed(0)
    model = model or TransformerLM(ModelConfig.from_preset("debug", vocab_size=32, max_seq_len=16, dropout=0.1))
    cfg = TrainConfig(**{**dict(max_steps=max_steps, batch_size=4, grad_accum=2, warmup_steps=2, lr=1e-2,
                                min_lr=1e-3, eval_interval=4, eval_batches=2, progress=False, num_samples=0,
                                device="cpu", out_dir=str(out), keep_last=2), **kw})
    return Trainer(model, cfg, data(0), data(1))


def test_resume_is_bit_identical(tmp_path):
    full = make_trainer(tmp_path / "a")  # dropout on: the RNG states must come back too
    ref = run(full)
    crashed = make_trainer(tmp_path / "b")
    run(crashed, crash_at=10)  # killed after step 10; the last checkpoint is step 8
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "b")] == ["ckpt-000004", "ckpt-000008"]
    resumed = make_trainer(tmp_path / "b")
    losses = run(resumed, resume=True)
    assert sorted(losses) == [9, 10, 11, 12]
    assert all(losses[s] == ref[s] for s in losses)  # exact, not approximate
    for (n, p), (_, q) in zip(full.model.named_parameters(), resumed.model.named_parameters()):
        assert torch.equal(p, q), n
    for p in full.model.parameters():
        for k, v in full.optimizer.state[p].items():
            assert torch.equal(v, resumed.optimizer.state[dict(zip(map(id, full.model.parameters()),
                                                                    resumed.model.parameters()))[id(p)]][k])
    def metrics(d):  # everything but the timings
        rows = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k not in ("tokens_per_s", "mfu")} for r in rows]

    assert metrics(tmp_path / "b") == metrics(tmp_path / "a")  # the resumed log has no duplicates


def test_killed_mid_save_resumes_from_previous(tmp_path, monkeypatch):
    ref = run(make_trainer(tmp_path / "a", max_steps=8))
    real_rename = os.rename

    def rename(src, dst):
        if str(dst).endswith("ckpt-000008"):
            raise Crash  # killed between writing the files and the rename
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    run(make_trainer(tmp_path / "b", max_steps=8))
    monkeypatch.setattr(os, "rename", real_rename)
    assert (tmp_path / "b" / "trainer_state" / "ckpt-000008.tmp").is_dir()  # the half-written one is left ...
    assert ckpt.latest_checkpoint(tmp_path / "b").name == "ckpt-000004"  # ... and ignored
    losses = run(make_trainer(tmp_path / "b", max_steps=8), resume=True)
    assert sorted(losses) == [5, 6, 7, 8] and all(losses[s] == ref[s] for s in losses)
    assert not (tmp_path / "b" / "trainer_state" / "ckpt-000008.tmp").exists()


def test_no_pickle_anywhere(tmp_path, monkeypatch):
    def forbidden(*a, **k):
        raise AssertionError("pickle / torch.save / torch.load must not be used")

    for mod, name in [(pickle, "dumps"), (pickle, "loads"), (pickle, "dump"), (pickle, "load"),
                      (torch, "save"), (torch, "load")]:
        monkeypatch.setattr(mod, name, forbidden)
    run(make_trainer(tmp_path, max_steps=8), crash_at=6)
    losses = run(make_trainer(tmp_path, max_steps=8), resume=True)
    assert sorted(losses) == [5, 6, 7, 8]
    files = {p.name for p in (tmp_path / "trainer_state" / "ckpt-000008").iterdir()}
    assert files == {"model.safetensors", "optimizer.safetensors", "trainer_state.json"}


def test_resume_without_checkpoint_is_clear(tmp_path):
    with pytest.raises(CheckpointError, match="No checkpoint to resume in .*run without --resume"):
        make_trainer(tmp_path).fit(resume=True)


def test_resume_with_other_model_config_names_field(tmp_path):
    run(make_trainer(tmp_path, max_steps=4))
    other = TransformerLM(ModelConfig.from_preset("debug", vocab_size=32, max_seq_len=16, dropout=0.1, n_layers=3))
    with pytest.raises(CheckpointError, match=r"different model config \(n_layers: 2 in checkpoint vs 3 now\)"):
        make_trainer(tmp_path, model=other).fit(resume=True)


class OtherLM(TransformerLM):
    """Another architecture with the same parameter names: its weights would load into a TransformerLM."""


def test_resume_into_another_architecture_is_refused(tmp_path):
    cfg = ModelConfig.from_preset("debug", vocab_size=32, max_seq_len=16, dropout=0.1)
    torch.manual_seed(0)
    run(make_trainer(tmp_path, max_steps=4, model=OtherLM(cfg)))
    with pytest.raises(CheckpointError, match=r"written by a OtherLM, but the model to resume is a TransformerLM"):
        make_trainer(tmp_path, max_steps=8).fit(resume=True)
    make_trainer(tmp_path, max_steps=8, model=OtherLM(cfg)).fit(resume=True)  # the same class resumes


def test_fresh_run_refuses_to_mix_with_old_checkpoints(tmp_path):
    run(make_trainer(tmp_path, max_steps=4))
    with pytest.raises(CheckpointError, match="already holds checkpoints.*--resume"):
        make_trainer(tmp_path, max_steps=4).fit()


def test_disk_full_keeps_previous_checkpoint(tmp_path, monkeypatch):
    import safetensors.torch as pretrained  # llmcore.io.save_safetensors imports save_file from here when it writes

    real = pretrained.save_file

    def save_file(tensors, filename, metadata=None):
        if "ckpt-000008" in os.path.realpath(filename):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(pretrained, "save_file", save_file)
    with pytest.raises(CheckpointError, match=r"disk full while writing checkpoint .*ckpt-000008; freed the partial checkpoint and the previous checkpoint .*ckpt-000004 is intact; free space .*rerun with --resume"):
        make_trainer(tmp_path).fit()
    monkeypatch.setattr(pretrained, "save_file", real)
    root = tmp_path / "trainer_state"
    assert sorted(p.name for p in root.iterdir()) == ["ckpt-000004"]  # partial directory removed
    losses = run(make_trainer(tmp_path), resume=True)
    assert sorted(losses) == list(range(5, 13))


ENOSPC_TEXT = "Error while serializing: I/O error: No space left on device (os error 28)"  # what safetensors says


def _fail_after_partial_write(name):
    """A safetensors ``save_file`` that writes half of ``name`` in ckpt-000008, then raises the real
    SafetensorError a full disk gives (safetensors does not raise OSError)."""
    import safetensors.torch as st
    from safetensors import SafetensorError

    real = st.save_file

    def save_file(tensors, filename, metadata=None):
        # the temporary file beside it, in a pinned directory (/proc/self/fd/N/...: realpath names it)
        if "ckpt-000008" in os.path.realpath(filename) and name in Path(filename).name:
            real(tensors, filename, metadata=metadata)
            data = Path(filename).read_bytes()
            Path(filename).write_bytes(data[: len(data) // 2])  # what a full disk leaves
            raise SafetensorError(ENOSPC_TEXT)
        return real(tensors, filename, metadata=metadata)

    return st, "save_file", save_file


def _enospc_in(attr):
    def patched(*a, **k):
        # realpath: the checkpoint is written through pinned directories, /proc/self/fd/N/... (rundir.pinned)
        if any("ckpt-000008" in os.path.realpath(str(x)) for x in a if isinstance(x, (str, os.PathLike))):
            raise OSError(errno.ENOSPC, "No space left on device")
        return getattr(ckpt, "_real_" + attr)(*a, **k)
    return ckpt, attr, patched


DISK_FULL_POINTS = {
    "model.safetensors": lambda: _fail_after_partial_write("model.safetensors"),
    "optimizer.safetensors": lambda: _fail_after_partial_write("optimizer.safetensors"),
    "trainer_state.json": lambda: _enospc_in("atomic_write_json"),
    "fsync": lambda: _enospc_in("_fsync_dir"),
}


@pytest.mark.parametrize("point", list(DISK_FULL_POINTS))
def test_disk_full_at_any_point_frees_the_partial_checkpoint(tmp_path, monkeypatch, point):
    ref = run(make_trainer(tmp_path / "a"))
    for attr in ("atomic_write_json", "_fsync_dir"):
        monkeypatch.setattr(ckpt, "_real_" + attr, getattr(ckpt, attr), raising=False)
    monkeypatch.setattr(*DISK_FULL_POINTS[point]())
    out = tmp_path / "b"
    with pytest.raises(CheckpointError) as info:
        make_trainer(out).fit()
    monkeypatch.undo()
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("disk full while writing checkpoint") and "ckpt-000008" in msg, msg
    assert "freed the partial checkpoint" in msg and "ckpt-000004 is intact" in msg and "--resume" in msg, msg
    root = out / "trainer_state"
    assert sorted(p.name for p in root.iterdir()) == ["ckpt-000004"]  # no ckpt-000008.tmp left behind
    assert not [p for p in root.rglob("*") if p.name.endswith((".tmp", ".old"))]
    losses = run(make_trainer(out), resume=True)  # resumes from the previous checkpoint, exactly
    assert sorted(losses) == list(range(5, 13)) and all(losses[s] == ref[s] for s in losses)


def test_disk_full_while_re_saving_a_step_keeps_the_old_copy(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path, max_steps=4)
    trainer.fit()
    final = tmp_path / "trainer_state" / "ckpt-000004"
    before = {p.name: p.read_bytes() for p in final.iterdir()}
    real_rename = os.rename

    def rename(src, dst):
        if str(src).endswith("ckpt-000004.tmp"):  # the old copy was moved aside; the new one cannot go in
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(CheckpointError, match="disk full while writing checkpoint .*ckpt-000004; freed the partial"):
        ckpt.save_checkpoint(tmp_path, 4, trainer.model, trainer.optimizer, trainer.param_names(),
                             ckpt.trainer_snapshot(trainer))
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "trainer_state").iterdir()) == ["ckpt-000004"]
    assert {p.name: p.read_bytes() for p in final.iterdir()} == before


def test_keep_last_and_best(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=16, keep_last=1, lr=3e-2, eval_interval=2)
    summary = trainer.fit()
    names = sorted(p.name for p in ckpt.list_checkpoints(tmp_path))
    best = f"ckpt-{summary['best_step']:06d}"
    assert names == sorted({best, "ckpt-000016"})
    top = read_state_dict(tmp_path)  # the run directory's model is the best one
    best_state = read_state_dict(tmp_path / "trainer_state" / best)
    assert all(torch.equal(top[k], best_state[k]) for k in top)


def test_prefixes_stripped_and_rng_round_trip():
    assert ckpt.strip_prefixes("module._orig_mod.blocks.0.attn.weight") == "blocks.0.attn.weight"
    assert ckpt.strip_prefixes("_orig_mod.module.lm_head.weight") == "lm_head.weight"

    class Wrapper(nn.Module):  # what torch.compile produces: the model under `_orig_mod`
        def __init__(self, m):
            super().__init__()
            self._orig_mod = m

    model = TransformerLM(ModelConfig.from_preset("debug", vocab_size=32))
    assert set(ckpt.model_tensors(Wrapper(model))) == set(ckpt.model_tensors(model))
    g = torch.Generator().manual_seed(3)
    state = ckpt.capture_rng(g)
    draws = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(3, generator=g))
    ckpt.restore_rng(state, g)
    again = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(3, generator=g))
    assert torch.equal(draws[0], again[0]) and np.array_equal(draws[1], again[1])
    assert draws[2] == again[2] and torch.equal(draws[3], again[3])


def test_checkpoint_of_an_older_version_resumes(tmp_path):
    """A checkpoint written before a ModelConfig field existed (``attention``, ``architecture``) still resumes
    exactly: missing fields take their defaults instead of reading as a different model config."""
    ref = run(make_trainer(tmp_path / "a", max_steps=8))
    run(make_trainer(tmp_path / "b", max_steps=8), crash_at=6)  # the last checkpoint is step 4
    state_file = ckpt.list_checkpoints(tmp_path / "b")[-1] / ckpt.STATE_NAME
    state = json.loads(state_file.read_text(encoding="utf-8"))
    del state["model_config"]["attention"]  # as the previous version wrote it
    state.pop("architecture", None)
    with pytest.raises(CheckpointError, match="different model config.*d_model"):  # a real difference fails
        state_file.write_text(json.dumps({**state, "model_config": {**state["model_config"], "d_model": 64}}),
                              encoding="utf-8")
        run(make_trainer(tmp_path / "b", max_steps=8), resume=True)
    state_file.write_text(json.dumps(state), encoding="utf-8")
    losses = run(make_trainer(tmp_path / "b", max_steps=8), resume=True)
    assert sorted(losses) == [5, 6, 7, 8] and all(losses[s] == ref[s] for s in losses)
