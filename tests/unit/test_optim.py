"""param_groups (decay policy, layer-wise lr, exactly-one-group check) and the LR schedules."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from llmcore import TransformerLM
from llmcore.errors import ConfigError
from llmcore.training import SCHEDULES, build_schedule, param_groups
from llmcore.training.optim import build_optimizer, check_groups, set_lr


def _names(groups, decay):
    return {n for g in groups if (g["weight_decay"] > 0) == decay for n in g["names"]}


def test_gpt2_style_decays_only_linear_weights(tiny_gpt2_config):
    model = TransformerLM(tiny_gpt2_config)  # tied head, learned positions, LayerNorm with bias, linear biases
    groups = param_groups(model, weight_decay=0.1, lr=1e-3)
    decay, no_decay = _names(groups, True), _names(groups, False)
    linear = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Linear) and n != "lm_head"}
    assert decay == linear
    assert "tok_embeddings.weight" in no_decay and "pos_embeddings.weight" in no_decay  # embeddings: by type
    assert all(n.endswith("bias") or "norm" in n or "embeddings" in n for n in no_decay)
    all_names = [n for n, _ in model.named_parameters()]  # tied head counted once, under the embedding
    assert sorted(decay | no_decay) == sorted(all_names) and len(all_names) == len(decay) + len(no_decay)
    for g in groups:
        assert g["lr"] == g["initial_lr"] == 1e-3 and g["lr_mult"] == 1.0


def test_untied_head_is_decayed_embedding_is_not(tiny_config):
    groups = param_groups(TransformerLM(tiny_config), weight_decay=0.1, lr=1e-3)
    assert "lm_head.weight" in _names(groups, True)
    assert "tok_embeddings.weight" in _names(groups, False)
    assert not any("norm" in n for n in _names(groups, True))


def test_layer_lr_splits_groups_and_scales(tiny_config):
    model = TransformerLM(tiny_config)
    groups = param_groups(model, 0.1, 1e-3, layer_lr=lambda n: 0.5 if n.startswith("blocks.0.") else 1.0)
    keys = sorted((g["weight_decay"] > 0, g["lr_mult"]) for g in groups)
    assert keys == [(False, 0.5), (False, 1.0), (True, 0.5), (True, 1.0)]
    for g in groups:
        assert g["lr"] == pytest.approx(1e-3 * g["lr_mult"]) and g["initial_lr"] == g["lr"]
        assert all(n.startswith("blocks.0.") == (g["lr_mult"] == 0.5) for n in g["names"])
    opt = build_optimizer(groups, 1e-3)
    set_lr(opt, 0.1)
    assert sorted(g["lr"] for g in opt.param_groups) == pytest.approx([5e-5, 5e-5, 1e-4, 1e-4])
    with pytest.raises(ConfigError, match="layer_lr"):
        param_groups(model, 0.1, 1e-3, layer_lr=lambda n: -1.0)


def test_frozen_excluded_and_no_decay_patterns(tiny_config):
    model = TransformerLM(tiny_config)
    for p in model.blocks[0].parameters():
        p.requires_grad_(False)
    groups = param_groups(model, 0.1, 1e-3, no_decay=("mlp",))
    names = _names(groups, True) | _names(groups, False)
    assert not any(n.startswith("blocks.0.") for n in names)
    assert any("blocks.1.mlp" in n for n in _names(groups, False)) and not any("mlp" in n for n in _names(groups, True))


def test_lstm_weights_decay_embeddings_do_not():
    class LSTMish(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.rnn, self.norm, self.head = nn.Embedding(10, 8), nn.LSTM(8, 8), nn.LayerNorm(8), nn.Linear(8, 10)

    groups = param_groups(LSTMish(), 0.1, 1e-3)
    assert _names(groups, True) == {"rnn.weight_ih_l0", "rnn.weight_hh_l0", "head.weight"}


def test_check_groups_exactly_once(tiny_config):
    model = TransformerLM(tiny_config)
    params = list(model.parameters())
    with pytest.raises(ConfigError, match="exactly one group"):
        check_groups(model, [{"params": params, "lr_mult": 1.0}, {"params": params[:1], "lr_mult": 1.0}], 1e-3)
    with pytest.raises(ConfigError, match="in no optimizer group"):
        check_groups(model, [{"params": params[1:], "lr_mult": 1.0}], 1e-3)
    with pytest.raises(ConfigError, match="lr_mult"):
        check_groups(model, [{"params": params}], 1e-3)
    with pytest.raises(ConfigError, match="not a parameter"):
        check_groups(model, [{"params": params + [nn.Parameter(torch.zeros(2))], "lr_mult": 1.0}], 1e-3)
    ok = check_groups(model, [{"params": params, "lr_mult": 2.0}], 1e-3)
    assert ok[0]["lr"] == ok[0]["initial_lr"] == 2e-3 and len(ok[0]["names"]) == len(params)


def test_cosine_schedule_shape():
    f = build_schedule("cosine", warmup_steps=10, max_steps=110, min_ratio=0.1)
    assert f(0) == pytest.approx(1 / 11) and f(9) == pytest.approx(10 / 11)  # nanoGPT's (it+1)/(warmup+1)
    assert f(10) == pytest.approx(1.0) and f(60) == pytest.approx(0.55) and f(110) == pytest.approx(0.1)
    assert f(500) == pytest.approx(0.1)
    values = [f(s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_other_schedules():
    const = build_schedule("constant", 4, 100, 0.1)
    assert [const(s) for s in (0, 3, 4, 99)] == pytest.approx([0.2, 0.8, 1.0, 1.0])
    wsd = build_schedule("wsd", 0, 100, 0.0)
    assert wsd(0) == 1.0 and wsd(79) == 1.0 and wsd(90) == pytest.approx(0.5) and wsd(100) == 0.0
    lin = build_schedule("linear", 0, 10, 0.0)
    assert lin(5) == pytest.approx(0.5)
    custom = build_schedule(lambda s: math.exp(-s), 0, 10, 0.0)
    assert custom(0) == 1.0
    assert set(SCHEDULES) >= {"cosine", "constant", "wsd", "linear"}
    with pytest.raises(ConfigError, match="Unknown schedule"):
        build_schedule("triangle", 0, 10, 0.0)
