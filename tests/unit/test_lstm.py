"""LSTMLM: shapes, state-as-cache equivalences, padding, generation, save/load, and that it learns."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llmcore import ModelConfig
from llmcore.errors import CheckpointError, DataError
from llmcore.models.lstm import LSTMLM, LSTMState


@pytest.fixture
def lstm() -> LSTMLM:
    return LSTMLM(ModelConfig(vocab_size=64, max_seq_len=32, d_model=32, n_layers=2, n_heads=4)).eval()


def test_forward_shape_and_tying(lstm):
    x = torch.randint(0, 64, (3, 7))
    assert lstm(x).shape == (3, 7, 64)
    assert lstm.lm_head.weight is lstm.tok_embeddings.weight
    untied = LSTMLM(ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=4, tie_embeddings=False))
    assert untied.lm_head.weight is not untied.tok_embeddings.weight
    with pytest.raises(DataError, match="2-D"):  # shape is checked in forward; the id range where ids enter
        lstm(torch.tensor([63]))


def test_causal(lstm):
    x = torch.randint(0, 64, (1, 8))
    y = x.clone()
    y[0, 5] = (y[0, 5] + 1) % 64
    torch.testing.assert_close(lstm(x)[:, :5], lstm(y)[:, :5])


def test_cached_equals_uncached(lstm):
    x = torch.randint(0, 64, (2, 9))
    full = lstm(x)
    state = lstm.make_cache(2, 9)
    assert isinstance(state, LSTMState) and state.length == 0
    parts = [lstm(x[:, :4], kv_cache=state)] + [lstm(x[:, t:t + 1], kv_cache=state) for t in range(4, 9)]
    assert state.length == 9
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-4)


def test_left_padding_leaves_state_unchanged(lstm):
    x = torch.randint(1, 64, (1, 6))
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), x], 1)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, 1]])
    torch.testing.assert_close(lstm(padded, attention_mask=mask)[:, 3:], lstm(x), atol=1e-5, rtol=1e-4)
    # Incremental: the mask covers past + new positions, as generation passes it.
    state = lstm.make_cache(1, 9)
    lstm(padded[:, :5], attention_mask=mask[:, :5], kv_cache=state)
    step = lstm(padded[:, 5:6], attention_mask=mask[:, :6], kv_cache=state)
    torch.testing.assert_close(step, lstm(x[:, :3])[:, -1:], atol=1e-5, rtol=1e-4)


def test_reorder(lstm):
    x = torch.randint(0, 64, (2, 5))
    state = lstm.make_cache(2, 6)
    lstm(x[:, :4], kv_cache=state)
    state.reorder(torch.tensor([1, 0, 1]))
    out = lstm(x[[1, 0, 1], 4:5], kv_cache=state)
    torch.testing.assert_close(out, lstm(x[[1, 0, 1]])[:, -1:], atol=1e-5, rtol=1e-4)


def test_generate_cached_equals_uncached(lstm):
    from llmcore.generation import generate

    prompt = torch.randint(1, 64, (2, 4))
    mask = torch.ones_like(prompt)
    prompt[1, :2], mask[1, :2] = 0, 0  # left padding
    kw = dict(max_new_tokens=8, eos_token_id=[], pad_token_id=0)
    cached = generate(lstm, prompt, mask, **kw)
    uncached = generate(lstm, prompt, mask, use_cache=False, **kw)
    torch.testing.assert_close(cached, uncached)
    alone = generate(lstm, prompt[1:, 2:], **kw)
    torch.testing.assert_close(cached[1:, 4:], alone[:, 2:])
    beams = generate(lstm, prompt, mask, num_beams=3, **kw)
    assert beams.shape == (2, 12)


def test_save_load_round_trip(lstm, tmp_path):
    lstm.save_pretrained(tmp_path)
    loaded = LSTMLM.from_pretrained(tmp_path).eval()
    x = torch.randint(0, 64, (2, 6))
    torch.testing.assert_close(loaded(x), lstm(x))
    assert loaded.lm_head.weight is loaded.tok_embeddings.weight
    from llmcore.models.transformer import TransformerLM

    with pytest.raises(CheckpointError, match="LSTMLM"):
        TransformerLM.from_pretrained(tmp_path)


def test_learns_a_repeating_sequence():
    torch.manual_seed(0)
    model = LSTMLM(ModelConfig(vocab_size=16, max_seq_len=32, d_model=32, n_layers=1, n_heads=4))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    seq = torch.arange(16).repeat(3)[None]  # 0..15 0..15 ...
    for _ in range(100):
        loss = F.cross_entropy(model(seq[:, :-1]).flatten(0, 1), seq[0, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1
