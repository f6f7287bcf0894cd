"""TransformerLM and its modules: causality, masks, attention paths, GQA, KV cache, save/load, subclassing."""

import pytest
import torch
from torch import nn

from llmcore import CheckpointError, DataError, GenerationError, ModelConfig, TransformerLM
from llmcore.inputs import check_token_ids
from llmcore.modules import Attention, DecoderBlock, KVCache, make_attention_mask, reference_attention

CONFIGS = {
    "llama": dict(pos_encoding="rope", norm="rmsnorm", activation="swiglu", n_kv_heads=2, bias=False,
                  tie_embeddings=False),
    "gpt2": dict(pos_encoding="learned", norm="layernorm", activation="gelu_tanh", bias=True),
    "sinusoidal": dict(pos_encoding="sinusoidal", norm="layernorm", activation="relu"),
}


def make(kind: str, **kw) -> TransformerLM:
    base = dict(vocab_size=97, max_seq_len=32, d_model=32, n_layers=2, n_heads=4)
    cfg = ModelConfig(**{**base, **CONFIGS[kind], **kw})
    return TransformerLM(cfg).eval()


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_causality(kind):
    """Changing token t+1 never changes the logits at positions <= t."""
    model = make(kind)
    x = torch.randint(0, 97, (2, 16))
    base = model(x)
    for t in (0, 7, 14):
        y = x.clone()
        y[:, t + 1] = (y[:, t + 1] + 1) % 97
        out = model(y)
        torch.testing.assert_close(out[:, : t + 1], base[:, : t + 1], rtol=0, atol=1e-6)
        assert not torch.allclose(out[:, t + 1], base[:, t + 1])


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_left_padding_matches_unpadded(kind):
    """A left-padded row gives the same logits on its real tokens as the row alone."""
    model = make(kind)
    a, b = torch.randint(0, 97, (1, 12)), torch.randint(0, 97, (1, 7))
    batch = torch.zeros(2, 12, dtype=torch.long)
    batch[0], batch[1, 5:] = a[0], b[0]
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, :5] = 0
    out = model(batch, attention_mask=mask)
    torch.testing.assert_close(out[0], model(a)[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1, 5:], model(b)[0], atol=1e-5, rtol=1e-5)
    assert torch.isfinite(out).all()  # fully padded query rows never produce NaN


def test_sdpa_equals_reference_path():
    torch.manual_seed(1)
    q, k, v = (torch.randn(2, 4, 9, 8) for _ in range(3))
    for mask, causal in ((None, True), (None, False), (make_attention_mask(torch.tensor([[0, 1] * 4 + [1]] * 2), 9), False)):
        fast = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        ref, w = reference_attention(q, k, v, mask, causal)
        torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(w.sum(-1), torch.ones(2, 4, 9))
    model = make("llama")
    x = torch.randint(0, 97, (2, 10))
    expected = model(x)
    Attention.use_sdpa = False
    try:
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)
    finally:
        Attention.use_sdpa = True


def test_reference_weights_are_inspectable():
    model = make("gpt2")
    x = torch.randint(0, 97, (1, 6))
    weights = []
    model.forward_hidden(x, attn_weights=weights)
    assert len(weights) == 2  # one per layer, in layer order
    w = weights[0]
    assert w.shape == (1, 4, 6, 6)
    assert torch.all(w.triu(diagonal=1) == 0)  # causal: no weight on future tokens


def test_gqa_with_all_kv_heads_is_mha():
    """n_kv_heads == n_heads is multi-head attention: same weights give the same logits as repeating kv heads."""
    gqa = make("llama", n_kv_heads=2)
    mha = make("llama", n_kv_heads=4)
    sd = gqa.state_dict()
    hd, H, Hkv = 8, 4, 2
    for i in range(2):
        w = sd[f"blocks.{i}.attn.qkv_proj.weight"]
        q, k, v = w.split([H * hd, Hkv * hd, Hkv * hd])
        rep = lambda t: t.view(Hkv, hd, -1).repeat_interleave(H // Hkv, 0).reshape(H * hd, -1)  # noqa: E731
        sd[f"blocks.{i}.attn.qkv_proj.weight"] = torch.cat([q, rep(k), rep(v)])
    mha.load_state_dict(sd)
    x = torch.randint(0, 97, (2, 12))
    torch.testing.assert_close(mha(x), gqa(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_kv_cache_incremental_equals_full(kind):
    model = make(kind)
    x = torch.randint(0, 97, (2, 14))
    full = model(x)
    cache = model.make_cache(2)
    parts = [model(x[:, :5], kv_cache=cache)]  # prefill, then 3 tokens at once, then one at a time
    parts.append(model(x[:, 5:8], kv_cache=cache))
    parts += [model(x[:, t : t + 1], kv_cache=cache) for t in range(8, 14)]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)
    assert cache.length == 14


def test_kv_cache_with_left_padding():
    model = make("llama")
    x = torch.randint(0, 97, (2, 10))
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, :4] = 0
    full = model(x, attention_mask=mask)
    cache = model.make_cache(2)
    a = model(x[:, :6], attention_mask=mask[:, :6], kv_cache=cache)
    b = [model(x[:, t : t + 1], attention_mask=mask[:, : t + 1], kv_cache=cache) for t in range(6, 10)]
    got = torch.cat([a, *b], 1)
    torch.testing.assert_close(got[0], full[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[1, 4:], full[1, 4:], atol=1e-5, rtol=1e-5)


def test_kv_cache_overflow_is_clear():
    model = make("llama")
    cache = KVCache.for_model(model, 1, max_len=4)
    with pytest.raises(GenerationError, match="KV cache overflow"):
        model(torch.randint(0, 97, (1, 5)), kv_cache=cache)


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_save_load_bit_identical(kind, tmp_path):
    model = make(kind)
    model.save_pretrained(tmp_path)
    loaded = TransformerLM.from_pretrained(tmp_path).eval()
    x = torch.randint(0, 97, (2, 9))
    assert torch.equal(model(x), loaded(x))
    if model.config.tie_embeddings:  # tied weights are stored once and re-tied on load
        from safetensors.torch import load_file

        assert "lm_head.weight" not in load_file(tmp_path / "model.safetensors")
        assert loaded.lm_head.weight is loaded.tok_embeddings.weight


def test_init_scales_residual_projections():
    model = TransformerLM(ModelConfig.from_preset("char-small"))
    std_in = model.blocks[0].attn.qkv_proj.weight.std().item()
    std_out = model.blocks[0].attn.out_proj.weight.std().item()
    assert abs(std_in - 0.02) < 0.002
    assert abs(std_out - 0.02 / (2 * 4) ** 0.5) < 0.001


def test_parameter_and_flop_counts():
    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = TransformerLM(ModelConfig.from_preset("gpt2"))
    assert 124_000_000 < model.num_parameters() < 124_800_000  # GPT-2 small: 124.4M with tied head
    assert model.flops_per_token(1024) > 6 * 85e6


class ParallelBlock(DecoderBlock):
    """GPT-J / PaLM parallel residual: x + attn(norm(x)) + mlp(norm(x)), one shared norm."""

    norm_slots = ("attn_norm",)  # no mlp_norm: an unused parameter would break DDP

    def forward(self, x, mask=None, is_causal=True, rope=None, kv_cache=None, attn_weights=None):
        h = self.attn_norm(x)
        return x + self.attn(h, mask, is_causal, rope, kv_cache, attn_weights=attn_weights) + self.mlp(h)


class ParallelLM(TransformerLM):
    block_cls = ParallelBlock


def test_subclassed_block_trains():
    model = ParallelLM(ModelConfig.from_preset("debug", vocab_size=32))
    assert isinstance(model.blocks[0], ParallelBlock)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    x = torch.arange(32).repeat(4, 2)[:, :33] % 32  # a learnable pattern: next = current + 1
    losses = []
    for _ in range(30):
        logits = model(x[:, :-1])
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_bad_input_is_clear():
    model = make("gpt2")
    with pytest.raises(DataError, match="exceeds max_seq_len=32"):
        model(torch.zeros(1, 33, dtype=torch.long))
    with pytest.raises(DataError, match="Token id 97 is outside the vocabulary \\[0, 97\\)"):
        check_token_ids(torch.tensor([[1, 97]]), model.config)  # where ids enter; forward never syncs
    with pytest.raises(DataError, match="2-D"):
        model(torch.tensor([1, 2]))


def test_bad_checkpoints_are_clear(tmp_path):
    model = make("gpt2")
    model.save_pretrained(tmp_path / "ok")
    # tensors that do not match the config
    other = make("gpt2", d_model=64)
    other.save_pretrained(tmp_path / "wrong")
    (tmp_path / "wrong" / "config.json").write_text((tmp_path / "ok" / "config.json").read_text())
    with pytest.raises(CheckpointError, match="does not match the model config.*shape mismatches"):
        TransformerLM.from_pretrained(tmp_path / "wrong")
    # truncated safetensors file
    w = (tmp_path / "ok" / "model.safetensors").read_bytes()
    (tmp_path / "ok" / "model.safetensors").write_bytes(w[: len(w) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        TransformerLM.from_pretrained(tmp_path / "ok")
    with pytest.raises(CheckpointError, match="does not exist"):
        TransformerLM.from_pretrained(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json not found"):
        TransformerLM.from_pretrained(tmp_path / "empty")


def test_logits_to_keep_runs_the_head_on_the_last_positions():
    model = make("llama")
    x = torch.randint(0, 97, (2, 9))
    full = model(x)
    assert model(x, logits_to_keep=1).shape == (2, 1, 97)
    torch.testing.assert_close(model(x, logits_to_keep=3), full[:, -3:], atol=1e-6, rtol=1e-6)
    cache = model.make_cache(2)
    model(x[:, :8], kv_cache=cache, logits_to_keep=1)
    torch.testing.assert_close(model(x[:, 8:], kv_cache=cache, logits_to_keep=1), full[:, -1:], atol=1e-5, rtol=1e-5)
