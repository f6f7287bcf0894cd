"""ModelConfig validation, presets and JSON round trip."""

import json

import pytest

from llmcore import ConfigError, ModelConfig


def test_presets_build_and_round_trip(tmp_path):
    for name in ("debug", "char-small", "gpt2", "llama-tiny"):
        cfg = ModelConfig.from_preset(name)
        path = tmp_path / f"{name}.json"
        cfg.to_json(path)
        assert ModelConfig.from_json(path) == cfg


def test_char_small_has_the_nanogpt_baby_gpt_shapes_and_parameter_count():
    from llmcore import TransformerLM

    modern, reference = ModelConfig.from_preset("char-small"), ModelConfig.from_preset("nanogpt")
    for cfg in (modern, reference):
        assert (cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.max_seq_len) == (4, 4, 128, 64)
    assert (modern.pos_encoding, modern.norm, modern.activation) == ("rope", "rmsnorm", "swiglu")
    assert (reference.pos_encoding, reference.norm, reference.activation) == ("learned", "layernorm", "gelu")
    sizes = [TransformerLM(c).num_parameters() for c in (modern, reference)]
    assert sizes == [800_000, 804_096]  # the same budget: the modern default is not bigger


def test_overrides_and_derived_fields():
    cfg = ModelConfig.from_preset("debug", vocab_size=512)
    assert cfg.vocab_size == 512
    assert cfg.d_ff % cfg.multiple_of == 0  # SwiGLU hidden size rounded like Llama
    assert ModelConfig(d_model=64, n_heads=4, activation="gelu").d_ff == 256


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(d_model=30, n_heads=4), "d_model=30 is not divisible by n_heads=4"),
        (dict(n_heads=4, n_kv_heads=3, d_model=32), "n_kv_heads=3"),
        (dict(norm="batchnorm"), "norm='batchnorm'.*layernorm, rmsnorm"),
        (dict(activation="tanh"), "activation='tanh'.*swiglu"),
        (dict(pos_encoding="alibi"), "pos_encoding='alibi'"),
        (dict(vocab_size=0), "vocab_size=0"),
        (dict(dropout=1.5), "dropout=1.5"),
    ],
)
def test_invalid_values_name_field_and_allowed(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ModelConfig(**kwargs)


def test_unknown_keys_and_presets_rejected(tmp_path):
    with pytest.raises(ConfigError, match="Unknown ModelConfig keys \\['n_embd'\\]"):
        ModelConfig.from_dict({"n_embd": 32})
    with pytest.raises(ConfigError, match="Unknown preset 'gpt5'.*debug"):
        ModelConfig.from_preset("gpt5")
    bad = tmp_path / "c.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid UTF-8 JSON"):
        ModelConfig.from_json(bad)
    assert isinstance(ConfigError("x"), ValueError)
    json.loads(ModelConfig().to_json())
