"""Generation parity with Hugging Face ``transformers``: greedy, beam search and seeded sampling.

Tiny random HF GPT-2 and Llama models are built from config objects (no download), converted with the same
``llmcore.models.hf.from_hf`` users call, and both libraries decode the same prompts. Weights use a large
initializer range so the logits are far from uniform and floating-point noise cannot flip a choice.
"""

from __future__ import annotations

import pytest
import torch

from llmcore import TransformerLM
from llmcore.generation import generate
from llmcore.models.hf import from_hf

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.parity

VOCAB = 96


def _hf_model(kind: str):
    torch.manual_seed(0)
    if kind == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                      initializer_range=0.3, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                      bos_token_id=0, eos_token_id=1, pad_token_id=1)
        model = transformers.GPT2LMHeadModel(cfg)
    else:
        cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                       initializer_range=0.3, bos_token_id=0, eos_token_id=1, pad_token_id=1)
        model = transformers.LlamaForCausalLM(cfg)
    return model.eval()


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def pair(request):
    hf = _hf_model(request.param)
    ours = from_hf(hf.config.to_dict(), hf.state_dict(), TransformerLM)
    return hf, ours


def _prompts() -> tuple[torch.Tensor, torch.Tensor]:
    """Two left-padded prompts (lengths 6 and 4) with their mask."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(2, VOCAB, (2, 6), generator=g)
    mask = torch.ones(2, 6, dtype=torch.long)
    ids[1, :2], mask[1, :2] = 1, 0
    return ids, mask


def _hf_generate(hf, ids, mask, **kw):
    with torch.no_grad():
        return hf.generate(ids, attention_mask=mask, use_cache=True, **kw)


def _eos_from_greedy(ours, ids, mask) -> int:
    """A token the greedy continuation of row 0 emits at its 4th step, so EOS handling is exercised."""
    out = generate(ours, ids, mask, max_new_tokens=6, eos_token_id=[])
    return int(out[0, ids.shape[1] + 3])


def _eos_from_beams(ours, ids, mask) -> list[int]:
    """Two tokens the best beams emit early (row 0 step 3, row 1 step 5): hypotheses then end at different
    lengths, and two EOS ids widen the candidate pool to 3 · num_beams."""
    out = generate(ours, ids, mask, max_new_tokens=6, num_beams=4, eos_token_id=[])
    T = ids.shape[1]
    return sorted({int(out[0, T + 2]), int(out[1, T + 4])})


def test_greedy_matches_hf(pair):
    hf, ours = pair
    ids, mask = _prompts()
    kw = dict(max_new_tokens=12, do_sample=False, eos_token_id=VOCAB + 5, pad_token_id=1)  # eos never emitted
    expected = _hf_generate(hf, ids, mask, **kw)
    got = generate(ours, ids, mask, max_new_tokens=12, eos_token_id=[], pad_token_id=1)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_greedy_with_eos_matches_hf(pair):
    hf, ours = pair
    ids, mask = _prompts()
    eos = _eos_from_greedy(ours, ids, mask)
    expected = _hf_generate(hf, ids, mask, max_new_tokens=12, do_sample=False, eos_token_id=eos, pad_token_id=1)
    got = generate(ours, ids, mask, max_new_tokens=12, eos_token_id=eos, pad_token_id=1)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("early_stopping", [False, True, "never"])
@pytest.mark.parametrize("with_eos", [False, True])
def test_beam_search_matches_hf(pair, early_stopping, with_eos):
    hf, ours = pair
    ids, mask = _prompts()
    eos = _eos_from_beams(ours, ids, mask) if with_eos else VOCAB + 5
    kw = dict(max_new_tokens=14, num_beams=4, length_penalty=1.0, early_stopping=early_stopping,
              num_return_sequences=2)
    expected = _hf_generate(hf, ids, mask, do_sample=False, eos_token_id=eos, pad_token_id=1, **kw)
    got = generate(ours, ids, mask, eos_token_id=eos if with_eos else [], pad_token_id=1, **kw)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_beam_search_length_penalty_matches_hf(pair):
    hf, ours = pair
    ids, mask = _prompts()
    eos = _eos_from_beams(ours, ids, mask)
    for lp, es in ((2.0, "never"), (0.5, False)):
        kw = dict(max_new_tokens=10, num_beams=3, length_penalty=lp, early_stopping=es)
        expected = _hf_generate(hf, ids, mask, do_sample=False, eos_token_id=eos, pad_token_id=1, **kw)
        got = generate(ours, ids, mask, eos_token_id=eos, pad_token_id=1, **kw)
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_seeded_sampling_matches_hf(pair):
    """HF samples from the global CPU generator; ours from a private one seeded alike: the draws coincide."""
    hf, ours = pair
    ids, mask = _prompts()
    kw = dict(max_new_tokens=12, do_sample=True, temperature=0.7, top_k=20, top_p=0.9, repetition_penalty=1.3)
    torch.manual_seed(123)
    expected = _hf_generate(hf, ids, mask, eos_token_id=VOCAB + 5, pad_token_id=1, **kw)
    got = generate(ours, ids, mask, eos_token_id=[], pad_token_id=1, seed=123, **kw)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
