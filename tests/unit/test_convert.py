"""llmcore.convert without transformers: exact round trips, error messages, sharded directories, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from llmcore import CheckpointError, ModelConfig, TransformerLM
from llmcore.cli import main
from llmcore.convert import hf_to_llmcore, llmcore_to_hf
from llmcore.models.hf import load_hf, parse_size, save_hf
from llmcore.tokenizer import ByteTokenizer, SentencePieceTokenizer, load_tokenizer

GPT2_SHAPED = dict(vocab_size=128, max_seq_len=64, d_model=32, n_layers=2, n_heads=4, activation="gelu_tanh",
                   pos_encoding="learned", norm="layernorm", bias=True, tie_embeddings=True, extra={"note": "x"})
LLAMA_SHAPED = dict(vocab_size=128, max_seq_len=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                    pos_encoding="rope", norm="rmsnorm", activation="swiglu", bias=False, tie_embeddings=False)
ROUND_TRIP = {
    "gpt2": GPT2_SHAPED,
    "gpt2-untied": {**GPT2_SHAPED, "tie_embeddings": False, "activation": "gelu"},
    "llama-gqa": LLAMA_SHAPED,
    "llama-mqa-bias-tied": {**LLAMA_SHAPED, "n_kv_heads": 1, "bias": True, "tie_embeddings": True,
                            "rope_theta": 5e5, "norm_eps": 1e-5},
}


def random_model(**overrides) -> TransformerLM:
    model = TransformerLM(ModelConfig(**overrides))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.1)  # biases and norm gains too, so a dropped or swapped tensor shows
    return model.eval()


def own_tensors(model: TransformerLM) -> dict[str, torch.Tensor]:
    """The state dict without the tied head copy (what is stored on disk)."""
    state = model.state_dict()
    if model.config.tie_embeddings:
        state.pop("lm_head.weight")
    return state


@pytest.mark.parametrize("case", list(ROUND_TRIP))
def test_round_trip_is_exact(case):
    model = random_model(**ROUND_TRIP[case])
    hf_config, hf_state = llmcore_to_hf(model.config, model.state_dict())
    assert hf_config["model_type"] == case.split("-")[0]
    assert {"architectures", "dtype", "torch_dtype"} <= set(hf_config)
    json.dumps(hf_config)  # it must be writable as config.json
    config, state = hf_to_llmcore(hf_config, hf_state)
    want = own_tensors(model)
    assert state.keys() == want.keys()
    for name, t in want.items():
        assert torch.equal(state[name], t), name
    drop_extra = lambda c: {k: v for k, v in c.to_dict().items() if k != "extra"}  # noqa: E731
    assert drop_extra(config) == drop_extra(model.config)
    assert config.extra["hf_model_type"] == hf_config["model_type"]
    assert config.extra.get("note") == model.config.extra.get("note")  # user extra survives the trip


def test_gpt2_conv1d_weights_are_transposed():
    model = random_model(**GPT2_SHAPED)
    _, hf_state = llmcore_to_hf(model.config, model.state_dict())
    w = model.blocks[0].attn.qkv_proj.weight  # (3D, D) as nn.Linear
    assert torch.equal(hf_state["transformer.h.0.attn.c_attn.weight"], w.t())
    assert "lm_head.weight" not in hf_state  # tied: stored once, transformers re-ties it


def test_gpt2_without_prefix_and_with_mask_buffers():
    model = random_model(**GPT2_SHAPED)
    hf_config, hf_state = llmcore_to_hf(model.config, model.state_dict())
    bare = {k.removeprefix("transformer."): v for k, v in hf_state.items()}
    bare["h.0.attn.bias"] = torch.ones(1, 1, 64, 64)  # the causal-mask buffer of older checkpoints
    hf_config["resid_pdrop"] = 0.1
    config, state = hf_to_llmcore(hf_config, bare)
    assert torch.equal(state["tok_embeddings.weight"], model.tok_embeddings.weight)
    # inference stays deterministic after conversion; HF's dropout is kept for the way back
    assert config.dropout == 0.0 and config.extra["hf_dropout"] == 0.1
    assert llmcore_to_hf(config, state)[0]["resid_pdrop"] == 0.1


def test_biasless_model_exports_zero_biases_to_gpt2():
    model = random_model(**{**GPT2_SHAPED, "bias": False})
    hf_config, hf_state = llmcore_to_hf(model.config, model.state_dict())
    assert not hf_state["transformer.h.1.mlp.c_fc.bias"].any()
    config, _ = hf_to_llmcore(hf_config, hf_state)
    assert config.bias  # GPT-2 always has biases; here they are zero


def test_qwen2_exports_back_as_qwen2_only_while_its_missing_biases_stay_zero():
    model = random_model(**{**LLAMA_SHAPED, "bias": True, "extra": {"hf_model_type": "qwen2"}})
    hf_config, _ = llmcore_to_hf(model.config, model.state_dict())
    assert hf_config["model_type"] == "llama"  # o_proj / MLP biases are non-zero: Qwen2 cannot hold them
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") and "qkv_proj" not in name:
                p.zero_()
    hf_config, hf_state = llmcore_to_hf(model.config, model.state_dict())
    assert hf_config["model_type"] == "qwen2"
    assert "model.layers.0.self_attn.q_proj.bias" in hf_state
    assert "model.layers.0.self_attn.o_proj.bias" not in hf_state
    _, state = hf_to_llmcore(hf_config, hf_state)
    for name, t in own_tensors(model).items():
        assert torch.equal(state[name], t), name


def test_unknown_model_type():
    with pytest.raises(CheckpointError, match=r"'bert'.*gpt2, llama"):
        hf_to_llmcore({"model_type": "bert"}, {})


def test_rope_scaling_is_rejected():
    model = random_model(**LLAMA_SHAPED)
    hf_config, hf_state = llmcore_to_hf(model.config, model.state_dict())
    hf_config["rope_scaling"] = {"rope_type": "llama3", "factor": 8.0}
    with pytest.raises(CheckpointError, match="RoPE scaling"):
        hf_to_llmcore(hf_config, hf_state)


def test_mismatched_missing_and_unexpected_tensors():
    model = random_model(**LLAMA_SHAPED)
    hf_config, hf_state = llmcore_to_hf(model.config, model.state_dict())
    hf_state["model.layers.1.mlp.up_proj.weight"] = torch.zeros(65, 32)
    del hf_state["model.norm.weight"]
    hf_state["model.layers.0.extra.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match=r"model\.norm.*up_proj.*\(65, 32\).*extra") as e:
        hf_to_llmcore(hf_config, hf_state)
    assert "missing" in str(e.value) and "shape" in str(e.value) and "unexpected" in str(e.value)


def test_config_that_cannot_be_exported():
    model = random_model(**{**LLAMA_SHAPED, "pos_encoding": "sinusoidal"})
    with pytest.raises(CheckpointError, match=r"pos_encoding='sinusoidal'.*format='llmcore'"):
        llmcore_to_hf(model.config, model.state_dict())


def test_parse_size():
    assert parse_size(123) == 123
    assert parse_size("2GB") == 2_000_000_000
    assert parse_size("10KiB") == 10 * 1024
    with pytest.raises(CheckpointError):
        parse_size("big")


@pytest.mark.parametrize("shape", ["gpt2", "llama-gqa"])
def test_sharded_directory_loads(tmp_path, shape):
    model = random_model(**ROUND_TRIP[shape])
    save_hf(model, tmp_path, max_shard_size="20KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1 and not (tmp_path / "model.safetensors").exists()
    ids = torch.randint(0, 128, (2, 9))
    loaded = TransformerLM.from_pretrained(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), model(ids), atol=0, rtol=0)
    save_hf(model, tmp_path)  # re-saving unsharded replaces the shards
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    with torch.no_grad():
        torch.testing.assert_close(load_hf(tmp_path, TransformerLM)(ids), model(ids), atol=0, rtol=0)


def test_cli_convert(tmp_path, capsys):
    model = random_model(**LLAMA_SHAPED)
    corpus = Path(__file__).resolve().parents[1] / "fixtures" / "en_zh_small.txt"
    lines = [line for line in corpus.read_text(encoding="utf-8").splitlines() if line.isascii()]
    tok = SentencePieceTokenizer.train(lines, 400)
    src = model.save_pretrained(tmp_path / "src", tokenizer=tok)
    assert main(["convert", str(src), str(tmp_path / "hf"), "--to", "hf"]) == 0
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["model_type"] == "llama"
    # the tokenizer goes along: the HF files beside the weights and the llmcore tokenizer/ as it was
    assert json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())["tokenizer_class"] == "LlamaTokenizer"
    assert (tmp_path / "hf" / "tokenizer.model").read_bytes() == tok.model_proto
    assert (tmp_path / "hf" / "tokenizer" / "llmcore_tokenizer.json").exists()
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "back")]) == 0  # default: the other format
    assert "(hf) ->" in capsys.readouterr().out
    assert load_tokenizer(tmp_path / "back").encode("To be, or not") == tok.encode("To be, or not")
    back = TransformerLM.from_pretrained(tmp_path / "back")
    ids = torch.randint(0, 128, (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(back(ids), model(ids), atol=0, rtol=0)
    assert main(["convert", str(tmp_path / "missing"), str(tmp_path / "out")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_convert_refuses_a_byte_tokenizer_unless_no_tokenizer(tmp_path, capsys):
    """transformers has no byte tokenizer: --to hf fails in one line before writing, --no-tokenizer exports."""
    src = random_model(**LLAMA_SHAPED).save_pretrained(tmp_path / "src", tokenizer=ByteTokenizer())
    assert main(["convert", str(src), str(tmp_path / "hf"), "--to", "hf"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "a byte tokenizer has no Hugging Face equivalent" in err and "--no-tokenizer" in err
    assert not (tmp_path / "hf").exists()
    assert main(["convert", str(src), str(tmp_path / "hf"), "--to", "hf", "--no-tokenizer"]) == 0
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == [".llmcore-run", "config.json", "model.safetensors"]


def test_models_hf_default_class_is_the_registered_transformer_lm(tmp_path):
    """``load_hf`` / ``from_hf`` without a class build whatever is registered as "TransformerLM" (by name, so
    models/hf.py need not import models/transformer.py, which imports pretrained.py, which imports hf.py)."""
    from llmcore.registry import ARCHITECTURES

    ARCHITECTURES.register("TransformerLM", TransformerLM)  # a no-op once transformer.py registers it itself
    model = random_model(**LLAMA_SHAPED)
    save_hf(model, tmp_path)
    loaded = load_hf(tmp_path)
    assert type(loaded) is TransformerLM and not loaded.training
    ids = torch.randint(0, 128, (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), model(ids), atol=0, rtol=0)
