"""Issue 16, items 1 and 2: a model / tokenizer directory is untrusted input.

1. Path confinement: every file a directory's file names (a shard index's ``weight_map``, a tokenizer's
   ``model_file`` / ``tokenizer_file``) resolves inside the directory, is a regular file and is size-bounded.
2. Bounded allocation: an untrusted config is checked against the safetensors header on the ``meta`` device
   before anything is allocated, so loading costs what the weights on disk cost (measured in a subprocess).

Every CLI case asserts exit status 2, exactly one stderr line, no traceback, and DST not written.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import llmcore
from llmcore.cli import main as cli_main
from llmcore.errors import CheckpointError, TokenizerError
from llmcore.models import TransformerLM, load_model
from llmcore.tokenizer import load_tokenizer

SRC = str(Path(llmcore.__file__).resolve().parents[1])
TINY = dict(vocab_size=64, max_seq_len=32, d_model=32, n_layers=2, n_heads=4, pos_encoding="rope",
            norm="rmsnorm", activation="swiglu", bias=False, tie_embeddings=True)


def save_tiny(d: Path, **changes) -> Path:
    torch.manual_seed(0)
    TransformerLM(llmcore.ModelConfig(**{**TINY, **changes})).save_pretrained(d)
    return d


def edit_config(d: Path, **fields) -> None:
    meta = json.loads((d / "config.json").read_text())
    meta["config"].update(fields)
    (d / "config.json").write_text(json.dumps(meta))


def _limit_memory() -> None:  # before the fix some cases read /dev/zero: fail with MemoryError, not swap
    resource.setrlimit(resource.RLIMIT_AS, (12 * 2**30, resource.RLIM_INFINITY))


def run_cli(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "llmcore", *argv], capture_output=True, text=True,
                          timeout=timeout, env=env, preexec_fn=_limit_memory)


def assert_one_line_error(r: subprocess.CompletedProcess, *words: str) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr[-2000:]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def run_in_process(*argv: str) -> subprocess.CompletedProcess:
    """``llmcore ARGV`` through the CLI's ``main()`` here (no interpreter start-up): for cases that neither
    hang nor allocate on the old code, so no subprocess timeout or memory cap is needed to contain them."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli_main(list(argv))
    return subprocess.CompletedProcess(argv, code, "", err.getvalue())


def convert_fails(src: Path, dst: Path, *words: str, timeout: float | None = None) -> str:
    """``llmcore convert SRC DST`` fails in one line and creates nothing; ``timeout`` runs it in a subprocess
    (for a FIFO or a device, which hung the old code)."""
    argv = ("convert", str(src), str(dst), "--no-tokenizer")
    try:
        r = run_cli(*argv, timeout=timeout) if timeout else run_in_process(*argv)
    except subprocess.TimeoutExpired:
        pytest.fail(f"llmcore convert {src} hung for {timeout} s")
    line = assert_one_line_error(r, *words)
    assert not dst.exists()
    return line


# ---------------------------------------------------------------------------------------------- 1. confinement
def sharded(tmp_path: Path, name_of: dict) -> Path:
    """An HF-format sharded directory (exported from a tiny model) whose weight_map is rewritten."""
    d = tmp_path / "hf"
    TransformerLM(llmcore.ModelConfig(**TINY)).save_pretrained(tmp_path / "lc")
    from llmcore.models.hf import save_hf

    save_hf(load_model(tmp_path / "lc"), d, max_shard_size=4000)
    index = json.loads((d / "model.safetensors.index.json").read_text())
    index["weight_map"] = {k: name_of.get(v, v) for k, v in index["weight_map"].items()}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    return d


def first_shard(d: Path) -> str:
    return sorted(p.name for p in d.glob("model-*.safetensors"))[0]


@pytest.mark.parametrize("how", ["absolute", "dotdot"])
def test_weight_map_outside_the_directory_is_refused(tmp_path, how):
    d = sharded(tmp_path, {})
    shard = first_shard(d)
    outside = tmp_path / "elsewhere.safetensors"
    (d / shard).rename(outside)  # the real tensors now live outside: before the fix they loaded from there
    index = json.loads((d / "model.safetensors.index.json").read_text())
    target = str(outside) if how == "absolute" else "../elsewhere.safetensors"
    index["weight_map"] = {k: target if v == shard else v for k, v in index["weight_map"].items()}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="outside"):
        load_model(d)
    convert_fails(d, tmp_path / "dst", "outside", "index")


def test_weight_map_etc_passwd_is_refused(tmp_path):
    d = sharded(tmp_path, {})
    index = json.loads((d / "model.safetensors.index.json").read_text())
    index["weight_map"][next(iter(index["weight_map"]))] = "/etc/passwd"
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    convert_fails(d, tmp_path / "dst", "/etc/passwd", "outside")


def test_symlinked_shard_pointing_outside_is_refused(tmp_path):
    d = sharded(tmp_path, {})
    shard = first_shard(d)
    outside = tmp_path / "secret.safetensors"
    (d / shard).rename(outside)
    (d / shard).symlink_to(outside)
    with pytest.raises(CheckpointError, match="outside"):
        load_model(d)


def test_weight_map_fifo_does_not_hang(tmp_path):
    d = sharded(tmp_path, {})
    shard = first_shard(d)
    (d / shard).unlink()
    os.mkfifo(d / shard)
    convert_fails(d, tmp_path / "dst", "not a regular file", timeout=30)


@pytest.mark.parametrize("weight_map, words", [([["a", "b"]], "weight_map"), ({"w": 3}, "weight_map['w'] is 3")])
def test_weight_map_wrong_types(tmp_path, weight_map, words):
    d = sharded(tmp_path, {})
    index = json.loads((d / "model.safetensors.index.json").read_text())
    index["weight_map"] = weight_map
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    convert_fails(d, tmp_path / "dst", words)


def test_hf_cache_snapshot_symlinks_still_load(tmp_path):
    """The hub cache's snapshots/<rev>/ links every file to ../../blobs/: that one exception is allowed."""
    d = sharded(tmp_path / "x", {})
    repo = tmp_path / "models--t--tiny"
    snap, blobs = repo / "snapshots" / "abc", repo / "blobs"
    snap.mkdir(parents=True)
    blobs.mkdir()
    for i, f in enumerate(sorted(d.iterdir())):
        (f).rename(blobs / f"blob{i}")
        (snap / f.name).symlink_to(Path("../../blobs") / f"blob{i}")
    assert load_model(snap).config.vocab_size == TINY["vocab_size"]


def spm_dir(tmp_path: Path) -> Path:
    from llmcore.tokenizer import SentencePieceTokenizer

    text = "the quick brown fox jumps over the lazy dog\n" * 50
    d = tmp_path / "tok"
    SentencePieceTokenizer.train([text], vocab_size=300, model_type="bpe").save(d)
    return d


def set_setting(d: Path, **fields) -> None:
    p = d / "llmcore_tokenizer.json"
    settings = json.loads(p.read_text())
    settings.update(fields)
    p.write_text(json.dumps(settings))


@pytest.mark.parametrize("name", ["../outside.model", "/etc/passwd"])  # /dev/zero: through the CLI below
def test_tokenizer_model_file_outside_is_refused(tmp_path, name):
    d = spm_dir(tmp_path)
    (tmp_path / "outside.model").write_bytes((d / "tokenizer.model").read_bytes())
    set_setting(d, model_file=name)
    with pytest.raises(TokenizerError, match="outside"):
        load_tokenizer(d)


def encode_fails(d: Path, *words: str) -> None:
    try:
        r = run_cli("tokenizer", "encode", "--tokenizer", str(d), "--text", "the fox", timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"loading the tokenizer in {d} hung")
    assert_one_line_error(r, *words)


def test_tokenizer_model_file_symlink_to_dev_zero_and_fifo(tmp_path):
    d = spm_dir(tmp_path)
    (d / "tokenizer.model").unlink()
    (d / "tokenizer.model").symlink_to("/dev/zero")
    encode_fails(d, "outside")
    (d / "tokenizer.model").unlink()
    os.mkfifo(d / "tokenizer.model")
    encode_fails(d, "not a regular file")


def test_tokenizer_model_file_over_the_size_bound(tmp_path):
    d = spm_dir(tmp_path)
    with open(d / "big.model", "wb") as f:  # sparse: costs no disk, 300 MB to a reader
        f.truncate(300 * 2**20)
    set_setting(d, model_file="big.model")
    with pytest.raises(TokenizerError, match="limit"):
        load_tokenizer(d)


def test_tokenizer_model_file_wrong_type(tmp_path):
    d = spm_dir(tmp_path)
    set_setting(d, model_file=["tokenizer.model"])
    with pytest.raises(TokenizerError, match="not a file name"):
        load_tokenizer(d)


def test_hf_tokenizer_file_outside_is_refused(tmp_path):
    pytest.importorskip("tokenizers")
    d = tmp_path / "tok"
    d.mkdir()
    (d / "llmcore_tokenizer.json").write_text(json.dumps({"kind": "huggingface", "format_version": 1,
                                                          "tokenizer_file": "/etc/passwd"}))
    with pytest.raises(TokenizerError, match="outside"):
        load_tokenizer(d)


def test_tokenizer_error_through_the_cli(tmp_path):
    src = save_tiny(tmp_path / "m")
    tok = spm_dir(tmp_path)
    tok.rename(src / "tokenizer")
    set_setting(src / "tokenizer", model_file="/dev/zero")
    r = run_cli("convert", str(src), str(tmp_path / "dst"))  # a subprocess: the old code read /dev/zero unbounded
    assert_one_line_error(r, "/dev/zero", "outside")
    assert not (tmp_path / "dst").exists()


# ------------------------------------------------------------------------------------------ 2. bounded memory
CHILD = textwrap.dedent("""
    import contextlib, io, json, resource, sys, time
    import torch, llmcore.cli, llmcore.models  # baseline: the libraries loaded
    with open("/proc/self/status") as f:
        vm = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (vm + 2**30, resource.RLIM_INFINITY))  # address space: +1 GiB at most
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    results = {}
    for name, src, dst in json.loads(sys.argv[1]):
        err, t = io.StringIO(), time.time()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                rc = llmcore.cli.main(["convert", src, dst, "--no-tokenizer"])
            except BaseException as e:  # MemoryError before the fix
                print(f"{type(e).__name__}: {e}", file=sys.stderr)
                rc = 99
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # a high-water mark: cumulative over cases
        results[name] = {"rc": rc, "err": err.getvalue(), "grown": (peak - base) * 1024, "seconds": time.time() - t}
    print(json.dumps(results))
""")


def _hostile_cases(root: Path) -> dict[str, tuple[Path, tuple[str, ...]]]:
    """name -> (a model directory whose config claims far more than its weights back, words of the error)."""
    cases = {}
    src = save_tiny(root / "vocab")
    edit_config(src, vocab_size=10**7)
    cases["vocab_size 10**7"] = (src, ("shape mismatches", "tok_embeddings.weight"))
    src = save_tiny(root / "seq")
    edit_config(src, max_seq_len=10**9)
    cases["max_seq_len 10**9, RoPE"] = (src, ("max_seq_len=1000000000", "rotary.cos"))
    src = save_tiny(root / "seqlearned", pos_encoding="learned")
    edit_config(src, max_seq_len=10**8)
    cases["max_seq_len 10**8, learned"] = (src, ("shape mismatches", "pos_embeddings.weight"))
    src = save_tiny(root / "layers")
    edit_config(src, n_layers=10**5)
    cases["n_layers 10**5"] = (src, ("100000 layers",))
    src = root / "hfmissing"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({
        "model_type": "llama", "vocab_size": 10**7, "hidden_size": 256, "intermediate_size": 512,
        "num_hidden_layers": 4, "num_attention_heads": 4, "max_position_embeddings": 128}))
    save_file({"lm_head.weight": torch.zeros(2, 2)}, str(src / "model.safetensors"))  # ~100 bytes
    cases["HF config, missing tensors"] = (src, ("missing tensors",))
    from llmcore.models.hf import save_hf

    src = save_hf(load_model(save_tiny(root / "lc")), root / "hfvocab")
    cfg = json.loads((src / "config.json").read_text())
    cfg["vocab_size"] = 10**8  # 12.8 GB of placeholder before the fix
    (src / "config.json").write_text(json.dumps(cfg))
    cases["HF config, vocab 10**8 over real weights"] = (src, ("shape mismatches",))
    return cases


@pytest.fixture(scope="module")
def hostile_loads(tmp_path_factory) -> dict[str, tuple[Path, tuple[str, ...], dict]]:
    """Every hostile case loaded by ``llmcore convert`` in ONE child process (one interpreter start-up), with
    its exit status, stderr, peak-RSS growth over the libraries' baseline and time."""
    root = tmp_path_factory.mktemp("hostile")
    cases = _hostile_cases(root)
    plan = [(name, str(src), str(root / f"dst{i}")) for i, (name, (src, _)) in enumerate(cases.items())]
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    try:
        r = subprocess.run([sys.executable, "-c", CHILD, json.dumps(plan)], capture_output=True, text=True,
                           timeout=120, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail("loading the hostile directories took over 120 s")
    assert r.returncode == 0 and r.stdout.strip(), r.stderr[-2000:]
    results = json.loads(r.stdout.strip().splitlines()[-1])
    return {name: (src, words, {**results[name], "dst": Path(dst)})
            for (name, (src, words)), (_, _, dst) in zip(cases.items(), plan)}


@pytest.mark.parametrize("case", ["vocab_size 10**7", "max_seq_len 10**9, RoPE", "max_seq_len 10**8, learned",
                                  "n_layers 10**5", "HF config, missing tensors",
                                  "HF config, vocab 10**8 over real weights"])
def test_hostile_config_costs_what_the_weights_file_costs(hostile_loads, case):
    """One line, exit 2, nothing written; peak RSS within 200 MiB + 4 x the weights on disk; under 20 s."""
    src, words, out = hostile_loads[case]
    weights = sum(f.stat().st_size for f in src.glob("*.safetensors"))
    lines = out["err"].strip().splitlines()
    assert out["rc"] == 2 and len(lines) == 1 and "Traceback" not in out["err"], out["err"][-2000:]
    for w in words:
        assert w in lines[0], lines[0]
    assert out["grown"] < 200 * 2**20 + 4 * weights, f"peak RSS grew {out['grown'] / 2**20:.0f} MiB"
    assert out["seconds"] < 20, out
    assert not out["dst"].exists()


@pytest.mark.parametrize("dtype", [torch.int32, torch.bool])
def test_non_float_weights_are_refused(tmp_path, dtype):
    src = save_tiny(tmp_path / "m")
    from safetensors.torch import load_file

    state = load_file(str(src / "model.safetensors"))
    state["final_norm.weight"] = state["final_norm.weight"].to(dtype)
    save_file(state, str(src / "model.safetensors"))
    with pytest.raises(CheckpointError, match="non-float tensors"):
        load_model(src)
    convert_fails(src, tmp_path / "dst", "non-float", "final_norm.weight")


def test_saved_model_still_loads_bit_identically(tmp_path):
    torch.manual_seed(1)
    for changes in ({}, {"pos_encoding": "sinusoidal", "tie_embeddings": False}, {"pos_encoding": "learned"}):
        model = TransformerLM(llmcore.ModelConfig(**{**TINY, **changes}))
        d = model.save_pretrained(tmp_path / str(len(changes)) / "m")
        loaded = load_model(d)
        ref, got = model.state_dict(), loaded.state_dict()
        assert set(ref) == set(got) and all(torch.equal(ref[k], got[k]) for k in ref)
        assert dict(model.named_buffers()).keys() == dict(loaded.named_buffers()).keys()
        assert all(torch.equal(b, dict(loaded.named_buffers())[n]) for n, b in model.named_buffers())
        if model.config.tie_embeddings:
            assert loaded.lm_head.weight is loaded.tok_embeddings.weight


def test_config_json_fifo_or_device_is_refused(tmp_path):
    """config.json itself: a FIFO hung the reader, a link to /dev/zero read without bound."""
    src = save_tiny(tmp_path / "m")
    (src / "config.json").unlink()
    os.mkfifo(src / "config.json")
    convert_fails(src, tmp_path / "dst", "not a regular file", timeout=30)
    (src / "config.json").unlink()
    (src / "config.json").symlink_to("/dev/zero")
    convert_fails(src, tmp_path / "dst", "not a regular file", timeout=30)
