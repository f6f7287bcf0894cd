"""Issue 16, items 3 and 4: never overwrite what is not llmcore's, never write through a symlink, one writer.

Each refusal: exit status 2, exactly one stderr line, no traceback, and the user's files byte-identical.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from llmcore import ModelConfig, TransformerLM
from llmcore.cli import main
from llmcore.errors import CheckpointError
from llmcore.tokenizer import ByteTokenizer
from llmcore.training.run import RunConfig, train

LLAMA_SHAPED = dict(max_seq_len=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, pos_encoding="rope",
                    norm="rmsnorm", activation="swiglu", bias=False, tie_embeddings=False)
MARKER_NAME, LOCK_NAME = ".llmcore-run", ".llmcore-lock"  # (literals: each test also runs against older code)
TEXT = "To be, or not to be, that is the question.\n" * 40
TRAIN = ["--preset", "debug", "--set", "max_seq_len=16", "--batch-size", "2", "--eval-interval", "2",
         "--device", "cpu", "--no-progress", "--set", "num_samples=0"]


def snapshot(root: Path) -> dict[str, bytes | str]:
    """Every entry under ``root`` (links not followed): file bytes, link targets, directories."""
    out: dict[str, bytes | str] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = ("link:" + os.readlink(p)) if p.is_symlink() else ("dir" if p.is_dir() else p.read_bytes())
    return out


def one_line_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert "Traceback" not in err and err.startswith("llmcore "), err
    for n in needles:
        assert n in err, err
    return err


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    f = tmp_path / "corpus.txt"
    f.write_text(TEXT, encoding="utf-8")
    return f


def user_dir(root: Path) -> Path:
    """A directory of the user's own files with the names a run writes."""
    d = root / "mine"
    (d / "data").mkdir(parents=True)
    (d / "tokenizer").mkdir()
    (d / "config.json").write_text('{"my": "config"}\n')
    (d / "data" / "train.bin").write_bytes(b"\x00\x01precious")
    (d / "tokenizer" / "tokenizer.json").write_text('{"mine": true}\n')
    (d / "metrics.jsonl").write_text('{"step": 999, "mine": 1}\n{"step": 1000}\n')
    (d / "meta.json").write_text("{}\n")
    return d


def small_run(corpus: Path, out: Path, steps: int = 2, resume: bool = False) -> dict:
    return train(RunConfig(data=[str(corpus)], preset="debug", model={"max_seq_len": 16},
                           train={"max_steps": steps, "batch_size": 2, "eval_interval": 2, "device": "cpu",
                                  "progress": False, "num_samples": 0}, out_dir=str(out), resume=resume))


# ---------------------------------------------------------------------------------------------- ownership
@pytest.mark.parametrize("command", ["train", "prepare", "sweep"])
def test_commands_refuse_a_directory_of_user_files(tmp_path, corpus, capsys, command):
    d = user_dir(tmp_path)
    before = snapshot(d)
    if command == "train":
        argv = ["train", "--data", str(corpus), *TRAIN, "--max-steps", "2", "--out", str(d)]
    elif command == "prepare":
        argv = ["prepare", "--data", str(corpus), "--out", str(d)]
    else:
        argv = ["sweep", "--grid", "lr=1e-3", "--data", str(corpus), *TRAIN, "--max-steps", "2", "--out", str(d)]
    assert main(argv) == 2
    one_line_error(capsys, str(d), "not empty", MARKER_NAME)
    assert snapshot(d) == before


def test_fit_refuses_a_directory_of_user_files(tmp_path):
    from llmcore.data import TokenDataset
    from llmcore.training import Trainer

    d = user_dir(tmp_path)
    before = snapshot(d)
    model = TransformerLM(ModelConfig.from_preset("debug", vocab_size=32, max_seq_len=16))
    trainer = Trainer(model, {"max_steps": 2, "batch_size": 2, "progress": False, "num_samples": 0,
                              "device": "cpu", "out_dir": str(d)}, TokenDataset(torch.arange(200) % 32, 8))
    with pytest.raises(CheckpointError, match="not empty"):
        trainer.fit()
    assert snapshot(d) == before


def test_merge_refuses_a_directory_of_user_files(tmp_path, capsys):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    d = user_dir(tmp_path)
    before = snapshot(d)
    assert main(["merge", "--adapter", str(adapter), "--out", str(d)]) == 2
    one_line_error(capsys, "not empty", MARKER_NAME)
    assert snapshot(d) == before


def test_new_run_is_marked_and_an_old_unmarked_run_still_resumes(tmp_path, corpus):
    out = tmp_path / "run"
    small_run(corpus, out)
    marker = json.loads((out / MARKER_NAME).read_text())
    assert marker["format_version"] == 1 and marker["created_by"] == "llmcore train"
    (out / MARKER_NAME).unlink()  # the layout an earlier llmcore wrote: config.json + trainer_state/ + metrics
    (out / LOCK_NAME).unlink()
    summary = small_run(corpus, out, steps=4, resume=True)
    assert summary["steps"] == 4
    assert (out / MARKER_NAME).is_file()  # recognised as llmcore's and marked


def test_prepare_into_its_own_earlier_output(tmp_path, corpus, capsys):
    out = tmp_path / "prep"
    assert main(["prepare", "--data", str(corpus), "--out", str(out)]) == 0
    (out / MARKER_NAME).unlink()  # written by an earlier llmcore
    assert main(["prepare", "--data", str(corpus), "--out", str(out)]) == 0
    assert (out / MARKER_NAME).is_file()


# ---------------------------------------------------------------------------------------------- symlinks
@pytest.mark.parametrize("name", ["metrics.jsonl", "samples.txt", "config.json", "trainer_state", "data"])
def test_resume_refuses_a_symlink_inside_the_run_directory(tmp_path, corpus, capsys, name):
    out = tmp_path / "run"
    small_run(corpus, out)
    (out / "samples.txt").write_text("old samples\n")
    victim = tmp_path / "victim"
    os.rename(out / name, victim)  # the file (or directory) the link points at: it must survive
    os.symlink(victim, out / name)
    before, run_before = snapshot(tmp_path / "victim") if victim.is_dir() else victim.read_bytes(), snapshot(out)
    assert main(["train", "--data", str(corpus), *TRAIN, "--max-steps", "4", "--out", str(out), "--resume"]) == 2
    one_line_error(capsys, "symbolic link", name)
    assert (snapshot(victim) if victim.is_dir() else victim.read_bytes()) == before
    assert snapshot(out) == run_before


def test_writers_never_follow_a_link_planted_during_the_run(tmp_path):
    from llmcore.training.callbacks import MetricsLogger

    victim = tmp_path / "victim.txt"
    victim.write_text("secret\n")
    os.symlink(victim, tmp_path / "metrics.jsonl")
    class Main:  # the logger's view of a trainer: rank 0
        env = type("Env", (), {"is_main": True})()

    with pytest.raises(CheckpointError, match="symbolic link"):
        MetricsLogger(tmp_path / "metrics.jsonl")._write(Main(), {"step": 1})
    assert victim.read_text() == "secret\n"


def _swap_for_link(out: Path, name: str, victim: Path) -> dict[str, bytes | str] | bytes:
    """Replace ``OUT/name`` by a link to ``victim`` (holding what was there); returns the victim's contents."""
    os.rename(out / name, victim)
    os.symlink(victim, out / name)
    return snapshot(victim) if victim.is_dir() else victim.read_bytes()


@pytest.mark.parametrize("name", ["trainer_state", "trainer_state/ckpt-000002", "tokenizer", "model.safetensors"])
def test_a_link_swapped_in_between_checkpoints_is_refused_not_followed(tmp_path, name):
    from llmcore.data import TokenDataset
    from llmcore.training import TrainConfig, Trainer

    torch.manual_seed(0)
    out, victim = tmp_path / "run", tmp_path / "victim"
    model = TransformerLM(ModelConfig.from_preset("debug", vocab_size=256, max_seq_len=16))
    cfg = TrainConfig(max_steps=6, batch_size=2, warmup_steps=1, eval_interval=2, eval_batches=1, progress=False,
                      num_samples=0, device="cpu", out_dir=str(out), keep_last=1)
    data = TokenDataset(torch.randint(0, 256, (400,)), 16)
    trainer = Trainer(model, cfg, data, data, tokenizer=ByteTokenizer())
    swapped = {}
    trainer.add_callback("on_step_end", lambda t, info: swapped.setdefault("before", _swap_for_link(
        out, name, victim)) if info["step"] == 3 else None)  # after the checkpoint of step 2, before step 4's
    with pytest.raises(CheckpointError, match="symbolic link") as info:
        trainer.fit()
    assert "\n" not in str(info.value) and name.split("/")[-1] in str(info.value), info.value
    before = swapped["before"]
    # nothing was written into (or deleted from) what the link points at: it is as it was at step 3
    assert (snapshot(victim) if victim.is_dir() else victim.read_bytes()) == before
    if victim.is_dir():
        assert not any(p.name.startswith("ckpt-000004") for p in victim.rglob("*")), snapshot(victim)
    assert (out / name).is_symlink()  # left for the user to look at; the run stopped at the save


@pytest.mark.parametrize("name", ["trainer_state", "trainer_state/ckpt-000004.tmp"])
def test_a_link_swapped_in_during_the_save_itself_is_not_written_through(tmp_path, monkeypatch, name):
    """The race the per-save scan leaves open: between the scan and the writes, a directory of the checkpoint
    path is moved aside and replaced by a link to the user's other files. The checkpoint is written through
    pinned directories (rundir.pinned), so its files land in the directory that was moved, never in the
    link's target."""
    import llmcore.training.checkpoint as ckpt
    from llmcore.data import TokenDataset
    from llmcore.training import TrainConfig, Trainer

    torch.manual_seed(0)
    out, victim = tmp_path / "run", tmp_path / "victim"
    (victim / "ckpt-000004.tmp").mkdir(parents=True)  # what the writes would reach through either link
    for d in (victim, victim / "ckpt-000004.tmp"):
        (d / "model.safetensors").write_bytes(b"the user's own model")
        (d / "trainer_state.json").write_text('{"mine": true}\n')
    before = snapshot(victim)
    real, swapped = ckpt.save_safetensors, []

    def save_then_swap(state, path, **kwargs):
        if "ckpt-000004" in os.path.realpath(path) and not swapped:  # the first file of step 4's checkpoint
            os.rename(out / name, tmp_path / "moved")
            os.symlink(victim if name == "trainer_state" else victim / "ckpt-000004.tmp", out / name)
            swapped.append(name)
        return real(state, path, **kwargs)

    monkeypatch.setattr(ckpt, "save_safetensors", save_then_swap)
    model = TransformerLM(ModelConfig.from_preset("debug", vocab_size=256, max_seq_len=16))
    cfg = TrainConfig(max_steps=6, batch_size=2, warmup_steps=1, eval_interval=2, eval_batches=1, progress=False,
                      num_samples=0, device="cpu", out_dir=str(out), keep_last=1)
    data = TokenDataset(torch.randint(0, 256, (400,)), 16)
    with pytest.raises(CheckpointError, match="symbolic link"):  # the next save's scan finds the link
        Trainer(model, cfg, data, data, tokenizer=ByteTokenizer()).fit()
    assert swapped and snapshot(victim) == before  # nothing written into, or deleted from, the link's target
    assert list((tmp_path / "moved").rglob("model.safetensors"))  # the checkpoint went where it was pinned


# ---------------------------------------------------------------------------------------------- convert
def _model_dir(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = TransformerLM(ModelConfig(**{**LLAMA_SHAPED, "vocab_size": 256}))
    return model.save_pretrained(tmp_path / "src", tokenizer=ByteTokenizer())


def test_convert_refuses_an_existing_directory_but_rewrites_its_own_output(tmp_path, capsys):
    src = _model_dir(tmp_path)
    d = user_dir(tmp_path)
    before = snapshot(d)
    assert main(["convert", str(src), str(d), "--to", "hf", "--no-tokenizer"]) == 2
    one_line_error(capsys, "DST", "not empty")
    assert snapshot(d) == before
    dst = tmp_path / "hf"
    assert main(["convert", str(src), str(dst), "--to", "hf", "--no-tokenizer"]) == 0
    assert main(["convert", str(src), str(dst), "--to", "hf", "--no-tokenizer"]) == 0  # its own output: fine


def test_convert_does_not_copy_symlinks_from_src(tmp_path, capsys):
    from llmcore.tokenizer import SentencePieceTokenizer

    corpus = Path(__file__).resolve().parents[1] / "fixtures" / "en_zh_small.txt"
    lines = [line for line in corpus.read_text(encoding="utf-8").splitlines() if line.isascii()]
    tok = SentencePieceTokenizer.train(lines, 400)
    torch.manual_seed(0)
    model = TransformerLM(ModelConfig(**{**LLAMA_SHAPED, "vocab_size": 400}))
    src = model.save_pretrained(tmp_path / "src", tokenizer=tok)
    secret = tmp_path / "secret.txt"
    secret.write_text("API_KEY=hunter2\n")
    os.symlink(secret, src / "tokenizer" / "notes.txt")
    assert main(["convert", str(src), str(tmp_path / "hf"), "--to", "hf"]) == 0
    copied = b"".join(p.read_bytes() for p in (tmp_path / "hf").rglob("*") if p.is_file())
    assert b"hunter2" not in copied and not (tmp_path / "hf" / "tokenizer" / "notes.txt").exists()
    assert "skipped the symbolic link" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- the lock
def test_second_writer_is_refused_and_a_killed_writer_never_blocks_resume(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    import llmcore

    env = {**os.environ, "PYTHONPATH": str(Path(llmcore.__file__).resolve().parents[1])}  # the llmcore under test
    first = subprocess.Popen([sys.executable, "-m", "llmcore", "train", "--data", str(corpus), *TRAIN,
                              "--max-steps", "1000000", "--out", str(out)], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not list((out / "trainer_state").glob("ckpt-[0-9]*[0-9]")) and time.time() < deadline:
            assert first.poll() is None, "the first writer exited"
            time.sleep(0.2)
        assert list((out / "trainer_state").glob("ckpt-*")), "no checkpoint within 120 s"
        # (--max-steps bounded: before the lock this second writer trained, and the test must end even then)
        assert main(["train", "--data", str(corpus), *TRAIN, "--max-steps", "40", "--out", str(out),
                     "--resume"]) == 2
        one_line_error(capsys, "in use by process", str(first.pid))
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    from llmcore.training import checkpoint as ckpt

    step = ckpt.checkpoint_step(ckpt.latest_checkpoint(out))
    summary = small_run(corpus, out, steps=step + 2, resume=True)  # the stale lock file does not block
    assert summary["steps"] == step + 2
