"""examples/alibi_parallel.py: a user architecture (ALiBi + parallel residual) through every command.

Unit tests prove the arithmetic (slopes and bias against hand-written values, the bias reaching the attention
weights, one norm per block, a gradient for every parameter), the decoding equivalences (cached = uncached,
batched left-padded = one prompt at a time, SDPA = reference path), zero graph breaks under torch.compile,
and that the file registers cleanly when imported under two module names while another class under its name
is refused. The command-line tests train the example with ``llmcore train --import examples/alibi_parallel.py``
and check that the run directory names the architecture, that ``--resume`` equals an uninterrupted run, that
``eval`` equals ``Trainer.evaluate``, that ``generate`` equals ``load_model(DIR).generate``, that ``plot``
draws its attention maps, that loading without ``--import`` fails with a one-line error naming the fix, and
that 2-process gloo DDP (``torch.distributed.run``) equals one process with twice the batch. The guide
(docs/guides/new-architecture.md) must show the example's definitions verbatim.
"""

from __future__ import annotations

import ast
import json
import math
import os
import re
import runpy
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llmcore import ConfigError, ModelConfig, TrainConfig, Trainer, load_tokenizer
from llmcore.cli import main
from llmcore.cli.common import import_plugin
from llmcore.data.corpora import bundled_corpus_path, read_file
from llmcore.models import load_model
from llmcore.registry import ARCHITECTURES, POS_ENCODINGS
from llmcore.training.run import val_split

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "alibi_parallel.py"
ARCH = "ALiBiParallelLM"


@pytest.fixture(scope="module")
def ex():
    """The example imported by path (as ``--import`` does); the registries are restored afterwards.

    Registration is global, so later tests must not see ``alibi`` (tests/unit/test_registry.py checks that
    llmcore itself does not know it). A stale entry under the same name (another copy of the definitions made
    earlier in this process) is dropped first, as in a fresh process.
    """
    saved = {registry: dict(registry._table) for registry in (ARCHITECTURES, POS_ENCODINGS)}
    ARCHITECTURES._table.pop(ARCH, None)
    yield import_plugin(str(EXAMPLE))
    for registry, table in saved.items():
        registry._table.clear()
        registry._table.update(table)


def tiny(ex, **overrides) -> torch.nn.Module:
    """A 2-layer ALiBiParallelLM (4 query heads sharing 2 kv heads), in eval mode."""
    torch.manual_seed(0)
    return ex.ALiBiParallelLM(ModelConfig.from_preset("debug", pos_encoding="alibi", **overrides)).eval()


# ---------------------------------------------------------------------------------------------- unit
def definitions() -> list[str]:
    """The example's code lines between its module docstring and the ``__main__`` demo."""
    tree = ast.parse(EXAMPLE.read_text(encoding="utf-8"))
    demo = next(node for node in tree.body if isinstance(node, ast.If))
    return EXAMPLE.read_text(encoding="utf-8").splitlines()[tree.body[0].end_lineno:demo.lineno - 1]


def test_the_example_is_short_and_the_guide_shows_it_verbatim():
    docstrings = {line for node in ast.walk(ast.parse("\n".join(definitions())))
                  if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and ast.get_docstring(node)
                  for line in range(node.body[0].lineno, node.body[0].end_lineno + 1)}
    code = [line for i, line in enumerate(definitions(), 1)
            if i not in docstrings and line.strip() and not line.strip().startswith("#")]
    assert len(code) <= 45, f"{len(code)} lines of definitions; the example promises about 40"
    guide = (ROOT / "docs" / "guides" / "new-architecture.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```python\n(.*?)^```", guide, re.S | re.M)  # the blocks tests/test_docs.py runs
    assert blocks and blocks[0].startswith("\n".join(definitions()).strip() + "\n")


def test_slopes_follow_the_paper(ex):
    assert ex.alibi_slopes(4).tolist() == [2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8]
    assert ex.alibi_slopes(8).tolist() == [2.0 ** -h for h in range(1, 9)]
    # 6 heads: the 4-head slopes, then the odd-h slopes of 8 heads (Press et al.'s reference get_slopes)
    assert ex.alibi_slopes(6).tolist() == [2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8, 2 ** -1, 2 ** -3]


def test_bias_equals_a_hand_computed_tensor(ex):
    # 2 heads (slopes 1/2, 1/8); 2 queries that are the last 2 of 3 keys, i.e. at positions 1 and 2.
    bias = ex.alibi_bias(torch.tensor([0.5, 0.125]), q_len=2, k_len=3)
    expected = torch.tensor([
        [[-0.5, 0.0, 0.5],  # query 1 on keys 0, 1, 2: −m·(1 − j); key 2 is in the future (masked later)
         [-1.0, -0.5, 0.0]],  # query 2
        [[-0.125, 0.0, 0.125],
         [-0.25, -0.125, 0.0]],
    ])
    assert torch.equal(bias, expected)


def test_bias_reaches_the_attention_weights(ex):
    """With zero queries every score is the bias alone: the weights are softmax(−m·(i − j)) over j ≤ i."""
    attn = tiny(ex).blocks[0].attn
    q = torch.zeros(1, 4, 3, 8)  # (B, H, T, hd)
    k, v = torch.randn(1, 2, 3, 8), torch.randn(1, 2, 3, 8)  # 2 kv heads (GQA)
    weights: list[torch.Tensor] = []
    attn.attend(q, k, v, None, True, weights)
    m = attn.slopes[0].item()  # 1/4
    row2 = torch.tensor([math.exp(-2 * m), math.exp(-m), 1.0])
    torch.testing.assert_close(weights[0][0, 0, 2], row2 / row2.sum())
    torch.testing.assert_close(weights[0][0, 0, 0], torch.tensor([1.0, 0.0, 0.0]))  # causal: only itself


def test_block_has_one_norm_and_every_parameter_gets_a_gradient(ex):
    model = tiny(ex).train()
    assert all(b.mlp_norm is None for b in model.blocks)
    assert not [n for n, _ in model.named_parameters() if "mlp_norm" in n]
    assert model.pos_embeddings is None and model.rotary is None  # positions live in the attention bias
    ids = torch.randint(0, 256, (2, 12))
    torch.nn.functional.cross_entropy(model(ids).flatten(0, 1), ids.roll(-1, 1).flatten()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert missing == []

    class BothNorms(ex.ParallelBlock):  # the bug the norm slots prevent: a norm that never sees a gradient
        norm_slots = ("attn_norm", "mlp_norm")

    leaky = type("Leaky", (ex.ALiBiParallelLM,), {"block_cls": BothNorms})(model.config)
    leaky(ids).sum().backward()
    assert [n for n, p in leaky.named_parameters() if p.grad is None] == [
        "blocks.0.mlp_norm.weight", "blocks.1.mlp_norm.weight"]


def test_needs_alibi_positions(ex):
    with pytest.raises(ConfigError, match="needs pos_encoding='alibi', got 'rope'.*--set pos_encoding=alibi"):
        ex.ALiBiParallelLM(ModelConfig.from_preset("debug"))


def test_cached_greedy_equals_uncached_and_batched_equals_single(ex):
    model = tiny(ex)
    prompts = [torch.randint(0, 256, (n,)) for n in (7, 3, 5)]
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, p in enumerate(prompts):  # left padding with a real token id (0): only the mask hides it
        ids[r, width - len(p):], mask[r, width - len(p):] = p, 1
    cached = model.generate(ids, attention_mask=mask, max_new_tokens=12)
    uncached = model.generate(ids, attention_mask=mask, max_new_tokens=12, use_cache=False)
    assert torch.equal(cached, uncached)
    for r, p in enumerate(prompts):
        alone = model.generate(p[None], max_new_tokens=12)
        assert torch.equal(cached[r, width:], alone[0, len(p):])
    # the logits behind it: a cached step sees what the full forward sees at that position
    longer = torch.cat([mask, torch.ones(3, 1, dtype=torch.long)], dim=1)  # (B, width + 1)
    full = model(cached[:, :width + 1], attention_mask=longer)
    cache = model.make_cache(3)
    model(ids, attention_mask=mask, kv_cache=cache)
    step = model(cached[:, width:width + 1], attention_mask=longer, kv_cache=cache)
    torch.testing.assert_close(step[:, -1], full[:, -1], rtol=1e-5, atol=1e-5)


def test_sdpa_path_equals_reference_path(ex):
    model = tiny(ex)
    ids = torch.randint(0, 256, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # one left-padded row: the bias is combined with a boolean padding mask
    fused = model(ids, attention_mask=mask)
    for block in model.blocks:
        block.attn.use_sdpa = False
    reference = model(ids, attention_mask=mask)
    torch.testing.assert_close(reference, fused, rtol=1e-5, atol=1e-5)
    weights: list[torch.Tensor] = []
    model.forward_hidden(ids, attention_mask=mask, attn_weights=weights)  # the attention-map path
    assert [tuple(w.shape) for w in weights] == [(2, 4, 9, 9)] * 2
    assert weights[0][1, :, 4:, :4].abs().max() == 0  # padding keys get no weight from real queries


def test_compiles_with_no_graph_break(ex):
    """The bias is built from shapes only (no host sync), so dynamo traces training and a cached step whole."""
    torch._dynamo.reset()
    model = tiny(ex, n_layers=1, max_seq_len=16).train()
    try:
        explained = torch._dynamo.explain(model)(torch.randint(0, 256, (2, 8)))
        assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
        model.eval()
        x, mask = torch.randint(0, 256, (2, 8)), torch.ones(2, 9, dtype=torch.long)
        mask[1, :3] = 0  # left padding: the float bias is combined with the boolean padding mask
        cache = model.make_cache(2, 16)
        with torch.no_grad():
            model(x, attention_mask=mask[:, :8], kv_cache=cache)  # prefill, eager
            explained = torch._dynamo.explain(model)(x[:, -1:], attention_mask=mask, kv_cache=cache, logits_to_keep=1)
        assert explained.graph_break_count == 0, explained.break_reasons
        assert cache.length == 9  # the traced step really ran
    finally:
        torch._dynamo.reset()


@pytest.fixture
def by_module_name(monkeypatch):
    """``import alibi_parallel`` works (examples/ on sys.path); the module is forgotten afterwards."""
    monkeypatch.syspath_prepend(str(EXAMPLE.parent))
    sys.modules.pop("alibi_parallel", None)
    yield
    sys.modules.pop("alibi_parallel", None)


def test_importing_the_file_twice_under_two_names(ex, by_module_name, tmp_path):
    """``--import path.py`` and ``import alibi_parallel`` make two modules of one definition: both register."""
    import alibi_parallel  # registers again, under the module name alibi_parallel

    assert ex.__name__ != alibi_parallel.__name__ and ex.ALiBiParallelLM is not alibi_parallel.ALiBiParallelLM
    assert ARCHITECTURES.get(ARCH) is alibi_parallel.ALiBiParallelLM  # the newest copy is the registered one
    model = tiny(ex)  # the first copy's class saves; the registered (second) copy loads
    model.save_pretrained(tmp_path)
    loaded = load_model(tmp_path)
    assert type(loaded) is alibi_parallel.ALiBiParallelLM
    ids = torch.randint(0, 256, (1, 6))
    assert torch.equal(loaded(ids), model(ids))
    import_plugin(str(EXAMPLE))  # and by path once more
    assert ARCHITECTURES.get(ARCH).__module__ == ex.__name__
    second = alibi_parallel.ALiBiParallelLM  # no longer the registered copy, still loads its own directory
    assert type(second.from_pretrained(tmp_path)) is second


def test_another_class_under_the_same_name_is_still_refused(ex, tmp_path):
    impostor = tmp_path / "impostor.py"
    impostor.write_text("from llmcore.models import TransformerLM, register_architecture\n\n\n"
                        "@register_architecture\nclass ALiBiParallelLM(TransformerLM):\n    pass\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="'ALiBiParallelLM' is already registered to .*alibi_parallel"):
        import_plugin(str(impostor))
    assert ARCHITECTURES.get(ARCH).__module__ == ex.__name__


def test_demo_runs(ex, capsys):
    """``python examples/alibi_parallel.py``, in this process (a new interpreter would cost more than the demo)."""
    saved = dict(ARCHITECTURES._table)
    try:
        runpy.run_path(str(EXAMPLE), run_name="__main__")  # registers a third copy, from module __main__
    finally:
        ARCHITECTURES._table.clear()
        ARCHITECTURES._table.update(saved)
    out = capsys.readouterr().out
    assert "ALiBiParallelLM: 47,200 parameters; logits (2, 8, 256)" in out and "cached == uncached" in out


# ---------------------------------------------------------------------------------------------- commands
# A flat learning rate: a resumed run with a larger --max-steps then takes the same steps as one straight run.
COMMON = ["--arch", ARCH, "--preset", "debug", "--set", "pos_encoding=alibi", "--set", "max_seq_len=32",
          "--lr", "0.01", "--set", "schedule=constant", "--set", "warmup_steps=0", "--eval-interval", "2",
          "--set", "eval_batches=2", "--set", "log_interval=1", "--set", "num_samples=0", "--device", "cpu",
          "--no-progress"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """6,000 characters of the bundled Shakespeare: a char vocabulary of ~60 and a val split of 600 tokens."""
    path = tmp_path_factory.mktemp("corpus") / "shakespeare.txt"
    path.write_text(read_file(bundled_corpus_path())[:6000], encoding="utf-8")
    return path


def train_args(corpus: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--import", str(EXAMPLE), "--data", str(corpus), "--out", str(out), *COMMON, *extra]


@pytest.fixture(scope="module")
def straight(ex, corpus, tmp_path_factory) -> Path:
    """One uninterrupted ``llmcore train`` of 4 steps, batch 4."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the per-test fixture would; module fixtures run before it
    out = tmp_path_factory.mktemp("runs") / "straight"
    try:
        assert main(train_args(corpus, out, "--batch-size", "4", "--max-steps", "4")) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def metrics(out: Path) -> list[tuple[int, str, float]]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], k, r[k]) for r in rows for k in ("train_loss", "val_loss") if k in r]


def test_train_writes_a_run_directory_naming_the_architecture(straight):
    meta = json.loads((straight / "config.json").read_text())
    assert meta["architecture"] == ARCH and meta["config"]["pos_encoding"] == "alibi"
    assert [s for s, k, _ in metrics(straight) if k == "train_loss"] == [1, 2, 3, 4]
    model = load_model(straight)
    assert type(model).__name__ == ARCH and model.blocks[0].mlp_norm is None
    assert (straight / "trainer_state" / "ckpt-000004").is_dir()


def test_resume_with_more_steps_equals_the_uninterrupted_run(ex, corpus, straight, tmp_path, capsys):
    out = tmp_path / "split"
    assert main(train_args(corpus, out, "--batch-size", "4", "--max-steps", "2")) == 0
    assert main(train_args(corpus, out, "--batch-size", "4", "--max-steps", "4", "--resume")) == 0
    assert metrics(out) == metrics(straight)  # every train and val loss, exactly; no duplicated rows
    a = load_file(straight / "trainer_state" / "ckpt-000004" / "model.safetensors")
    b = load_file(out / "trainer_state" / "ckpt-000004" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert "trained 4 steps" in capsys.readouterr().out


def test_eval_equals_trainer_evaluate(ex, straight, capsys):
    capsys.readouterr()
    assert main(["eval", "--import", str(EXAMPLE), "--model", str(straight), "--batch-size", "4",
                 "--device", "cpu"]) == 0
    line = capsys.readouterr().out.strip()
    found = re.fullmatch(r".*: loss (\S+), perplexity (\S+), token accuracy (\S+)", line)
    assert found, line
    loss, ppl, acc = map(float, found.groups())
    assert math.isfinite(loss) and 0 < loss < math.log(64) + 1 and abs(ppl - math.exp(loss)) < 0.01 * ppl
    model = load_model(straight)
    data = val_split(straight / "data", model.config.max_seq_len)
    trainer = Trainer(model, TrainConfig(batch_size=4, device="cpu", progress=False, num_samples=0), data, data)
    m = trainer.evaluate(max_batches=10 ** 6)  # the whole split, as eval does without --max-batches
    assert line.endswith(f"loss {m['val_loss']:.4f}, perplexity {m['val_ppl']:.2f}, "
                         f"token accuracy {m['val_acc']:.4f}")


def test_generate_equals_load_model_generate(ex, straight, capsys):
    capsys.readouterr()
    assert main(["generate", "--import", str(EXAMPLE), "--model", str(straight), "--prompt", "ROMEO:",
                 "--max-new-tokens", "16", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    tokenizer = load_tokenizer(straight)
    ids = torch.tensor([tokenizer.encode("ROMEO:")])
    out = load_model(straight).generate(ids, max_new_tokens=16, tokenizer=tokenizer)
    assert out.shape[1] > ids.shape[1]
    assert printed == "ROMEO:" + tokenizer.decode(out[0, ids.shape[1]:].tolist()) + "\n"


def test_plot_draws_the_attention_maps(ex, straight, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "attention.png"
    assert main(["plot", "--import", str(EXAMPLE), str(straight), "--attention", "ROMEO:", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("command", ["generate", "eval"])
def test_loading_without_import_names_the_architecture_and_the_flag(ex, straight, capsys, monkeypatch, command):
    monkeypatch.delitem(ARCHITECTURES._table, ARCH)  # as in a fresh process that never imported the example
    capsys.readouterr()
    assert main([command, "--model", str(straight), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"'{ARCH}'" in err and "--import FILE_OR_MODULE" in err, err


def test_two_process_ddp_equals_one_process_with_twice_the_batch(corpus, straight, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "llmcore",
           *train_args(corpus, out, "--batch-size", "2", "--max-steps", "4")]
    # its own process group, so a hang kills torchrun and both workers, and fails the test instead of CI
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("2-process gloo training did not finish in 180 s")
    assert proc.returncode == 0, log[-3000:]
    ddp, single = metrics(out), metrics(straight)
    assert [(s, k) for s, k, _ in ddp] == [(s, k) for s, k, _ in single]
    assert [v for *_, v in ddp] == pytest.approx([v for *_, v in single], abs=1e-5)
    assert json.loads((out / "config.json").read_text())["architecture"] == ARCH  # rank 0 saved it
