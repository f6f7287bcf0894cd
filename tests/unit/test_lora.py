"""LoRA: identity at init, merged = unmerged, adapter-only files that reproduce outputs, clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from llmcore import ConfigError, TransformerLM
from llmcore.finetune import (
    LoRA,
    LoRALinear,
    count_parameters,
    load_adapter,
    lora_modules,
    merge_and_unload,
    merge_lora,
    save_adapter,
    unmerge_lora,
)
from llmcore.finetune.classification import classification_loss
from llmcore.models.classifier import SequenceClassifier
from llmcore.modules import Linear
from llmcore.training.loss import lm_loss


def train(model, steps=5, loss_fn=lm_loss, y_shape=(2, 12), vocab=128):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    g = torch.Generator().manual_seed(3)
    for _ in range(steps):
        x = torch.randint(0, vocab, (2, 12), generator=g)
        y = torch.randint(0, 2 if loss_fn is classification_loss else vocab, y_shape, generator=g)
        loss = loss_fn(model(x), {"labels": y}) if loss_fn is classification_loss else loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


@pytest.fixture
def x():
    return torch.randint(0, 128, (2, 12))


def test_lora_init_is_identity_and_trains_only_adapters(tiny_config, x):
    model = TransformerLM(tiny_config).eval()
    ref = model(x)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    LoRA(rank=4, alpha=8).apply(model)
    assert torch.equal(model(x), ref)  # B = 0: the update is exactly zero
    assert sorted(lora_modules(model)) == [f"blocks.{i}.attn.{m}" for i in (0, 1) for m in ("out_proj", "qkv_proj")]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith((".lora_A", ".lora_B")) for n in trainable)
    # state-dict names of the base model are unchanged, so base weights still load by name
    assert set(base) <= {n for n, _ in model.named_parameters()}
    expected = sum(4 * (m.in_features + m.out_features) for m in lora_modules(model).values())
    assert count_parameters(model, trainable_only=True) == expected
    train(model)
    for n, p in model.named_parameters():
        if n in base:
            assert torch.equal(p, base[n]), n  # base weights frozen
    assert not torch.allclose(model(x), ref)


def test_merge_equals_unmerged(tiny_config, x):
    model = TransformerLM(tiny_config).eval()
    LoRA(rank=4, alpha=16).apply(model)
    train(model)
    unmerged = model(x)
    merge_lora(model)
    assert all(m.merged for m in lora_modules(model).values())
    torch.testing.assert_close(model(x), unmerged, atol=1e-5, rtol=0)
    unmerge_lora(model)
    torch.testing.assert_close(model(x), unmerged, atol=1e-5, rtol=0)
    plain = merge_and_unload(model)
    assert not lora_modules(plain) and type(plain.blocks[0].attn.qkv_proj) is Linear  # the model's own layer type, not a LoRA wrapper
    torch.testing.assert_close(plain(x), unmerged, atol=1e-5, rtol=0)


def test_adapter_file_round_trip(tiny_config, x, tmp_path):
    model = TransformerLM(tiny_config).eval()
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    lora = LoRA(rank=4, alpha=8, targets=("qkv_proj", "out_proj", "up_proj"))
    lora.apply(model)
    train(model)
    want = model(x)
    save_adapter(model, tmp_path, lora, extra={"base_model": "unit-test"})
    tensors = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert tensors and all(k.endswith((".lora_A", ".lora_B")) for k in tensors)
    assert len(tensors) == 2 * len(lora_modules(model))
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert cfg["rank"] == 4 and cfg["base_model"] == "unit-test"
    fresh = TransformerLM(tiny_config).eval()
    fresh.load_state_dict(base_state)
    load_adapter(fresh, tmp_path)
    torch.testing.assert_close(fresh(x), want)


def test_lora_on_classifier_with_modules_to_save(tiny_config, x, tmp_path):
    clf = SequenceClassifier(TransformerLM(tiny_config), 2).eval()
    base_state = {k: v.clone() for k, v in clf.state_dict().items()}
    lora = LoRA(rank=2, modules_to_save=("head",))
    lora.apply(clf)
    assert clf.head.weight.requires_grad and not clf.body.tok_embeddings.weight.requires_grad
    train(clf, loss_fn=classification_loss, y_shape=(2,))
    want = clf(x)
    save_adapter(clf, tmp_path, lora)
    assert {"head.weight", "head.bias"} <= set(load_file(str(tmp_path / "adapter_model.safetensors")))
    fresh = SequenceClassifier(TransformerLM(tiny_config), 2).eval()
    fresh.load_state_dict(base_state)
    torch.testing.assert_close(load_adapter(fresh, tmp_path)(x), want)


def test_lora_wraps_any_module():
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    inp = torch.randn(3, 4)
    ref = net(inp)
    LoRA(rank=2, targets=["0", "2"]).apply(net)
    assert isinstance(net[0], LoRALinear) and isinstance(net[2], LoRALinear)
    assert torch.equal(net(inp), ref)


def test_lora_bad_input(tiny_config):
    model = TransformerLM(tiny_config)
    with pytest.raises(ConfigError, match=r"'attn'.*not an nn\.Linear"):
        LoRA(targets=["attn"]).apply(model)
    with pytest.raises(ConfigError, match="'nope_proj' matches no module"):
        LoRA(targets=["qkv_proj", "nope_proj"]).apply(model)
    with pytest.raises(ConfigError, match="rank"):
        LoRA(rank=0)
    with pytest.raises(ConfigError, match="no LoRA layers"):
        save_adapter(TransformerLM(tiny_config), "unused")
