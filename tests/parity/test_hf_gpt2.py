"""Parity with Hugging Face GPT-2: logits, left padding, greedy generation, export and import of directories.

Tiny random models built from config objects (no downloads). Every weight is randomised, LayerNorm gains
and biases included, so a transposed or swapped tensor cannot hide behind an all-ones or all-zeros init.
"""

from __future__ import annotations

import pytest
import torch

from llmcore import ModelConfig, TransformerLM
from llmcore.models.hf import from_hf

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.parity


def randomize(model: torch.nn.Module) -> torch.nn.Module:
    """Every parameter random: norm gains near 1, everything else N(0, 0.1)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.1)
    return model.eval()


@pytest.fixture
def hf_model():
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=128, n_positions=64,
                                     bos_token_id=1, eos_token_id=2)
    return randomize(transformers.GPT2LMHeadModel(config))


@torch.no_grad()
def hf_logits(model: torch.nn.Module, ids: torch.Tensor, **kwargs: torch.Tensor) -> torch.Tensor:
    return model(ids, **kwargs).logits


def test_logits_match(hf_model):
    ours = from_hf(hf_model.config.to_dict(), hf_model.state_dict(), TransformerLM)
    ids = torch.randint(0, 128, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf_logits(hf_model, ids), atol=1e-4, rtol=1e-4)


def test_left_padded_batch(hf_model):
    ours = from_hf(hf_model.config.to_dict(), hf_model.state_dict(), TransformerLM)
    ids = torch.randint(0, 128, (2, 10))
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[0, :4] = 0  # row 0 is left-padded by 4
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # HF needs them explicitly; ours derives them from the mask
    with torch.no_grad():
        got = ours(ids, attention_mask=mask)
    want = hf_logits(hf_model, ids, attention_mask=mask, position_ids=positions)
    real = mask.bool()
    torch.testing.assert_close(got[real], want[real], atol=1e-4, rtol=1e-4)


def test_greedy_generation(hf_model):
    ours = from_hf(hf_model.config.to_dict(), hf_model.state_dict(), TransformerLM)
    hf_model.generation_config.eos_token_id = None  # no early stop on either side: compare all 10 tokens
    ids = torch.randint(1, 128, (2, 6))
    want = hf_model.generate(ids, do_sample=False, max_new_tokens=10, pad_token_id=0)
    torch.testing.assert_close(ours.generate(ids, max_new_tokens=10, eos_token_id=[]), want, atol=0, rtol=0)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding: both derive positions from the mask
    ids[0, :3] = 0
    want = hf_model.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=10, pad_token_id=0)
    got = ours.generate(ids, attention_mask=mask, max_new_tokens=10, eos_token_id=[])
    torch.testing.assert_close(got, want, atol=0, rtol=0)


def test_export_loads_in_transformers(hf_model, tmp_path):
    ours = from_hf(hf_model.config.to_dict(), hf_model.state_dict(), TransformerLM)
    ours.save_pretrained(tmp_path, format="hf")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(reloaded).__name__ == "GPT2LMHeadModel"
    ids = torch.randint(0, 128, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(hf_logits(reloaded, ids), ours(ids), atol=1e-4, rtol=1e-4)


def test_hf_directory_round_trip(hf_model, tmp_path):
    hf_model.save_pretrained(tmp_path, safe_serialization=True)
    ours = TransformerLM.from_pretrained(tmp_path)
    assert ours.config.extra["hf_model_type"] == "gpt2"
    ids = torch.randint(0, 128, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf_logits(hf_model, ids), atol=1e-4, rtol=1e-4)


def test_export_untied_biasless_model(tmp_path):
    """An llmcore-native GPT-2-shaped model without biases and with its own head exports exactly."""
    config = ModelConfig(vocab_size=128, max_seq_len=64, d_model=32, n_layers=2, n_heads=4, activation="gelu",
                         bias=False, tie_embeddings=False)
    ours = randomize(TransformerLM(config))
    ours.save_pretrained(tmp_path, format="hf")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 128, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(hf_logits(reloaded, ids), ours(ids), atol=1e-4, rtol=1e-4)
