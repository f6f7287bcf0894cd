"""torch.compile: TransformerLM traces with zero graph breaks (no host sync, no data-dependent Python).

``torch._dynamo.explain`` traces without compiling kernels, so each case takes about a second on tiny shapes.
"""

import pytest
import torch

from llmcore import ModelConfig, TransformerLM


@pytest.fixture
def model():
    torch._dynamo.reset()
    cfg = ModelConfig.from_preset("debug", vocab_size=64, n_layers=1, max_seq_len=16)  # RoPE, GQA, SwiGLU
    yield TransformerLM(cfg)
    torch._dynamo.reset()


def test_training_forward_has_no_graph_break(model):
    model.train()
    explained = torch._dynamo.explain(model)(torch.randint(0, 64, (2, 8)))
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


@pytest.mark.parametrize("padded", [False, True])
def test_cached_decode_step_has_no_graph_break(model, padded):
    model.eval()
    x = torch.randint(0, 64, (2, 8))
    mask = torch.ones(2, 9, dtype=torch.long)
    if padded:
        mask[1, :3] = 0  # left padding: positions from the mask, padding keys hidden
    cache = model.make_cache(2, 16)
    with torch.no_grad():
        model(x, attention_mask=mask[:, :8] if padded else None, kv_cache=cache)  # prefill, eager
        step = dict(attention_mask=mask) if padded else {}
        explained = torch._dynamo.explain(model)(x[:, -1:], kv_cache=cache, logits_to_keep=1, **step)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert cache.length == 9  # the traced step really ran and advanced the cache
