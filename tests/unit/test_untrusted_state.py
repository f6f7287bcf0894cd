"""Issue 16, state files: a resume trusts nothing it reads back from a run directory.

``trainer_state.json``, ``optimizer.safetensors``, the prepared data's ``meta.json`` and the tokenizer's settings
are checked against their schemas before the resume writes, prunes or restores anything. Each mistake is one
:class:`LLMCoreError` line naming the file, the field and what was expected; through ``llmcore train --resume``
it is exit status 2, one stderr line, no traceback, and the run directory byte-for-byte as it was. A checkpoint
records the tokenizer's fingerprint, so a resume with another alphabet of the same size is refused too.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers import run
from llmcore import ModelConfig, TransformerLM
from llmcore.cli import main
from llmcore.data import TokenDataset
from llmcore.errors import CheckpointError, DataError, TokenizerError
from llmcore.finetune import DiscriminativeLR, GradualUnfreeze
from llmcore.tokenizer import CharTokenizer, load_tokenizer
from llmcore.training import TrainConfig, Trainer
from llmcore.training import checkpoint as ckpt

ALPHABET = "abcdefghijklmnopqrstuvwxyz .,;!?"  # 32 characters: vocab_size stays the same when permuted


def data(seed=0, n=400, V=32):
    g = torch.Generator().manual_seed(seed)
    return TokenDataset(torch.randint(0, V, (n,), generator=g), 8)


def make_trainer(out, max_steps=8, tokenizer=None, strategies=()):
    torch.manual_seed(0)
    model = TransformerLM(ModelConfig.from_preset("debug", vocab_size=tokenizer.vocab_size if tokenizer else 32,
                                                  max_seq_len=16, dropout=0.1))
    cfg = TrainConfig(max_steps=max_steps, batch_size=2, warmup_steps=1, lr=1e-2, eval_interval=4, eval_batches=1,
                      progress=False, num_samples=0, device="cpu", out_dir=str(out), keep_last=2)
    return Trainer(model, cfg, data(0), data(1), tokenizer=tokenizer, strategies=strategies)


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` with its bytes (what "left as it was" is compared with)."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run of 8 steps with checkpoints at 4 and 8 (built once; each test edits a copy)."""
    out = tmp_path_factory.mktemp("trained") / "run"
    make_trainer(out, tokenizer=CharTokenizer(ALPHABET)).fit()
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["ckpt-000004", "ckpt-000008"]
    return out


@pytest.fixture
def run_dir(trained, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    return out


def state_file(out: Path) -> Path:
    return out / "trainer_state" / "ckpt-000008" / ckpt.STATE_NAME


def edit_state(out: Path, change) -> None:
    f = state_file(out)
    state = json.loads(f.read_text(encoding="utf-8"))
    f.write_text(json.dumps(change(state)), encoding="utf-8")


def one_line(e: BaseException) -> str:
    text = str(e)
    assert "\n" not in text, text
    return text


def _set(path: str, value):
    """A change that sets the dotted ``path`` of the state (``rng.numpy.2``) to ``value``."""
    def change(state):
        *parents, last = path.split(".")
        node = state
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
        return state
    return change


def _drop(key: str):
    def change(state):
        del state[key]
        return state
    return change


BAD_STATES = {
    # name: (change to trainer_state.json, the field the error must name)
    "trainer as a list": (_set("trainer", []), "'trainer'"),
    "trainer step negative": (_set("trainer.step", -1_000_000), "'trainer.step'"),
    "top step negative": (_set("step", -1_000_000), "'step'"),
    "step as a string": (_set("step", "8"), "'step'"),
    "trainer step as a string": (_set("trainer.step", "8"), "'trainer.step'"),
    "trainer step differs": (_set("trainer.step", 0), "'trainer.step'"),
    "tokens_seen missing": (lambda s: {**s, "trainer": {k: v for k, v in s["trainer"].items() if k != "tokens_seen"}},
                            "'trainer.tokens_seen' is missing"),
    "best_checkpoint a path": (_set("trainer.best_checkpoint", "../../etc"), "'trainer.best_checkpoint'"),
    "best_val_loss a string": (_set("trainer.best_val_loss", "low"), "'trainer.best_val_loss'"),
    "empty object": (lambda s: {}, "'step' is missing"),
    "no rng": (_drop("rng"), "'rng' is missing"),
    "rng a list": (_set("rng", []), "'rng'"),
    "torch rng too short": (lambda s: _set("rng.torch", s["rng"]["torch"][:100])(s), "'rng.torch'"),
    "torch rng not bytes": (lambda s: _set("rng.torch", [999] * len(s["rng"]["torch"]))(s), "'rng.torch'"),
    "data rng too long": (lambda s: _set("rng.data", s["rng"]["data"] * 2)(s), "'rng.data'"),
    "numpy position out of range": (_set("rng.numpy.2", 10_000), "'rng.numpy[2]'"),
    "numpy key too short": (_set("rng.numpy.1", [1, 2, 3]), "'rng.numpy[1]'"),
    "python state truncated": (_set("rng.python", [3]), "'rng.python'"),
    "python version": (_set("rng.python.0", 99), "'rng.python[0]'"),
    "no optimizer": (_drop("optimizer"), "'optimizer' is missing"),
    "optimizer groups not a list": (_set("optimizer.param_groups", {}), "'optimizer.param_groups'"),
    "format_version 99": (_set("format_version", 99), "'format_version'"),
    "trainable a string": (_set("trainable", "all"), "'trainable'"),
    "tokenizer hash not hex": (_set("tokenizer_sha256", "x"), "'tokenizer_sha256'"),
}


@pytest.mark.parametrize("case", list(BAD_STATES))
def test_malformed_trainer_state_is_one_line_and_changes_nothing(run_dir, case):
    change, field = BAD_STATES[case]
    edit_state(run_dir, change)
    before = snapshot(run_dir)
    with pytest.raises(CheckpointError) as info:
        make_trainer(run_dir, max_steps=12, tokenizer=CharTokenizer(ALPHABET)).fit(resume=True)
    msg = one_line(info.value)
    assert f"field {field}" in msg and str(state_file(run_dir)) in msg and "expected" in msg, msg
    assert snapshot(run_dir) == before  # nothing pruned, nothing rewritten


def test_optimizer_tensor_of_the_wrong_shape(run_dir):
    f = run_dir / "trainer_state" / "ckpt-000008" / ckpt.OPTIM_NAME
    tensors = load_file(str(f))
    key = next(k for k in tensors if k.endswith(".exp_avg") and tensors[k].dim() == 2)
    tensors[key] = tensors[key][:, :3].contiguous()
    save_file(tensors, str(f))
    before = snapshot(run_dir)
    with pytest.raises(CheckpointError) as info:
        make_trainer(run_dir, max_steps=12, tokenizer=CharTokenizer(ALPHABET)).fit(resume=True)
    msg = one_line(info.value)
    assert key in msg and "expected shape" in msg, msg
    assert snapshot(run_dir) == before


def test_a_valid_checkpoint_still_resumes_exactly(tmp_path):
    """The schema accepts what the Trainer writes, and old checkpoints without the new keys."""
    ref = run(make_trainer(tmp_path / "ref", max_steps=12, tokenizer=CharTokenizer(ALPHABET)))
    run_dir = tmp_path / "run"
    run(make_trainer(run_dir, max_steps=12, tokenizer=CharTokenizer(ALPHABET)), crash_at=10)  # last: step 8
    edit_state(run_dir, lambda s: {k: v for k, v in s.items() if k not in ("format_version", "tokenizer_sha256")})
    losses = run(make_trainer(run_dir, max_steps=12, tokenizer=CharTokenizer(ALPHABET)), resume=True)
    assert sorted(losses) == [9, 10, 11, 12] and all(losses[s] == ref[s] for s in losses)


# ------------------------------------------------------------------------------------------------ strategies
def unfreezing():
    """GradualUnfreeze (a state: how many of the debug model's layer groups train) and DiscriminativeLR (none)."""
    return [GradualUnfreeze(every_n_steps=3), DiscriminativeLR(factor=2.0)]


@pytest.fixture(scope="module")
def unfrozen(tmp_path_factory):
    out = tmp_path_factory.mktemp("unfrozen") / "run"
    make_trainer(out, tokenizer=CharTokenizer(ALPHABET), strategies=unfreezing()).fit()
    state = json.loads(state_file(out).read_text(encoding="utf-8"))
    assert state["strategies"] == [{"n_unfrozen": 3}, None]  # 1 + 7 // 3 groups train at the last step
    return out


BAD_STRATEGY_STATES = {
    # name: (change to trainer_state.json, what the error must say)
    "n_unfrozen beyond the groups": (_set("strategies.0.n_unfrozen", 10**6), "'n_unfrozen' is 1000000, expected an "
                                     "integer in [1, "),
    "n_unfrozen zero": (_set("strategies.0.n_unfrozen", 0), "'n_unfrozen' is 0"),
    "n_unfrozen negative": (_set("strategies.0.n_unfrozen", -3), "'n_unfrozen' is -3"),
    "n_unfrozen a string": (_set("strategies.0.n_unfrozen", "3"), "'n_unfrozen' is '3'"),
    "n_unfrozen a bool": (_set("strategies.0.n_unfrozen", True), "'n_unfrozen' is True"),
    "n_unfrozen a float": (_set("strategies.0.n_unfrozen", 2.5), "'n_unfrozen' is 2.5"),
    "n_unfrozen missing": (_set("strategies.0", {}), "expected {'n_unfrozen': N}"),
    "unknown key": (_set("strategies.0", {"n_unfrozen": 2, "exec": "x"}), "expected {'n_unfrozen': N}"),
    "a state for a stateless strategy": (_set("strategies.1", {"n_unfrozen": 2}),
                                         "'strategies[1]' holds a state, but DiscriminativeLR keeps none"),
    "one state too many": (lambda s: _set("strategies", [*s["strategies"], None])(s), "holds 3 states, but this run "
                           "has 2 strategies (GradualUnfreeze, DiscriminativeLR)"),
    "no states": (_set("strategies", []), "holds 0 states"),
    "trainable names an unknown parameter": (lambda s: _set("trainable", [*s["trainable"], "blocks.99.w"])(s),
                                             "field 'trainable' names 1 parameter(s) this model does not have "
                                             "(blocks.99.w)"),
}


@pytest.mark.parametrize("case", list(BAD_STRATEGY_STATES))
def test_tampered_strategy_state_is_refused(unfrozen, tmp_path, case):
    change, expected = BAD_STRATEGY_STATES[case]
    out = tmp_path / "run"
    shutil.copytree(unfrozen, out)
    edit_state(out, change)
    before = snapshot(out)
    with pytest.raises(CheckpointError) as info:
        make_trainer(out, max_steps=12, tokenizer=CharTokenizer(ALPHABET), strategies=unfreezing()).fit(resume=True)
    msg = one_line(info.value)
    assert expected in msg and str(state_file(out)) in msg, msg
    assert snapshot(out) == before


def test_intact_strategy_state_resumes_and_load_state_dict_checks_too(unfrozen, tmp_path, tiny_config):
    out = tmp_path / "run"
    shutil.copytree(unfrozen, out)
    trainer = make_trainer(out, max_steps=10, tokenizer=CharTokenizer(ALPHABET), strategies=unfreezing())
    assert trainer.fit(resume=True)["steps"] == 10 and trainer.strategies[0].n_unfrozen == 4
    s = GradualUnfreeze(every_n_steps=2)  # the strategy refuses a bad state on its own (no silent clamping)
    s.setup(TransformerLM(tiny_config))
    with pytest.raises(CheckpointError, match=r"expected an integer in \[1, 4\]"):
        s.load_state_dict({"n_unfrozen": 7})
    s.load_state_dict({"n_unfrozen": 3})
    assert s.trainable_groups() == ["blocks.0", "blocks.1", "head"]


# ------------------------------------------------------------------------------------------------ tokenizer
def test_resume_with_another_alphabet_of_the_same_size_is_refused(run_dir):
    other = CharTokenizer(ALPHABET[::-1])  # the same 32 characters, other ids
    assert other.vocab_size == CharTokenizer(ALPHABET).vocab_size
    assert other.encode("abc") != CharTokenizer(ALPHABET).encode("abc")
    before = snapshot(run_dir)
    with pytest.raises(CheckpointError, match="trained with another tokenizer") as info:
        make_trainer(run_dir, max_steps=12, tokenizer=other).fit(resume=True)
    one_line(info.value)
    assert snapshot(run_dir) == before
    make_trainer(run_dir, max_steps=12, tokenizer=CharTokenizer(ALPHABET)).fit(resume=True)  # same: ok


def test_fingerprint_is_that_of_the_saved_files(tmp_path):
    a, b = CharTokenizer(ALPHABET), CharTokenizer(ALPHABET[::-1])
    assert ckpt.tokenizer_fingerprint(a) == ckpt.tokenizer_fingerprint(load_tokenizer(a.save(tmp_path / "t")))
    assert ckpt.tokenizer_fingerprint(a) != ckpt.tokenizer_fingerprint(b)
    assert ckpt.tokenizer_fingerprint(None) is None


def test_tokenizer_format_version_is_checked(tmp_path):
    d = CharTokenizer(ALPHABET).save(tmp_path / "tok")
    settings = json.loads((d / "llmcore_tokenizer.json").read_text(encoding="utf-8"))
    (d / "llmcore_tokenizer.json").write_text(json.dumps({**settings, "format_version": 99}), encoding="utf-8")
    with pytest.raises(TokenizerError, match=r"field 'format_version' is 99, expected 1") as info:
        load_tokenizer(d)
    one_line(info.value)


# ------------------------------------------------------------------------------------------------ meta.json
@pytest.fixture
def prepared(tmp_path):
    from llmcore.data import prepare

    out = tmp_path / "data"
    prepare("to be or not to be, that is the question. " * 30, CharTokenizer(ALPHABET), out)
    return out


BAD_META = {
    "dtype float64": ({"dtype": "float64"}, "field 'dtype' is 'float64', expected one of uint16, uint32"),
    "dtype bool": ({"dtype": "bool"}, "field 'dtype'"),
    "format_version 99": ({"format_version": 99}, "field 'format_version' is 99, expected one of 1, 2"),
    "vocab_size a string": ({"vocab_size": "32"}, "field 'vocab_size'"),
    "uint16 too small": ({"vocab_size": 70_000}, "field 'dtype' is 'uint16', expected uint32"),
    "negative count": ({"n_train_tokens": -5}, "field 'n_train_tokens'"),
    "dtype uint32 for uint16 bytes": ({"dtype": "uint32"}, "the files do not belong together"),
}


@pytest.mark.parametrize("case", list(BAD_META))
def test_malformed_meta_json(prepared, case):
    patch, expected = BAD_META[case]
    meta = json.loads((prepared / "meta.json").read_text(encoding="utf-8"))
    (prepared / "meta.json").write_text(json.dumps({**meta, **patch}), encoding="utf-8")
    with pytest.raises(DataError) as info:
        TokenDataset(prepared, 8)
    assert expected in one_line(info.value)


# ------------------------------------------------------------------------------------------------ the CLI
TEXT = "to be or not to be, that is the question; whether tis nobler in the mind. " * 20
ARGS = ["--preset", "debug", "--set", "d_model=16", "--set", "n_layers=1", "--set", "n_heads=2",
        "--set", "max_seq_len=16", "--batch-size", "2", "--eval-interval", "2", "--set", "eval_batches=1",
        "--set", "num_samples=0", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("cli")
    (base / "a.txt").write_text(TEXT, encoding="utf-8")
    out = base / "run"
    assert main(["train", "--data", str(base / "a.txt"), "--out", str(out), "--max-steps", "4", *ARGS]) == 0
    assert ckpt.latest_checkpoint(out).name == "ckpt-000004"
    return base


def _meta_edit(key, value):
    def edit(out):
        f = out / "data" / "meta.json"
        f.write_text(json.dumps({**json.loads(f.read_text(encoding="utf-8")), key: value}), encoding="utf-8")
    return edit


def _state_edit(change):
    def edit(out):
        f = out / "trainer_state" / "ckpt-000004" / ckpt.STATE_NAME
        f.write_text(json.dumps(change(json.loads(f.read_text(encoding="utf-8")))), encoding="utf-8")
    return edit


def _other_alphabet(out):
    f = out / "data" / "tokenizer" / "llmcore_tokenizer.json"
    settings = json.loads(f.read_text(encoding="utf-8"))
    settings["chars"] = settings["chars"][::-1]  # the same alphabet (and vocab_size), other ids
    f.write_text(json.dumps(settings), encoding="utf-8")


CLI_CASES = {
    "trainer as a list": (_state_edit(_set("trainer", [])), "field 'trainer'"),
    "step negative": (_state_edit(_set("trainer.step", -1_000_000)), "field 'trainer.step'"),
    "step as a string": (_state_edit(_set("step", "4")), "field 'step'"),
    "empty state": (_state_edit(lambda s: {}), "is missing"),
    "rng wrong size": (_state_edit(lambda s: _set("rng.torch", s["rng"]["torch"][:7])(s)), "field 'rng.torch'"),
    "meta dtype float64": (_meta_edit("dtype", "float64"), "field 'dtype'"),
    "meta format_version 99": (_meta_edit("format_version", 99), "field 'format_version'"),
    "another alphabet": (_other_alphabet, "trained with another tokenizer"),
}


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_cli_resume_refuses_with_one_line(cli_run, tmp_path, capsys, case):
    edit, expected = CLI_CASES[case]
    out = tmp_path / "run"
    shutil.copytree(cli_run / "run", out)
    edit(out)
    before = snapshot(out)
    capsys.readouterr()
    code = main(["train", "--data", str(cli_run / "a.txt"), "--out", str(out), "--max-steps", "8", "--resume", *ARGS])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("llmcore train: error:") and expected in lines[0], lines[0]
    assert snapshot(out) == before  # the checkpoints, the data and the logs are as they were


def test_cli_resume_of_an_intact_run_still_works(cli_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(cli_run / "run", out)
    assert main(["train", "--data", str(cli_run / "a.txt"), "--out", str(out), "--max-steps", "6", "--resume",
                 *ARGS]) == 0
    assert ckpt.latest_checkpoint(out).name == "ckpt-000006"



def test_cli_disk_full_is_exit_2_with_one_line(tmp_path, capsys, monkeypatch):
    import safetensors.torch as st
    from safetensors import SafetensorError

    (tmp_path / "a.txt").write_text(TEXT, encoding="utf-8")
    real = st.save_file

    def save_file(tensors, filename, metadata=None):
        if "ckpt-000004" in os.path.realpath(filename) and "optimizer" in str(filename):
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(st, "save_file", save_file)
    out = tmp_path / "run"
    cmd = ["train", "--data", str(tmp_path / "a.txt"), "--out", str(out), "--max-steps", "4", *ARGS]
    capsys.readouterr()
    code = main(cmd)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert "disk full while writing checkpoint" in lines[0] and "rerun with --resume" in lines[0], lines[0]
    root = out / "trainer_state"
    assert sorted(p.name for p in root.iterdir()) == ["ckpt-000002"]  # the previous one, nothing partial
    monkeypatch.undo()
    assert main([*cmd, "--resume"]) == 0 and ckpt.latest_checkpoint(out).name == "ckpt-000004"


def test_cli_fresh_run_on_a_prepared_dir_with_bad_meta_writes_nothing(tmp_path, capsys):
    from llmcore.data import prepare

    data = tmp_path / "prepared"
    tok = CharTokenizer.from_text(TEXT)
    prepare(TEXT, tok, data)
    tok.save(data / "tokenizer")
    meta = json.loads((data / "meta.json").read_text(encoding="utf-8"))
    (data / "meta.json").write_text(json.dumps({**meta, "dtype": "float64"}), encoding="utf-8")
    before = snapshot(data)
    out = tmp_path / "run"
    capsys.readouterr()
    code = main(["train", "--data", str(data), "--out", str(out), "--max-steps", "2", *ARGS])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "field 'dtype'" in err, err
    assert not out.exists() or not any(out.rglob("*"))  # nothing linked or written into the run directory
    assert snapshot(data) == before


def test_cli_resume_with_another_tokenizer_is_refused_before_the_data_is_prepared(cli_run, tmp_path, capsys):
    # OUT/data gone (deleted to save space, say): a resume would prepare it anew from the flags' tokenizer; the
    # fingerprint is checked first, so the refusal leaves the run directory as it was, no OUT/data written.
    out = tmp_path / "run"
    shutil.copytree(cli_run / "run", out)
    shutil.rmtree(out / "data")
    before = snapshot(out)
    capsys.readouterr()
    code = main(["train", "--data", str(cli_run / "a.txt"), "--out", str(out), "--max-steps", "8", "--resume",
                 "--tokenizer", "byte", *ARGS])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert "trained with another tokenizer" in lines[0], lines[0]
    assert not (out / "data").exists() and snapshot(out) == before
    # the run's own tokenizer (the same char alphabet from the same text) re-prepares the data and resumes
    assert main(["train", "--data", str(cli_run / "a.txt"), "--out", str(out), "--max-steps", "6", "--resume",
                 *ARGS]) == 0
    assert ckpt.latest_checkpoint(out).name == "ckpt-000006"
