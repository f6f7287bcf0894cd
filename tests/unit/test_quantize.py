"""Int8 quantization (issue 19): Int8Linear against its dequantized weights, batch invariance, save -> load
without re-quantizing, the --quantize flag of generate / translate / serve, and refusals."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from helpers import one_line_error
from llmcore import ModelConfig, TransformerLM
from llmcore.cli import main
from llmcore.errors import CheckpointError, ConfigError, TrainingError
from llmcore.generation import generate
from llmcore.models import Seq2SeqConfig, Seq2SeqTransformer
from llmcore.modules.quantized import REDUCE_RANGE, SCHEMES, Int8Linear, has_quantized, quantize_weight
from llmcore.tokenizer import CharTokenizer


def tiny_lm(**kw) -> TransformerLM:
    torch.manual_seed(0)
    cfg = dict(vocab_size=97, d_model=64, n_layers=2, n_heads=4, max_seq_len=64) | kw
    return TransformerLM(ModelConfig(**cfg)).eval()


def dequantized_copy(q: torch.nn.Module, float_model: torch.nn.Module) -> torch.nn.Module:
    """``float_model`` with every linear's weight replaced by what the int8 one in ``q`` stands for."""
    state = {k: v.clone() for k, v in float_model.state_dict().items()}
    for name, m in q.named_modules():
        if isinstance(m, Int8Linear):
            state[f"{name}.weight"] = m.dequantized()
    float_model.load_state_dict(state)
    return float_model


# ------------------------------------------------------------------------------------------- the layer
def test_int8_linear_is_within_the_activation_rounding_bound_of_its_dequantized_weights():
    torch.manual_seed(0)
    lin = torch.nn.Linear(96, 40)
    q = Int8Linear.from_linear(lin)
    w = q.dequantized()
    assert (w - lin.weight).abs().max() <= q.scale.max() / 2 + 1e-7  # weight rounding: half a step per channel
    x = torch.randn(7, 96) * torch.logspace(-2, 2, 7)[:, None]  # rows of very different sizes
    with torch.no_grad():
        y, ref = q(x), F.linear(x, w, lin.bias)
    # each row is rounded to multiples of amax / (2^(b-1) - 1) (b = 8, or 7 with REDUCE_RANGE): error <= half of one
    step = 1 / (63 if REDUCE_RANGE else 127)
    amax = x.abs().amax(1, keepdim=True)
    bound = amax * (step / 2) * w.abs().sum(1) + 1e-5 * ref.abs().max()
    assert ((y - ref).abs() <= bound).all()
    assert (y - ref).abs().max() > 0  # activations really are quantized (not a float matmul in disguise)
    assert (y - ref).norm() / ref.norm() < 0.02
    slope = float((y * ref).sum() / (ref * ref).sum())  # rounding noise is unbiased: no systematic scale error
    assert abs(slope - 1) < 2e-3, slope
    levels = 63 if REDUCE_RANGE else 127
    grid = torch.randint(-levels, levels + 1, (3, 96))
    grid[:, 0] = levels  # each row's maximum, so a row is its own grid: it goes through exactly (int32 sums)
    grid = grid.float() * 0.25
    with torch.no_grad():
        assert torch.allclose(q(grid), F.linear(grid, w, lin.bias), rtol=0, atol=1e-5)


def test_int8_linear_rows_do_not_depend_on_the_rest_of_the_batch():
    torch.manual_seed(1)
    q = Int8Linear.from_linear(torch.nn.Linear(64, 33))
    x = torch.randn(5, 3, 64)
    x[2] *= 100  # a row with a far larger range must not change the others' scales
    with torch.no_grad():
        batched = q(x)
        alone = torch.stack([q(x[i:i + 1])[0] for i in range(5)])
    assert torch.equal(batched, alone)
    assert batched.shape == (5, 3, 33)


def test_int8_linear_keeps_float32_scales_under_dtype_casts_and_runs_bf16_inputs():
    q = Int8Linear.from_linear(torch.nn.Linear(32, 16))
    scale = q.scale.clone()
    q.to(torch.bfloat16)
    assert q.scale.dtype == torch.float32 and torch.equal(q.scale, scale) and q.weight.dtype == torch.int8
    with torch.no_grad():
        y = q(torch.randn(2, 32, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16


def test_quantize_weight_is_symmetric_per_channel():
    w = torch.tensor([[1.0, -0.5, 0.25], [0.0, 0.0, 0.0], [-3.0, 3.0, 1.5]])
    q, s = quantize_weight(w)
    assert q.dtype == torch.int8 and q.abs().max() == 127
    assert torch.allclose(q.float() * s[:, None], w, atol=float(s.max()) / 2)
    assert q[1].abs().sum() == 0  # an all-zero channel stays zero (no division by zero)


# ------------------------------------------------------------------------------------------- models
def test_quantized_model_matches_its_dequantized_weights_model():
    model = tiny_lm()
    q = tiny_lm().quantize("int8")
    assert has_quantized(q) and q.quantization["scheme"] == "int8"
    assert {"lm_head", "blocks.0.attn.qkv_proj", "blocks.1.mlp.down_proj"} <= set(q.quantization["modules"])
    assert isinstance(q.tok_embeddings, torch.nn.Embedding)  # the lookup stays float (tied head or not)
    ref = dequantized_copy(q, model)
    ids = torch.randint(0, 97, (3, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = q(ids), ref(ids)
    assert (a - b).norm() / b.norm() < 0.03
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.9


def test_quantized_greedy_batched_equals_one_at_a_time():
    q = tiny_lm().quantize("int8")
    prompts = [[5, 6, 7, 8, 9], [3], [10, 11, 12]]
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        batched = generate(q, ids, attention_mask=mask, max_new_tokens=8, eos_token_id=[])[:, width:]
        alone = [generate(q, torch.tensor([p]), max_new_tokens=8, eos_token_id=[])[0, len(p):] for p in prompts]
    assert all(torch.equal(batched[i], alone[i]) for i in range(len(prompts)))


def test_quantized_save_loads_identical_outputs_without_requantizing(tmp_path):
    q = tiny_lm().quantize("int8")
    q.save_pretrained(tmp_path / "q")
    meta = json.loads((tmp_path / "q" / "config.json").read_text())
    assert meta["quantization"]["scheme"] == "int8"
    with safe_open(str(tmp_path / "q" / "model.safetensors"), "pt") as f:
        assert f.get_tensor("blocks.0.mlp.up_proj.weight").dtype == torch.int8
        assert f.get_tensor("blocks.0.mlp.up_proj.scale").dtype == torch.float32
        assert f.get_tensor("lm_head.weight").dtype == torch.int8  # the head is stored apart from the embedding
    loaded = TransformerLM.from_pretrained(tmp_path / "q")
    for name, m in loaded.named_modules():
        if isinstance(m, Int8Linear):  # the int8 weights on disk, not a re-quantization of dequantized ones
            assert torch.equal(m.weight, q.get_submodule(name).weight)
    ids = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(loaded(ids), q(ids))
    size = (tmp_path / "q" / "model.safetensors").stat().st_size
    tiny_lm().save_pretrained(tmp_path / "f")
    assert size < 0.6 * (tmp_path / "f" / "model.safetensors").stat().st_size


def test_seq2seq_quantizes_and_reloads(tmp_path):
    torch.manual_seed(0)
    cfg = Seq2SeqConfig(vocab_size=50, max_seq_len=24, d_model=32, n_layers=1, n_heads=4)
    model = Seq2SeqTransformer(cfg).eval()
    src, tgt = torch.randint(0, 50, (2, 9)), torch.randint(0, 50, (2, 6))
    with torch.no_grad():
        ref = model(tgt, src_ids=src)
        q = model.quantize("int8")
        out = q(tgt, src_ids=src)
    assert (out - ref).norm() / ref.norm() < 0.05
    q.save_pretrained(tmp_path / "s")
    with torch.no_grad():
        assert torch.equal(Seq2SeqTransformer.from_pretrained(tmp_path / "s")(tgt, src_ids=src), out)


# ------------------------------------------------------------------------------------------- refusals
def test_bad_quantization_requests_are_refused_with_the_fix(tmp_path):
    with pytest.raises(ConfigError, match="Unknown quantization scheme 'int3'.*int8"):
        tiny_lm().quantize("int3")
    with pytest.raises(ConfigError, match="training mode.*model.eval"):
        tiny_lm().train().quantize("int8")
    q = tiny_lm().quantize("int8")
    with pytest.raises(ConfigError, match="already quantized"):
        q.quantize("int8")
    from llmcore.training import Trainer

    trainer = Trainer(q, {"max_steps": 1, "device": "cpu", "progress": False, "out_dir": str(tmp_path / "run")},
                      train_data=_NoData())
    with pytest.raises(TrainingError, match="quantized.*train the float model"):
        trainer.fit()
    assert not (tmp_path / "run").exists()  # refused before the run directory is claimed
    emb = q.tok_embeddings.weight.detach().clone().requires_grad_(True)
    with pytest.raises(ConfigError, match="inference"):
        q.lm_head(emb[:2])


class _NoData:
    def sample_batch(self, *a, **k):  # pragma: no cover - never reached: the Trainer refuses first
        raise AssertionError


def test_damaged_quantization_entries_are_refused_on_load(tmp_path):
    q = tiny_lm().quantize("int8")
    q.save_pretrained(tmp_path / "q")
    with pytest.raises(CheckpointError, match="Hugging Face layout"):
        q.save_pretrained(tmp_path / "hf", format="hf")
    assert not (tmp_path / "hf").exists()
    path = tmp_path / "q" / "config.json"
    meta = json.loads(path.read_text())
    for bad, match in [({"scheme": "int4", "modules": []}, "'quantization' must be"),
                       ({"scheme": "int8", "modules": "lm_head"}, "'quantization' must be"),
                       ({"scheme": "int8", "modules": ["blocks.0.norm1"]}, "not an nn.Linear"),
                       ({"scheme": "int8", "modules": ["no.such.module"]}, "not an nn.Linear")]:
        path.write_text(json.dumps(meta | {"quantization": bad}))
        with pytest.raises(CheckpointError, match=match):
            TransformerLM.from_pretrained(tmp_path / "q")
    path.write_text(json.dumps({k: v for k, v in meta.items() if k != "quantization"}))
    with pytest.raises(CheckpointError):  # int8 tensors where a float model expects float weights
        TransformerLM.from_pretrained(tmp_path / "q")


# ------------------------------------------------------------------------------------------- commands
def test_cli_schemes_are_the_library_schemes():
    from llmcore.cli.common import QUANTIZE_SCHEMES

    assert QUANTIZE_SCHEMES == SCHEMES


@pytest.mark.parametrize("command", ["generate", "translate", "serve"])
def test_every_decoding_command_takes_quantize(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert "--quantize {int8}" in capsys.readouterr().out
    argv = [command, "--model", "x", "--quantize", "int4"] + (["hi"] if command == "translate" else [])
    assert "invalid choice: 'int4'" in one_line_error(capsys, argv, command, prefix="")


def test_generate_quantize_equals_the_python_api(tmp_path, capsys):
    tok = CharTokenizer.from_text("abcdefgh ", specials=("<bos>", "<eos>", "<pad>"))
    model = tiny_lm(vocab_size=tok.vocab_size)
    model.save_pretrained(tmp_path / "m", tokenizer=tok)
    assert main(["generate", "--model", str(tmp_path / "m"), "--prompt", "abc", "--max-new-tokens", "12",
                 "--quantize", "int8"]) == 0
    out = capsys.readouterr().out
    q = TransformerLM.from_pretrained(tmp_path / "m").quantize("int8")
    ids = torch.tensor([tok.encode("abc")])
    with torch.no_grad():
        expected = tok.decode(generate(q, ids, max_new_tokens=12, eos_token_id=tok.eos_id)[0].tolist())
    assert out.strip() == expected.strip()


def test_a_trained_translator_still_translates_after_int8(tmp_path, capsys):
    from llmcore.training import TrainConfig, Trainer
    from llmcore.translation import Seq2SeqPairs

    pairs = [("hello", "你好"), ("good morning", "早上好"), ("thank you", "谢谢你"), ("good night", "晚安")]
    tok = CharTokenizer.from_text("".join(s + t for s, t in pairs) + " ",
                                  specials=("<bos>", "<eos>", "<pad>", "<2en>", "<2zh>"))
    torch.manual_seed(0)
    model = Seq2SeqTransformer(Seq2SeqConfig(vocab_size=tok.vocab_size, max_seq_len=24, d_model=32, n_layers=1,
                                             n_heads=4, pos_encoding="learned"))
    cfg = TrainConfig(max_steps=100, batch_size=8, lr=5e-3, warmup_steps=0, eval_interval=1000, progress=False,
                      num_samples=0, device="cpu")
    Trainer(model, cfg, Seq2SeqPairs(pairs * 4, tok, src_len=16, tgt_len=8)).fit()
    model.eval().save_pretrained(tmp_path / "m", tokenizer=tok)
    assert main(["translate", "--model", str(tmp_path / "m"), "--quantize", "int8", *[s for s, _ in pairs]]) == 0
    assert capsys.readouterr().out.splitlines() == [t for _, t in pairs]
