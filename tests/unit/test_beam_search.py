"""Beam search on a bigram mock whose probabilities are chosen by hand, so scores can be checked exactly.

(Token-for-token agreement with ``transformers`` lives in tests/parity/test_hf_generate.py.)
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from llmcore.generation import beam_search, generate

EOS = 3


class BigramLM(nn.Module):
    """Next-token log-probabilities depend only on the last token: ``table[last]``."""

    def __init__(self, probs: list[list[float]]) -> None:
        super().__init__()
        self.register_buffer("table", torch.tensor(probs).log())

    def forward(self, input_ids, attention_mask=None, kv_cache=None):
        if kv_cache is not None:
            kv_cache.length += input_ids.shape[1]
        return self.table[input_ids]  # (B, T, V)

    def make_cache(self, batch_size, max_len):
        return _Cache()


class _Cache:
    length = 0

    def reorder(self, index):
        pass


# From 0: token 1 is likelier (0.5 vs 0.4) but leads to a flat distribution; 2 leads to a confident 2 -> EOS.
PROBS = [
    [0.01, 0.50, 0.40, 0.09],  # after 0
    [0.25, 0.25, 0.25, 0.25],  # after 1
    [0.02, 0.02, 0.06, 0.90],  # after 2: EOS
    [0.25, 0.25, 0.25, 0.25],  # after EOS (never used)
]


@pytest.fixture
def model() -> BigramLM:
    return BigramLM(PROBS)


def test_beam_finds_the_better_sequence_greedy_misses(model):
    ids = torch.tensor([[0]])
    greedy = generate(model, ids, max_new_tokens=2, eos_token_id=EOS)
    assert greedy[0].tolist() == [0, 1, 0]  # 0.5 · 0.25
    seqs, scores = beam_search(model, ids, num_beams=2, max_new_tokens=2, eos_token_id=EOS, return_scores=True)
    assert seqs[0].tolist() == [0, 2, 3]  # 0.4 · 0.9 = 0.36
    assert scores[0].item() == pytest.approx(math.log(0.4 * 0.9) / 2)  # sum logprobs / generated_len ** 1


def test_length_penalty_and_return_sequences():
    # After 0, EOS is the second most likely token, so [0, 3] (p 0.34, 1 token) finishes at step one
    # (only the best num_beams candidates may finish, as in HF); [0, 2, 3] (p 0.405, 2 tokens) at step two.
    model = BigramLM([[0.01, 0.20, 0.45, 0.34]] + PROBS[1:])
    ids = torch.tensor([[0]])
    kw = dict(num_beams=2, max_new_tokens=2, eos_token_id=EOS, pad_token_id=0, return_scores=True)
    seqs, scores = beam_search(model, ids, length_penalty=0.0, num_return_sequences=2, **kw)
    assert seqs.tolist() == [[0, 2, 3], [0, 3, 0]]  # best first; the shorter one padded
    assert scores.tolist() == pytest.approx([math.log(0.45 * 0.9), math.log(0.34)])
    # length_penalty 1: log(0.405) / 2 still beats log(0.34) / 1
    assert beam_search(model, ids, length_penalty=1.0, **kw)[0][0].tolist() == [0, 2, 3]
    # a negative length penalty favours short hypotheses: log(0.34) · 1 beats log(0.405) · 2 ** 3;
    # the output is as long as the longest returned hypothesis
    seqs, scores = beam_search(model, ids, length_penalty=-3.0, **kw)
    assert seqs.tolist() == [[0, 3]] and scores[0].item() == pytest.approx(math.log(0.34))


def test_beam_output_shapes_and_max_new_tokens_zero(model):
    ids = torch.tensor([[0], [2]])
    out = generate(model, ids, num_beams=3, num_return_sequences=3, max_new_tokens=4, eos_token_id=[])
    assert out.shape == (6, 5)
    out = generate(model, ids, num_beams=3, max_new_tokens=0)
    assert torch.equal(out, ids)
