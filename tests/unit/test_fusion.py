"""Multimodal fusion models (llmcore.models.fusion): prefix and gated cross-attention, as equivalences.

Gates at 0 = the text-only LM (bitwise); cached decoding = recomputing every step; a batch = each row alone;
stage-1 training through the Trainer leaves the frozen parts bit-identical; save/load round trip; one-line
errors for bad images and misuse.
"""

from __future__ import annotations

import pytest
import torch

from llmcore import ModelConfig, TransformerLM
from llmcore.data import ImageTextDataset
from llmcore.errors import ConfigError, DataError
from llmcore.finetune import Freeze
from llmcore.models import CrossAttentionFusionLM, FusionConfig, PrefixFusionLM, load_model
from llmcore.models.fusion import pretrained_parts
from llmcore.training import TrainConfig, Trainer

VISION = dict(image_size=16, patch_size=4, d_model=32, n_layers=1, n_heads=4)
KINDS = (PrefixFusionLM, CrossAttentionFusionLM)


def config(**kw) -> FusionConfig:
    return FusionConfig.from_preset("debug", vocab_size=40, max_seq_len=48, vision=VISION, **kw)


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def open_gates(model: torch.nn.Module) -> None:
    """Trained cross-attention has open gates; test with them open so the image matters."""
    for name, p in model.named_parameters():
        if name.endswith("_gate"):
            torch.nn.init.constant_(p, 0.7)


def test_cross_attention_with_closed_gates_is_the_text_only_lm_bitwise():
    torch.manual_seed(0)
    cfg = config(cross_every=1)
    lm = TransformerLM(ModelConfig.from_preset("debug", vocab_size=40, max_seq_len=48)).eval()
    fused = CrossAttentionFusionLM(cfg).eval()
    missing = fused.load_state_dict(lm.state_dict(), strict=False).missing_keys
    assert missing and all(k.split(".")[0] in ("encoder", "feature_proj", "cross_blocks") for k in missing)
    ids = torch.randint(0, 40, (2, 7))
    assert torch.equal(fused(ids, images=images(2)), lm(ids))
    assert torch.equal(fused.generate(ids, images=images(2), max_new_tokens=6), lm.generate(ids, max_new_tokens=6))
    open_gates(fused)  # ...and the image changes the output once the gates open
    assert not torch.allclose(fused(ids, images=images(2)), lm(ids))


def test_closed_gates_block_every_gradient_to_the_encoder_and_gate_init_opens_them():
    """gate_init=0 is a saddle for a from-scratch encoder: no gradient reaches the encoder or the cross-attention
    (only the gates get one); gate_init > 0 starts the gates there, gradients flow, and the config round-trips."""
    ids, im = torch.randint(0, 40, (2, 7), generator=torch.Generator().manual_seed(0)), images(2)

    def grads(model):
        model(ids, images=im).square().mean().backward()
        return {n: (p.grad is not None and bool(p.grad.abs().sum() > 0)) for n, p in model.named_parameters()}

    torch.manual_seed(0)
    closed = grads(CrossAttentionFusionLM(config(cross_every=1)))
    assert not any(v for n, v in closed.items() if n.startswith(("encoder.", "feature_proj.", "cross_blocks."))
                   and not n.endswith("_gate"))
    torch.manual_seed(0)
    model = CrossAttentionFusionLM(config(cross_every=1, gate_init=0.1))
    gates = [p for n, p in model.named_parameters() if n.endswith("_gate")]
    assert gates and all(g.item() == pytest.approx(0.1) for g in gates)
    opened = grads(model)
    assert opened["encoder.patch_embed.weight"] and opened["feature_proj.weight"]
    assert FusionConfig.from_dict(model.config.to_dict()).gate_init == pytest.approx(0.1)
    with pytest.raises(ConfigError, match="gate_init"):
        config(gate_init="open")


@pytest.mark.parametrize("kind", KINDS)
def test_cached_decoding_equals_recomputing_every_step(kind):
    torch.manual_seed(1)
    model = kind(config(cross_every=2)).eval()
    open_gates(model)
    ids, im = torch.randint(0, 40, (2, 4)), images(2)
    out = model.generate(ids, images=im, max_new_tokens=8)
    seq = ids
    for _ in range(8):  # plain greedy by full forward passes over image + text
        nxt = model(seq, images=im)[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], dim=1)
    assert torch.equal(out, seq)
    assert torch.equal(out, model.generate(ids, images=im, max_new_tokens=8, use_cache=False))
    beams = model.generate(ids, images=im, max_new_tokens=6, num_beams=3)
    assert torch.equal(beams, model.generate(ids, images=im, max_new_tokens=6, num_beams=3, use_cache=False))


@pytest.mark.parametrize("kind", KINDS)
def test_a_left_padded_batch_decodes_as_each_row_alone(kind):
    torch.manual_seed(2)
    model = kind(config()).eval()
    open_gates(model)
    a, b, im = torch.randint(0, 40, (1, 6)), torch.randint(0, 40, (1, 3)), images(2, seed=3)
    pad = torch.zeros(1, 3, dtype=torch.long)
    batch = torch.cat([a, torch.cat([pad, b], 1)])
    mask = torch.cat([torch.ones(1, 6), torch.cat([torch.zeros(1, 3), torch.ones(1, 3)], 1)]).long()
    out = model.generate(batch, mask, images=im, max_new_tokens=5)
    assert torch.equal(out[0, 6:], model.generate(a, images=im[:1], max_new_tokens=5)[0, 6:])
    assert torch.equal(out[1, 6:], model.generate(b, images=im[1:], max_new_tokens=5)[0, 3:])


@pytest.mark.parametrize("kind", KINDS)
def test_stage_one_trains_only_the_new_parts_through_the_trainer(kind, tmp_path):
    torch.manual_seed(3)
    model = kind(config())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    n = 16
    texts = [torch.randint(1, 40, (int(k),)).tolist() for k in torch.randint(3, 9, (n,))]
    data = ImageTextDataset(images(n, seed=4), texts, pad_id=0, prompt_lengths=[1] * n)
    batch = data.collate([0, 1])
    assert batch["images"].shape == (2, 3, 16, 16)
    frozen = pretrained_parts(model)
    assert "encoder" in frozen and "blocks" in frozen
    cfg = TrainConfig(max_steps=3, batch_size=n, lr=1e-2, warmup_steps=0, progress=False, num_samples=0,
                      eval_interval=100, device="cpu", out_dir=None)
    Trainer(model, cfg, data, strategies=[Freeze(frozen)]).fit()
    after = model.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    new = ("projector",) if kind is PrefixFusionLM else ("feature_proj", "cross_blocks")
    assert changed and all(k.startswith(new) for k in changed)  # frozen parts bit-identical
    assert any(k.startswith(new[-1]) for k in changed)


def test_image_text_batches_hold_shifted_labels_with_the_prompt_masked():
    texts = [[1, 5, 6, 7, 2], [1, 8, 2]]  # bos, question 5 6, answer 7, eos / bos, answer 8, eos
    ims = images(1, seed=6)  # one image shared by both texts
    data = ImageTextDataset(ims, texts, pad_id=0, prompt_lengths=[3, 1], input_index=[0, 0])
    batch = data.collate([0, 1])
    assert batch["input_ids"].tolist() == [[1, 5, 6, 7], [1, 8, 2, 0]]
    assert batch["labels"].tolist() == [[-100, -100, 7, 2], [8, 2, -100, -100]]  # next tokens, prompt masked
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert torch.equal(batch["images"], ims.expand(2, -1, -1, -1))
    with pytest.raises(DataError, match="at least 2"):
        ImageTextDataset(ims, [[1]], pad_id=0)
    with pytest.raises(DataError, match="input_index"):
        ImageTextDataset(ims, texts, pad_id=0, input_index=[0, 1])


@pytest.mark.parametrize("kind", KINDS)
def test_save_and_load_round_trip_by_architecture_name(kind, tmp_path):
    torch.manual_seed(4)
    model = kind(config(projector="linear")).eval()
    open_gates(model)
    model.save_pretrained(tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert type(loaded) is kind and loaded.config == model.config
    ids = torch.randint(0, 40, (1, 5))
    assert torch.equal(loaded(ids, images=images(1)), model(ids, images=images(1)))


def test_precomputed_features_instead_of_a_vision_encoder():
    torch.manual_seed(5)
    model = PrefixFusionLM(FusionConfig.from_preset("debug", vocab_size=40, max_seq_len=48, feature_dim=12)).eval()
    feats, ids = torch.randn(2, 5, 12), torch.randint(0, 40, (2, 3))
    assert model(ids, features=feats).shape == (2, 3, 40)
    with pytest.raises(DataError, match="precomputed features"):
        model(ids, images=images(2))


def test_bad_inputs_get_one_line_errors():
    model = PrefixFusionLM(config()).eval()
    ids = torch.randint(0, 40, (2, 4))
    with pytest.raises(DataError, match="16, 16"):
        model(ids, images=torch.rand(2, 3, 32, 32))
    with pytest.raises(DataError, match="channels"):
        model(ids, images=torch.rand(2, 4, 16, 16))
    with pytest.raises(DataError, match="uint8"):
        model(ids, images=torch.zeros(2, 3, 16, 16, dtype=torch.uint8))
    with pytest.raises(DataError, match="one per text"):
        model(ids, images=images(3))
    with pytest.raises(DataError, match="not features"):
        model(ids, features=torch.randn(2, 4, 32))
    with pytest.raises(DataError, match="max_seq_len|context"):  # 16 prefix positions + 40 tokens > 48
        model(torch.randint(0, 40, (1, 40)), images=images(1))
    with pytest.raises(ConfigError, match="projector"):
        config(projector="conv")
    with pytest.raises(ConfigError, match="cross_every"):
        config(cross_every=0)
    with pytest.raises(ConfigError, match="feature_dim"):
        FusionConfig.from_preset("debug", vocab_size=40)
