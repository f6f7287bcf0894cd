"""``llmcore.modules.Linear`` (issue 19): the row-split small-batch inference path computes what
``F.linear`` computes, is taken exactly where it should be, and leaves training and decoding unchanged."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llmcore import ModelConfig, TransformerLM
from llmcore.generation import generate
from llmcore.modules import Linear
from llmcore.modules import linear as linear_module
from llmcore.modules.linear import linear


@pytest.fixture
def spy(monkeypatch):
    """Counts the calls that take the split path; the size floor is lowered so small layers take it."""
    calls = []
    real = linear_module._split_rows

    def counted(*args):
        calls.append(args[3])
        return real(*args)

    monkeypatch.setattr(linear_module, "_split_rows", counted)
    monkeypatch.setattr(linear_module, "MIN_SPLIT_WEIGHTS", 0)
    return calls


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("out_features", [96, 97])  # 97: a remainder row block that goes through F.linear
@pytest.mark.parametrize("shape", [(1, 40), (5, 40), (2, 3, 40)])
def test_split_path_equals_f_linear(spy, threads, out_features, shape):
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    w, b, x = torch.randn(out_features, 40), torch.randn(out_features), torch.randn(shape)
    with torch.no_grad():
        for bias in (b, None):
            got = linear(x, w, bias)
            torch.testing.assert_close(got, F.linear(x, w, bias), rtol=1e-5, atol=1e-5)
            assert got.shape == (*shape[:-1], out_features)
    assert spy == [threads, threads]


def test_split_path_is_only_for_small_batch_cpu_float32_inference(spy):
    torch.set_num_threads(2)
    layer = Linear(32, 64)
    x = torch.randn(4, 32)
    layer(x)  # gradients on: training goes through F.linear
    torch.set_num_threads(1)
    with torch.no_grad():
        layer(x)  # one thread: nothing to split across
    torch.set_num_threads(2)
    with torch.no_grad():
        layer(torch.randn(linear_module.MAX_SPLIT_ROWS + 1, 32))  # a big batch: MKL's gemm threads itself
        layer.bfloat16()(x.bfloat16())  # bf16: oneDNN threads itself
    assert spy == []
    with torch.inference_mode():
        layer.float()(x)
    assert spy == [2]


def test_split_path_keeps_the_real_size_floor(monkeypatch):
    calls = []
    monkeypatch.setattr(linear_module, "_split_rows", lambda *a: calls.append(a) or F.linear(*a[:3]))
    torch.set_num_threads(2)
    with torch.no_grad():
        linear(torch.randn(1, 256), torch.randn(256, 256))  # 2^16 weights: cache-resident, not split
        linear(torch.randn(1, 768), torch.randn(768, 768))  # GPT-2 small's attention projection: split
    assert len(calls) == 1


def test_linear_keeps_nn_linear_state_dict_and_gradients():
    torch.manual_seed(0)
    ours, plain = Linear(16, 8), torch.nn.Linear(16, 8)
    plain.load_state_dict(ours.state_dict())
    assert list(ours.state_dict()) == ["weight", "bias"]
    x = torch.randn(3, 16)
    ours(x).square().sum().backward()
    plain(x).square().sum().backward()
    torch.testing.assert_close(ours.weight.grad, plain.weight.grad)


def test_greedy_decoding_on_two_threads_equals_one_thread(spy):
    """Batched cached greedy decoding with every linear split across 2 threads = the 1-thread tokens."""
    torch.manual_seed(0)
    model = TransformerLM(ModelConfig(vocab_size=101, d_model=64, n_layers=2, n_heads=4, max_seq_len=64)).eval()
    prompt = torch.randint(0, 101, (3, 5))
    one = generate(model, prompt, max_new_tokens=12, do_sample=False)
    assert spy == []
    torch.set_num_threads(2)
    two = generate(model, prompt, max_new_tokens=12, do_sample=False)
    assert spy, "the 2-thread run never took the split path"
    assert torch.equal(one, two)
    with torch.no_grad():
        split = model(prompt[:1, :1])  # one row per linear: split
        torch.set_num_threads(1)
        torch.testing.assert_close(split, model(prompt[:1, :1]), rtol=1e-5, atol=1e-5)
