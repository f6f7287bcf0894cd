"""Open registries: norms, MLPs, positional encodings and architectures are named in configs and extended by users."""

import pytest
import torch
from torch import nn

from llmcore import CheckpointError, ConfigError, ModelConfig, TransformerLM
from llmcore.models import LSTMLM, Seq2SeqTransformer, SequenceClassifier, load_model, register_architecture
from llmcore.modules import Attention, CrossDecoderBlock, LayerNorm
from llmcore.registry import ARCHITECTURES, ATTENTIONS, NORMS, POS_ENCODINGS

TINY = dict(vocab_size=32, max_seq_len=16, d_model=16, n_layers=2, n_heads=2)


class ScaleNorm(nn.Module):
    """x / ‖x‖ · g with one learned scalar (Nguyen & Salazar, 2019)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.g = nn.Parameter(torch.tensor(float(config.d_model) ** 0.5))

    def forward(self, x):
        return self.g * x / x.norm(dim=-1, keepdim=True).clamp(min=1e-5)


NORMS.register("test_scalenorm", ScaleNorm)
POS_ENCODINGS.register("test_nopos", lambda config: None)  # e.g. ALiBi: positions live in attention


@ATTENTIONS.register("test_cold")
class ColdAttention(Attention):
    """Attention at temperature 2: scores halved (a registered variant chosen by config.attention)."""

    def attend(self, q, k, v, mask, is_causal, attn_weights=None):
        return super().attend(q / 2, k, v, mask, is_causal, attn_weights)


@register_architecture
class RegisteredLM(TransformerLM):
    """A user architecture: only the final norm differs."""


def test_unknown_names_list_the_registered_ones():
    with pytest.raises(ConfigError, match=r"norm='batchnorm' is unknown; registered: .*layernorm, rmsnorm.*"
                                          r"NORMS\.register"):
        ModelConfig(norm="batchnorm")
    with pytest.raises(ConfigError, match=r"pos_encoding='alibi' is unknown; registered: .*learned.*rope"):
        ModelConfig(pos_encoding="alibi")
    with pytest.raises(ConfigError, match=r"Unknown architecture 'Nope'; registered: .*TransformerLM"):
        ARCHITECTURES.get("Nope")


def test_user_registered_norm_and_positions_build():
    model = TransformerLM(ModelConfig(**TINY, norm="test_scalenorm", pos_encoding="test_nopos"))
    assert isinstance(model.final_norm, ScaleNorm) and isinstance(model.blocks[1].mlp_norm, ScaleNorm)
    assert model.pos_embeddings is None and model.rotary is None
    assert model(torch.randint(0, 32, (2, 5))).shape == (2, 5, 32)


def test_alibi_name_validates_once_registered():
    with pytest.raises(ConfigError):
        ModelConfig(**TINY, pos_encoding="test_alibi")
    POS_ENCODINGS.register("test_alibi", lambda config: None)
    assert TransformerLM(ModelConfig(**TINY, pos_encoding="test_alibi")).pos_embeddings is None


def test_taken_name_with_another_object_is_refused():
    NORMS.register("layernorm", NORMS.get("layernorm"))  # the same object again is fine (re-import)
    with pytest.raises(ConfigError, match="'layernorm' is already registered"):
        NORMS.register("layernorm", LayerNorm)
    with pytest.raises(ConfigError, match="'TransformerLM' is already registered"):
        register_architecture("TransformerLM")(RegisteredLM)


def test_same_name_is_not_same_definition():
    """Objects that only share a name are refused: partials, lambdas, classes of one name in two files."""
    import functools

    from llmcore.registry import Registry, same_definition

    reg = Registry("thing", "THINGS")
    reg.register("gelu", functools.partial(nn.GELU, approximate="none"))
    reg.register("gelu", functools.partial(nn.GELU, approximate="none"))  # an equal partial: a re-import
    with pytest.raises(ConfigError, match="'gelu' is already registered"):
        reg.register("gelu", functools.partial(nn.GELU, approximate="tanh"))
    reg.register("f", lambda config: 1)
    with pytest.raises(ConfigError, match="'f' is already registered"):
        reg.register("f", lambda config: 2)

    def make(n):
        class Made(nn.Module):
            size = n
        return Made

    assert not same_definition(make(1), make(2))


def test_plugins_of_one_file_name_in_two_folders_do_not_shadow(tmp_path, clean_registry):
    from llmcore.cli.common import import_plugin

    for folder, norm in (("a", "layernorm"), ("b", "rmsnorm")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "models.py").write_text(
            "from llmcore.models import TransformerLM, register_architecture\n\n\n"
            f"@register_architecture\nclass PluginLM(TransformerLM):\n    norm = {norm!r}\n", encoding="utf-8")
    first = import_plugin(str(tmp_path / "a" / "models.py"))
    assert ARCHITECTURES.get("PluginLM") is first.PluginLM
    with pytest.raises(ConfigError, match="'PluginLM' is already registered"):
        import_plugin(str(tmp_path / "b" / "models.py"))
    assert ARCHITECTURES.get("PluginLM") is first.PluginLM
    import_plugin(str(tmp_path / "a" / "models.py"))  # the same file again is fine


def test_every_builtin_architecture_is_registered():
    for cls in (TransformerLM, Seq2SeqTransformer, LSTMLM, SequenceClassifier):
        assert ARCHITECTURES.get(cls.__name__) is cls


def test_load_model_builds_the_registered_subclass(tmp_path):
    model = RegisteredLM(ModelConfig(**TINY))
    model.save_pretrained(tmp_path)
    x = torch.randint(0, 32, (2, 6))
    for loaded in (load_model(tmp_path), TransformerLM.from_pretrained(tmp_path)):
        assert type(loaded) is RegisteredLM and not loaded.training  # eval mode, like Hugging Face
        torch.testing.assert_close(loaded(x), model.eval()(x), rtol=0, atol=0)
    assert type(load_model(TransformerLM(ModelConfig(**TINY)).save_pretrained(tmp_path / "base"))) is TransformerLM


def test_unregistered_or_unrelated_architectures_are_checkpoint_errors(tmp_path):
    LSTMLM(ModelConfig(**TINY)).save_pretrained(tmp_path / "lstm")
    with pytest.raises(CheckpointError, match="holds a LSTMLM, not a TransformerLM"):
        TransformerLM.from_pretrained(tmp_path / "lstm")
    with pytest.raises(CheckpointError, match="holds a LSTMLM, not a RegisteredLM"):
        RegisteredLM.from_pretrained(tmp_path / "lstm")

    class Unregistered(TransformerLM):
        pass

    Unregistered(ModelConfig(**TINY)).save_pretrained(tmp_path / "mine")
    assert type(Unregistered.from_pretrained(tmp_path / "mine")) is Unregistered  # a class loads its own dir
    with pytest.raises(CheckpointError, match="'Unregistered', which is not registered.*--import FILE_OR_MODULE"):
        load_model(tmp_path / "mine")
    with pytest.raises(CheckpointError, match="not registered"):
        TransformerLM.from_pretrained(tmp_path / "mine")


def test_config_attention_picks_a_registered_variant():
    with pytest.raises(ConfigError, match=r"attention='nope' is unknown; registered: .*default.*ATTENTIONS"):
        ModelConfig(**TINY, attention="nope")
    torch.manual_seed(0)
    plain = TransformerLM(ModelConfig(**TINY))
    cold = TransformerLM(ModelConfig(**TINY, attention="test_cold"))
    cold.load_state_dict(plain.state_dict())  # same weights: only the attention arithmetic differs
    assert all(type(b.attn) is ColdAttention for b in cold.blocks)
    assert all(type(b.attn) is Attention for b in plain.blocks)
    ids = torch.randint(0, 32, (2, 6))
    assert not torch.allclose(cold(ids), plain(ids))
    # the choice is part of the config: it survives save / load
    assert ModelConfig.from_dict(cold.config.to_dict()).attention == "test_cold"
    # cross-attention is built from the same name
    block = CrossDecoderBlock(ModelConfig(**TINY, attention="test_cold"))
    assert type(block.cross_attn) is ColdAttention and block.cross_attn.cross


def test_only_a_plain_transformer_exports_to_hugging_face(tmp_path):
    with pytest.raises(CheckpointError, match="Only a TransformerLM exports .* RegisteredLM"):
        RegisteredLM(ModelConfig(**TINY)).save_pretrained(tmp_path / "a", format="hf")
    with pytest.raises(CheckpointError, match="attention='test_cold'"):
        TransformerLM(ModelConfig(**TINY, attention="test_cold")).save_pretrained(tmp_path / "b", format="hf")
