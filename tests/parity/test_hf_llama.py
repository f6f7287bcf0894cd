"""Parity with Hugging Face Llama-family models (Llama GQA / MHA+tied / MQA+biases, Qwen2, Mistral).

Tiny random models built from config objects (no downloads); every weight, RMSNorm gains included, is
randomised so a swapped q/k/v block, a wrong RoPE layout or a missing bias changes the logits.
"""

from __future__ import annotations

import pytest
import torch

from llmcore import TransformerLM
from llmcore.models.hf import from_hf

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.parity

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=128,
            max_position_embeddings=64)
CASES = {
    "llama-gqa": ("LlamaConfig", "LlamaForCausalLM", dict(num_key_value_heads=2, tie_word_embeddings=False)),
    "llama-mha-tied": ("LlamaConfig", "LlamaForCausalLM", dict(num_key_value_heads=4, tie_word_embeddings=True)),
    "llama-mqa-bias": ("LlamaConfig", "LlamaForCausalLM",
                       dict(num_key_value_heads=1, tie_word_embeddings=False, attention_bias=True, mlp_bias=True,
                            rope_theta=500000.0)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(num_key_value_heads=2, tie_word_embeddings=True)),
    "mistral-window": ("MistralConfig", "MistralForCausalLM",
                       dict(num_key_value_heads=2, tie_word_embeddings=False, sliding_window=32, head_dim=8)),
}


def randomize(model: torch.nn.Module) -> torch.nn.Module:
    """Every parameter random: norm gains near 1, everything else N(0, 0.1)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.1)
    return model.eval()


def build(case: str) -> torch.nn.Module:
    config_name, model_name, kwargs = CASES[case]
    config = getattr(transformers, config_name)(**TINY, **kwargs)
    return randomize(getattr(transformers, model_name)(config))


@pytest.fixture(params=list(CASES))
def hf_model(request):
    return build(request.param)


@torch.no_grad()
def hf_logits(model: torch.nn.Module, ids: torch.Tensor, **kwargs: torch.Tensor) -> torch.Tensor:
    return model(ids, **kwargs).logits


def test_logits_match(hf_model):
    ours = from_hf(hf_model.config.to_dict(), hf_model.state_dict(), TransformerLM)
    assert ours.config.n_kv_heads == hf_model.config.num_key_value_heads
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


@pytest.mark.parametrize("case", ["llama-gqa", "llama-mqa-bias"])  # HF generate is slow: two cache layouts
def test_greedy_generation(case):
    hf_model = build(case)
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
    assert type(reloaded) is type(hf_model)  # exported back as the family it came from
    assert reloaded.config.max_position_embeddings == hf_model.config.max_position_embeddings
    ids = torch.randint(0, 128, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(hf_logits(reloaded, ids), ours(ids), atol=1e-4, rtol=1e-4)


def test_hf_directory_round_trip(hf_model, tmp_path):
    hf_model.save_pretrained(tmp_path, safe_serialization=True)
    ours = TransformerLM.from_pretrained(tmp_path)
    ids = torch.randint(0, 128, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf_logits(hf_model, ids), atol=1e-4, rtol=1e-4)


# bf16 on GPU: both sides round differently (fused kernels, accumulation order), so exact agreement is not
# guaranteed; kept as a non-strict xfail to show the size of the drift without failing CI (litgpt does the same).
@pytest.mark.gpu
@pytest.mark.xfail(strict=False, reason="bf16 kernels of torch and transformers may round differently")
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_cuda_logits_close():
    config = transformers.LlamaConfig(**TINY, num_key_value_heads=2, tie_word_embeddings=False)
    hf = randomize(transformers.LlamaForCausalLM(config))
    ours = from_hf(hf.config.to_dict(), hf.state_dict(), TransformerLM)
    hf, ours = hf.to("cuda", torch.bfloat16), ours.to("cuda", torch.bfloat16)
    ids = torch.randint(0, 128, (2, 16), device="cuda")
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).float(), hf_logits(hf, ids).float(), atol=2e-2, rtol=2e-2)
