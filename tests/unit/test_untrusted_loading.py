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
import itertools
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
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


def convert_fails(src: Path, dst: Path, *words: str) -> str:
    """``llmcore convert SRC DST`` (in-process) fails in one line and creates nothing."""
    line = assert_one_line_error(run_in_process("convert", str(src), str(dst), "--no-tokenizer"), *words)
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


def test_weight_map_fifo_does_not_hang(in_child):
    child_fails(in_child["a shard is a FIFO"], "not a regular file")


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


def test_tokenizer_model_file_symlink_to_dev_zero_and_fifo(in_child):
    child_fails(in_child["tokenizer.model links to /dev/zero"], "outside")
    child_fails(in_child["tokenizer.model is a FIFO"], "not a regular file")


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


def test_tokenizer_error_through_the_cli(in_child):
    child_fails(in_child["convert: the tokenizer's model_file is /dev/zero"], "/dev/zero", "outside")


# ------------------------------------------------------------------------------------------ 2. bounded memory
def _hostile_cases(root: Path) -> dict[str, Path]:
    """name -> a model directory whose config claims far more than its weights back."""
    cases = {}
    src = save_tiny(root / "vocab")
    edit_config(src, vocab_size=10**7)
    cases["vocab_size 10**7"] = src
    src = save_tiny(root / "seq")
    edit_config(src, max_seq_len=10**9)
    cases["max_seq_len 10**9, RoPE"] = src
    src = save_tiny(root / "seqlearned", pos_encoding="learned")
    edit_config(src, max_seq_len=10**8)
    cases["max_seq_len 10**8, learned"] = src
    src = save_tiny(root / "layers")
    edit_config(src, n_layers=10**5)
    cases["n_layers 10**5"] = src
    src = root / "hfmissing"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({
        "model_type": "llama", "vocab_size": 10**7, "hidden_size": 256, "intermediate_size": 512,
        "num_hidden_layers": 4, "num_attention_heads": 4, "max_position_embeddings": 128}))
    save_file({"lm_head.weight": torch.zeros(2, 2)}, str(src / "model.safetensors"))  # ~100 bytes
    cases["HF config, missing tensors"] = src
    from llmcore.models.hf import save_hf

    src = save_hf(load_model(save_tiny(root / "lc")), root / "hfvocab")
    cfg = json.loads((src / "config.json").read_text())
    cfg["vocab_size"] = 10**8  # 12.8 GB of placeholder before the fix
    (src / "config.json").write_text(json.dumps(cfg))
    cases["HF config, vocab 10**8 over real weights"] = src
    return cases


@pytest.mark.parametrize("case, words", [pytest.param(case, words, id=case) for case, words in [
    ("vocab_size 10**7", ("shape mismatches", "tok_embeddings.weight")),
    ("max_seq_len 10**9, RoPE", ("max_seq_len=1000000000", "rotary.cos")),
    ("max_seq_len 10**8, learned", ("shape mismatches", "pos_embeddings.weight")),
    ("n_layers 10**5", ("100000 layers",)),
    ("HF config, missing tensors", ("missing tensors",)),
    ("HF config, vocab 10**8 over real weights", ("shape mismatches",)),
]])
def test_hostile_config_costs_what_the_weights_file_costs(in_child, case, words):
    """One line, exit 2, nothing written; peak RSS within 200 MiB + 4 x the weights on disk; under 20 s."""
    out = in_child[case]
    weights = sum(f.stat().st_size for f in out["src"].glob("*.safetensors"))
    child_fails(out, *words)
    assert out["grown"] < 200 * 2**20 + 4 * weights, f"peak RSS grew {out['grown'] / 2**20:.0f} MiB"
    assert out["seconds"] < 20, out


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


def test_config_json_fifo_or_device_is_refused(in_child):
    """config.json itself: a FIFO hung the reader, a link to /dev/zero read without bound."""
    child_fails(in_child["config.json is a FIFO"], "not a regular file")
    child_fails(in_child["config.json links to /dev/zero"], "not a regular file")


# ----------------------------------------------------------------------------------- the cases run in a child
# Cases that hung the old code (a FIFO), read /dev/zero without bound or allocated what a hostile config claims
# run in a child process, under a deadline and an address-space cap, so they fail instead of hanging or
# swapping. A fresh interpreter costs a torch import (2-3 s), so they all share ONE child: it runs each case's
# ``llmcore`` argv through ``main()`` in turn, with its own stdout / stderr (the file descriptors, so output
# from C++ counts too), and reports when each case begins and how it ended. The parent is the watchdog (a
# FIFO blocks inside Rust / C++ code, where no signal handler runs): a case that runs past CASE_DEADLINE or
# kills the child fails on its own, and a fresh child carries on with the cases after it.
CASE_DEADLINE = 30  # seconds for one case; the child's start-up (imports) gets START_DEADLINE
START_DEADLINE = 120
CHILD = textwrap.dedent("""
    import json, os, resource, sys, tempfile, time
    import torch, llmcore.cli, llmcore.models  # baseline: the libraries loaded
    with open("/proc/self/status") as f:
        vm = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (vm + 2**30, resource.RLIM_INFINITY))  # address space: +1 GiB at most
    def hwm():  # this process's peak RSS (ru_maxrss would start at the forking parent's, e.g. pytest's, size)
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("VmHWM:"))  # KiB, as ru_maxrss on Linux
    base = hwm()
    plan, report = json.loads(sys.argv[1]), open(sys.argv[2], "w")

    def say(**record):
        report.write(json.dumps(record) + "\\n")
        report.flush()

    for name, argv in plan:
        say(begin=name)
        t = time.time()
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            saved = os.dup(1), os.dup(2)
            os.dup2(out.fileno(), 1)
            os.dup2(err.fileno(), 2)
            try:
                rc = llmcore.cli.main(argv)
            except SystemExit as e:  # argparse
                rc = e.code
            except BaseException as e:  # MemoryError before the fix
                print(f"{type(e).__name__}: {e}", file=sys.stderr)
                rc = 99
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                for fd, copy in zip((1, 2), saved):
                    os.dup2(copy, fd)
                    os.close(copy)
            err.seek(0)
            text = err.read().decode("utf-8", "replace")
        peak = hwm()  # a high-water mark: cumulative over cases
        say(name=name, rc=rc, err=text, grown=(peak - base) * 1024, seconds=time.time() - t)
""")


def _child_cases(root: Path) -> dict[str, tuple[Path, Path | None, list[str]]]:
    """name -> (the directory loaded, the DST that must not appear or None, the ``llmcore`` argv). The hostile
    configs come first, so the cases after them cannot raise the peak RSS they are measured by."""
    def convert(src: Path, *flags: str) -> tuple[Path, Path, list[str]]:
        dst = src.with_name(src.name + "-dst")
        return src, dst, ["convert", str(src), str(dst), *flags]

    cases = {name: convert(src, "--no-tokenizer") for name, src in _hostile_cases(root / "hostile").items()}

    d = sharded(root / "fifo-shard", {})  # test_weight_map_fifo_does_not_hang
    shard = first_shard(d)
    (d / shard).unlink()
    os.mkfifo(d / shard)
    cases["a shard is a FIFO"] = convert(d, "--no-tokenizer")

    tok = spm_dir(root / "spm")  # test_tokenizer_model_file_symlink_to_dev_zero_and_fifo
    for name, where, make in [("tokenizer.model links to /dev/zero", "tok-zero", lambda f: f.symlink_to("/dev/zero")),
                              ("tokenizer.model is a FIFO", "tok-fifo", os.mkfifo)]:
        d = Path(shutil.copytree(tok, root / where))
        (d / "tokenizer.model").unlink()
        make(d / "tokenizer.model")
        cases[name] = d, None, ["tokenizer", "encode", "--tokenizer", str(d), "--text", "the fox"]

    src = save_tiny(root / "tokzero" / "m")  # test_tokenizer_error_through_the_cli
    shutil.copytree(tok, src / "tokenizer")
    set_setting(src / "tokenizer", model_file="/dev/zero")
    cases["convert: the tokenizer's model_file is /dev/zero"] = convert(src)  # with the tokenizer

    for name, where, make in [("config.json is a FIFO", "cfg-fifo", os.mkfifo),  # test_config_json_fifo_or_...
                              ("config.json links to /dev/zero", "cfg-zero", lambda f: f.symlink_to("/dev/zero"))]:
        src = save_tiny(root / where / "m")
        (src / "config.json").unlink()
        make(src / "config.json")
        cases[name] = convert(src, "--no-tokenizer")
    return cases


def _records(report: Path) -> list[dict]:
    """The complete JSON lines the child has written to ``report`` so far."""
    text = report.read_text() if report.exists() else ""
    return [json.loads(line) for line in text.split("\n")[:-1]]


def run_in_child(plan: list[tuple[str, list[str]]], root: Path) -> dict[str, dict]:
    """name -> how ``llmcore ARGV`` ended in the shared child (see CHILD), or {"problem": why it has no end}."""
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    results: dict[str, dict] = {}
    for attempt in itertools.count():  # one child, unless a case hangs or kills it
        report, log = root / f"report{attempt}.jsonl", root / f"stderr{attempt}.txt"
        with open(log, "w") as stderr:
            child = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(plan), str(report)], env=env,
                                     stdout=subprocess.DEVNULL, stderr=stderr)
        seen, current, since, hung = 0, None, time.monotonic(), False
        while not hung:
            exited = child.poll() is not None  # before reading the report, so an exit's last lines are read
            records = _records(report)
            for record in records[seen:]:
                current = record.get("begin")  # None once the case that began last has ended
                if current is None:
                    results[record["name"]] = record
                since = time.monotonic()
            seen = len(records)
            if exited:
                break
            hung = time.monotonic() - since > (CASE_DEADLINE if current else START_DEADLINE)
            if hung:
                child.kill()
                child.wait()
            time.sleep(0.05)
        names = [name for name, _ in plan]
        if current is None:  # every case it began has ended: the plan is done, or the child died between cases
            why = f"the child exited {child.returncode} before this case: {log.read_text()[-2000:]}"
            return {**results, **{name: {"problem": why} for name in names if name not in results}}
        results[current] = {"problem": f"hung for {CASE_DEADLINE} s (the child was killed)" if hung else
                            f"killed the child (exit {child.returncode}): {log.read_text()[-2000:]}"}
        plan = plan[names.index(current) + 1:]
        if not plan:
            return results
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def in_child(tmp_path_factory) -> dict[str, dict]:
    """name -> that case's outcome in the shared child: rc, err (its whole stderr), grown (peak-RSS growth
    over the libraries' baseline), seconds, or instead a ``problem``; with its argv, src and dst."""
    root = tmp_path_factory.mktemp("child")
    cases = _child_cases(root)
    results = run_in_child([(name, argv) for name, (_, _, argv) in cases.items()], root)
    return {name: {**results[name], "argv": argv, "src": src, "dst": dst} for name, (src, dst, argv) in cases.items()}


def child_fails(out: dict, *words: str) -> str:
    """The case ``out`` of the shared child exited 2 with one stderr line (no traceback) holding ``words``,
    within its deadline, and created no DST."""
    assert "problem" not in out, f"llmcore {' '.join(out['argv'])}: {out['problem']}"
    line = assert_one_line_error(subprocess.CompletedProcess(out["argv"], out["rc"], "", out["err"]), *words)
    assert out["dst"] is None or not out["dst"].exists()
    return line


# ----------------------------------------------------------------------------------- peak memory of a load
PEAK_CHILD = textwrap.dedent("""
    import contextlib, json, sys, tempfile
    import torch
    from llmcore import ModelConfig, TransformerLM

    def status(key):  # this process's own figures: ru_maxrss would start at the forking parent's size
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))

    torch.set_num_threads(1)
    for fmt in ("llmcore", "hf"):  # each code path once: imports, kernels, allocator arenas
        tiny = TransformerLM(ModelConfig.from_preset("debug", vocab_size=64))
        TransformerLM.from_pretrained(tiny.save_pretrained(tempfile.mkdtemp() + "/t", format=fmt))
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the high-water mark to the resident set now (Linux >= 4.0)
    base = status("VmRSS")
    model = TransformerLM.from_pretrained(sys.argv[1])
    grown = status("VmHWM") - base  # without the reset, an overestimate: the test can fail, never pass wrongly
    assert next(model.parameters()).abs().sum() > 0
    print(json.dumps({"grown": grown}))
""")



@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads VmHWM / VmRSS from /proc (Linux)")
@pytest.mark.parametrize("fmt,preset", [("llmcore", "debug"), ("hf", "nanogpt"), ("hf", "llama-tiny")],
                         ids=["llmcore", "hf-gpt2", "hf-llama"])
def test_loading_a_model_peaks_near_one_copy_of_its_weights(tmp_path, fmt, preset):
    """from_pretrained reads each tensor straight into the built model (no state dict beside it): the peak RSS
    of a load grows by about the weights' size (was 2x: the model plus a full copy of the file). A Hugging Face
    directory is converted tensor by tensor into the built model (was 3.0x for GPT-2, 2.1x for Llama: the
    model, the HF state dict and the converted one)."""
    torch.manual_seed(0)
    cfg = llmcore.ModelConfig.from_preset(preset, vocab_size=8192, d_model=512, n_layers=6, n_heads=8,
                                          max_seq_len=128)
    d = TransformerLM(cfg).save_pretrained(tmp_path / "m", format=fmt)
    weights = (d / "model.safetensors").stat().st_size  # ~90 MiB
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(llmcore.__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    child = subprocess.run([sys.executable, "-c", PEAK_CHILD, str(d)], capture_output=True, text=True, timeout=300,
                           env=env)
    assert child.returncode == 0, child.stderr[-2000:]
    grown = json.loads(child.stdout.strip().splitlines()[-1])["grown"]
    assert grown < 1.5 * weights + 16 * 2**20, f"loading grew the peak RSS by {grown / weights:.2f}x the weights"


@pytest.mark.parametrize("fmt", ["llmcore", "hf"])
def test_a_model_with_its_own_load_hooks_still_loads_through_them(tmp_path, fmt):
    """Reading straight into the parameters would bypass a module's load hooks: such a model takes the
    load_state_dict path (about 2x the weights, as before)."""
    calls = []

    class HookedLM(TransformerLM):
        def __init__(self, config):
            super().__init__(config)
            self._register_load_state_dict_pre_hook(lambda *args, **kwargs: calls.append(1))

    torch.manual_seed(0)
    src = TransformerLM(llmcore.ModelConfig.from_preset("debug", vocab_size=64))  # only it exports to HF
    d = src.save_pretrained(tmp_path / "m", format=fmt)
    loaded = HookedLM.from_pretrained(d)
    assert calls, "the load hook was not called"
    ids = torch.randint(0, 64, (1, 8))
    torch.testing.assert_close(loaded(ids), src.eval()(ids), rtol=0, atol=0)
