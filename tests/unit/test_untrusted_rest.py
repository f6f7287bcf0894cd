"""Issue 16, the last silent acceptances: NaN logits while sampling, non-finite weights, extra TSV fields and a
half-applied LoRA adapter. Each is one :class:`LLMCoreError` (through the CLI: exit status 2, one stderr line,
no traceback) instead of a traceback, a silently wrong result or a half-changed model.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

import helpers
from llmcore import ModelConfig
from llmcore.errors import CheckpointError, DataError, GenerationError
from llmcore.finetune.lora import LoRA, LoRALinear, load_adapter, save_adapter
from llmcore.finetune.pairs import read_pairs
from llmcore.generation import GenerationConfig, generate
from llmcore.models import load_model
from llmcore.models.transformer import TransformerLM
from llmcore.tokenizer import CharTokenizer


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("models")
    tok = CharTokenizer.from_text("hello good night abcdefghijklmnopqrstuvwxyz", specials=("<bos>", "<eos>", "<pad>"))
    torch.manual_seed(0)
    model = TransformerLM(ModelConfig.from_preset("debug", vocab_size=tok.vocab_size))
    model.save_pretrained(root / "lm", tokenizer=tok)
    state = load_file(str(root / "lm" / "model.safetensors"))
    (root / "nan").mkdir()
    for f in ("config.json",):
        (root / "nan" / f).write_bytes((root / "lm" / f).read_bytes())
    bad = sorted(state)[:2]
    save_file({k: (torch.full_like(v, float("nan")) if k == bad[0] else
                   torch.full_like(v, float("inf")) if k == bad[1] else v) for k, v in state.items()},
              str(root / "nan" / "model.safetensors"), metadata={"format": "pt"})
    return root, bad


def one_line_error(capsys, argv: list[str], command: str) -> str:
    return helpers.one_line_error(capsys, argv, command, prefix="")


# ------------------------------------------------------------------------------------------- 1. NaN logits
@pytest.fixture
def diverged(monkeypatch):
    """The model's logits are NaN (a model that diverged, or NaN weights that were never saved)."""
    from llmcore.generation import decode

    real = decode.ModelRunner.logits
    monkeypatch.setattr(decode.ModelRunner, "logits", lambda self, *a, **k: real(self, *a, **k) * float("nan"))


@pytest.mark.parametrize("sample", [True, False])
def test_nan_logits_raise_a_generation_error(models, diverged, sample):
    model = load_model(models[0] / "lm")
    ids = torch.tensor([[1, 2, 3]])
    cfg = GenerationConfig(max_new_tokens=4, do_sample=sample, seed=0)
    with pytest.raises(GenerationError, match="non-finite logits .* step 0.*NaN/inf or it diverged"):
        generate(model, ids, config=cfg)


def test_nan_logits_in_beam_search_and_streaming_raise_before_any_token(models, diverged):
    from llmcore.generation import stream

    model = load_model(models[0] / "lm")
    ids = torch.tensor([[1, 2, 3]])
    with pytest.raises(GenerationError, match="non-finite logits .* step 0"):
        generate(model, ids, config=GenerationConfig(max_new_tokens=4, num_beams=3))
    got = []
    with pytest.raises(GenerationError, match="non-finite logits .* step 0"):
        for tok in stream(model, ids, config=GenerationConfig(max_new_tokens=4)):  # greedy, no stop condition
            got.append(tok)
    assert got == []  # nothing chosen from NaN logits was handed out


def test_nan_logits_mid_stream_stop_the_stream_at_that_step(models, monkeypatch):
    from llmcore.generation import decode, stream

    real, calls = decode.ModelRunner.logits, []

    def nan_from_step_2(self, *a, **k):
        calls.append(1)
        out = real(self, *a, **k)
        return out * float("nan") if len(calls) > 2 else out

    monkeypatch.setattr(decode.ModelRunner, "logits", nan_from_step_2)
    got = []
    with pytest.raises(GenerationError, match="non-finite logits .* step 2"):
        for tok in stream(load_model(models[0] / "lm"), torch.tensor([[1, 2, 3]]), config=GenerationConfig(max_new_tokens=6)):
            got.append(tok)
    assert len(got) == 2


def test_nan_logits_through_the_cli(models, diverged, capsys):
    line = one_line_error(capsys, ["generate", "--model", str(models[0] / "lm"), "--prompt", "hello",
                                   "--max-new-tokens", "3", "--do-sample", "--seed", "0"], "generate")
    assert "non-finite logits" in line


def test_masked_logits_still_sample(models):
    model = load_model(models[0] / "lm")  # -inf from top-k is not an error
    out = generate(model, torch.tensor([[1, 2]]), config=GenerationConfig(max_new_tokens=3, do_sample=True,
                                                                          top_k=2, seed=0))
    assert out.shape == (1, 5)


# ------------------------------------------------------------------------------------------- 2. NaN weights
def test_non_finite_weights_are_refused_at_load(models):
    root, bad = models
    with pytest.raises(CheckpointError, match="NaN or inf") as e:
        load_model(root / "nan")
    assert bad[0] in str(e.value) and bad[1] in str(e.value)
    with pytest.raises(CheckpointError, match="NaN or inf"):
        TransformerLM.from_pretrained(root / "nan")


def test_non_finite_weights_through_the_cli(models, capsys):
    root, bad = models
    line = one_line_error(capsys, ["generate", "--model", str(root / "nan"), "--tokenizer", str(root / "lm"),
                                   "--prompt", "hello", "--max-new-tokens", "2"], "generate")
    assert "NaN or inf" in line and bad[0] in line


# ------------------------------------------------------------------------------------------- 3. extra TSV fields
def test_a_row_with_more_fields_than_the_header_is_refused(tmp_path):
    f = tmp_path / "pairs.tsv"
    f.write_text("src\ttgt\nhello\tgood\nhello\tgood\tnight\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"pairs.tsv:3 has 3 tab-separated fields but the header has 2"):
        read_pairs(f)
    f.write_text("src\ttgt\tnote\nhello\tgood\n", encoding="utf-8")  # fewer fields: the named columns decide
    assert read_pairs(f) == [("hello", "good")]


def test_extra_tsv_fields_through_the_cli(models, tmp_path, capsys):
    f = tmp_path / "pairs.tsv"
    f.write_text("text\tlabel\nhello\tgood\tnight\n", encoding="utf-8")
    line = one_line_error(capsys, ["finetune", "--model", str(models[0] / "lm"), "--task", "classify", "--data", str(f),
                                   "--out", str(tmp_path / "out")], "finetune")
    assert ":2 has 3 tab-separated fields" in line


# ------------------------------------------------------------------------------------------- 4. load_adapter
def _types(model):
    return {n: type(m) for n, m in model.named_modules()}


@pytest.mark.parametrize("damage", ["missing", "shape"])
def test_a_failed_load_adapter_leaves_the_model_as_it_was(models, tmp_path, damage):
    root, _ = models
    donor = load_model(root / "lm")
    lora = LoRA(rank=4, alpha=8, targets=("qkv_proj", "out_proj", "up_proj"), modules_to_save=("lm_head",))
    lora.apply(donor)
    save_adapter(donor, tmp_path, lora)
    state = load_file(str(tmp_path / "adapter_model.safetensors"))
    keys = sorted(state)
    if damage == "missing":
        state.pop(next(k for k in keys if k.endswith("lora_B")))
    else:
        k = next(k for k in keys if k.endswith("lora_A"))
        state[k] = torch.zeros(state[k].shape[0] + 1, state[k].shape[1])
    for k in keys:  # a base tensor saved with the adapter would be copied in before the failure was noticed
        if k in state and not k.endswith(("lora_A", "lora_B")):
            state[k] = torch.full_like(state[k], 7.0)
    save_file(state, str(tmp_path / "adapter_model.safetensors"))

    model = load_model(root / "lm")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    types, grads = _types(model), {n: p.requires_grad for n, p in model.named_parameters()}
    with pytest.raises(CheckpointError, match="does not fit this model"):
        load_adapter(model, tmp_path)
    assert _types(model) == types
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    after = model.state_dict()
    assert sorted(after) == sorted(before)
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads


def test_load_adapter_still_loads(models, tmp_path):
    root, _ = models
    donor = load_model(root / "lm")
    lora = LoRA(rank=4, alpha=8)
    lora.apply(donor)
    with torch.no_grad():
        for m in donor.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.fill_(0.5)
    save_adapter(donor, tmp_path, lora)
    model = load_adapter(load_model(root / "lm"), tmp_path)
    assert all(torch.equal(v, donor.state_dict()[k]) for k, v in model.state_dict().items())
