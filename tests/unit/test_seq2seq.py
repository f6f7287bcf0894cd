"""Seq2SeqTransformer: learns a copy task, padding invariance, cached = uncached, save/load, label smoothing."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llmcore import ModelConfig
from llmcore.errors import CheckpointError, ConfigError, DataError
from llmcore.models.seq2seq import Seq2SeqCache, Seq2SeqConfig, Seq2SeqTransformer, shift_targets

PAD, BOS, EOS = 0, 1, 2


def tiny(pos: str = "learned", **kw) -> Seq2SeqTransformer:
    torch.set_num_threads(1)  # tiny ops: extra threads only spin (conftest restores the setting)
    cfg = Seq2SeqConfig(vocab_size=32, max_seq_len=24, d_model=32, n_layers=2, n_encoder_layers=1, n_heads=4,
                        pos_encoding=pos, **kw)
    return Seq2SeqTransformer(cfg).eval()


def copy_batch(B: int, g: torch.Generator, vocab: int = 16) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sources of 3..7 random tokens (right-padded) and targets [BOS, same tokens, EOS]."""
    lens = torch.randint(3, 8, (B,), generator=g)
    S = int(lens.max())
    src, tgt = torch.full((B, S), PAD), torch.full((B, S + 2), PAD)
    for i, n in enumerate(lens.tolist()):
        s = torch.randint(3, vocab, (n,), generator=g)
        src[i, :n], tgt[i, 0], tgt[i, 1:n + 1], tgt[i, n + 1] = s, BOS, s, EOS
    return src, (src != PAD).long(), tgt


def test_config_defaults_and_upgrade():
    cfg = Seq2SeqConfig(vocab_size=32, d_model=32, n_layers=3, n_heads=4)
    assert cfg.n_encoder_layers == 3 and cfg.share_embeddings
    m = Seq2SeqTransformer(ModelConfig.from_preset("debug", vocab_size=64, n_encoder_layers=1))
    assert isinstance(m.config, Seq2SeqConfig)
    assert len(m.encoder_blocks) == 1 and len(m.decoder_blocks) == 2
    assert m.src_embeddings.weight is m.tgt_embeddings.weight
    sep = Seq2SeqTransformer(Seq2SeqConfig.from_preset("debug", vocab_size=64, share_embeddings=False))
    assert sep.src_embeddings.weight is not sep.tgt_embeddings.weight
    assert Seq2SeqConfig.from_dict(cfg.to_dict()) == cfg


def test_learns_copy_task():
    torch.manual_seed(0)
    torch.set_num_threads(1)  # small matrices: one thread is fastest and leaves the other core free
    model = Seq2SeqTransformer(Seq2SeqConfig(vocab_size=16, max_seq_len=16, d_model=64, n_layers=1,
                                             n_encoder_layers=1, n_heads=4, pos_encoding="learned")).train()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        src, src_mask, tgt = copy_batch(32, g)
        inp, labels = shift_targets(tgt, PAD)
        logits = model(inp, src_ids=src, src_mask=src_mask)
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    src, src_mask, tgt = copy_batch(128, g)
    inp, labels = shift_targets(tgt, PAD)
    with torch.no_grad():
        pred = model(inp, src_ids=src, src_mask=src_mask).argmax(-1)
    real = labels != -100
    assert (pred[real] == labels[real]).float().mean() > 0.95
    # Free-running decoding (encoder once, cached decoder) reproduces whole sequences, greedy and beam.
    n = tgt.shape[1] - 1
    out = model.generate(src, src_mask, decoder_start_ids=BOS, max_new_tokens=n, eos_token_id=EOS, pad_token_id=PAD)
    torch.testing.assert_close(out, greedy(model, src, src_mask, n), check_dtype=False)  # = our own loop
    beams = model.generate(src, src_mask, decoder_start_ids=BOS, max_new_tokens=n, eos_token_id=EOS,
                           pad_token_id=PAD, num_beams=3)
    for hyp in (out, beams):
        hyp = torch.nn.functional.pad(hyp, (0, tgt.shape[1] - hyp.shape[1]), value=PAD)
        assert (hyp == tgt).all(dim=1).float().mean() > 0.8


def greedy(model: Seq2SeqTransformer, src: torch.Tensor, src_mask: torch.Tensor, max_new: int) -> torch.Tensor:
    """A minimal cached greedy decoder (independent of llmcore.generation) that pads after EOS."""
    cache = model.make_cache(src.shape[0], max_new + 1)
    ids = torch.full((src.shape[0], 1), BOS)
    done = torch.zeros(src.shape[0], dtype=torch.bool)
    with torch.no_grad():
        logits = model(ids, kv_cache=cache, src_ids=src, src_mask=src_mask)
        for _ in range(max_new):
            nxt = logits[:, -1].argmax(-1).masked_fill(done, PAD)
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            done |= nxt == EOS
            if done.all():
                break
            logits = model(ids[:, -1:], kv_cache=cache)  # memory comes from the cache
    return ids



@pytest.mark.parametrize("pos", ["learned", "rope", "sinusoidal"])
def test_padding_does_not_change_logits(pos):
    model = tiny(pos)
    g = torch.Generator().manual_seed(1)
    src = torch.randint(3, 32, (2, 6), generator=g)
    tgt = torch.randint(3, 32, (2, 5), generator=g)
    ref = model(tgt, src_ids=src)
    # Extra source padding on the right, then on the left.
    src_r = torch.cat([src, torch.full((2, 3), PAD)], 1)
    mask_r = torch.cat([torch.ones(2, 6), torch.zeros(2, 3)], 1).long()
    torch.testing.assert_close(model(tgt, src_ids=src_r, src_mask=mask_r), ref)
    torch.testing.assert_close(model(tgt, src_ids=src_r.flip(1), src_mask=mask_r.flip(1)).shape, ref.shape)
    src_l = torch.cat([torch.full((2, 3), PAD), src], 1)
    torch.testing.assert_close(model(tgt, src_ids=src_l, src_mask=mask_r.flip(1)), ref)
    # Extra target padding on the right (causal: nothing to mask) and on the left (with an attention mask).
    tgt_r = torch.cat([tgt, torch.full((2, 4), PAD)], 1)
    torch.testing.assert_close(model(tgt_r, src_ids=src)[:, :5], ref)
    tgt_l = torch.cat([torch.full((2, 4), PAD), tgt], 1)
    tmask = torch.cat([torch.zeros(2, 4), torch.ones(2, 5)], 1).long()
    torch.testing.assert_close(model(tgt_l, attention_mask=tmask, src_ids=src)[:, 4:], ref)
    # Rows of different lengths in one batch equal the rows run alone.
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    both = model(tgt, src_ids=src, src_mask=mask)
    torch.testing.assert_close(both[1:], model(tgt[1:], src_ids=src[1:, :3]))


def test_cached_decoding_equals_uncached():
    model = tiny("rope")
    g = torch.Generator().manual_seed(2)
    src = torch.randint(3, 32, (3, 7), generator=g)
    src_mask = torch.ones_like(src)
    src_mask[2, 5:] = 0
    tgt = torch.randint(3, 32, (3, 6), generator=g)
    full = model(tgt, src_ids=src, src_mask=src_mask)
    cache = model.make_cache(3, 6)
    assert isinstance(cache, Seq2SeqCache)
    steps = [model(tgt[:, :2], kv_cache=cache, src_ids=src, src_mask=src_mask)]
    assert cache.memory is not None and all(c is not None for c in cache.cross)
    steps += [model(tgt[:, t:t + 1], kv_cache=cache) for t in range(2, 6)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-4)
    # A plain KVCache works when memory is passed every step (computed once by encode()).
    memory = model.encode(src, src_mask)
    cache2 = model.make_cache(3, 6)
    steps = [model(tgt[:, t:t + 1], kv_cache=cache2, memory=memory, memory_mask=src_mask) for t in range(6)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-4)


def test_cache_reorder_moves_memory():
    model = tiny()
    g = torch.Generator().manual_seed(3)
    src = torch.randint(3, 32, (2, 5), generator=g)
    tgt = torch.randint(3, 32, (2, 4), generator=g)
    cache = model.make_cache(2, 4)
    model(tgt[:, :2], kv_cache=cache, src_ids=src)
    cache.reorder(torch.tensor([1, 1, 0]))  # e.g. beams
    step = model(tgt[[1, 1, 0], 2:3], kv_cache=cache)
    torch.testing.assert_close(step, model(tgt[[1, 1, 0], :3], src_ids=src[[1, 1, 0]])[:, -1:], atol=1e-5, rtol=1e-4)


def test_missing_source_and_bad_masks_raise():
    model = tiny()
    tgt = torch.randint(3, 32, (1, 4))
    with pytest.raises(DataError, match="needs the source"):
        model(tgt)
    with pytest.raises(DataError, match="memory_mask"):
        model(tgt, memory=torch.zeros(1, 5, 32), memory_mask=torch.ones(1, 4))
    with pytest.raises(DataError, match="max_seq_len"):
        model(tgt, src_ids=torch.randint(3, 32, (1, 30)))


def test_label_smoothing_ignores_pads():
    lm_loss = pytest.importorskip("llmcore.training").lm_loss
    model = tiny()
    g = torch.Generator().manual_seed(4)
    src, tgt = torch.randint(3, 32, (2, 5), generator=g), torch.randint(3, 32, (2, 6), generator=g)
    tgt[:, 0] = BOS
    inp, labels = shift_targets(tgt, PAD)
    ref = lm_loss(model(inp, src_ids=src), labels, label_smoothing=0.1)
    padded = torch.cat([tgt, torch.full((2, 3), PAD)], 1)
    inp_p, labels_p = shift_targets(padded, PAD)
    assert (labels_p[:, 5:] == -100).all()
    got = lm_loss(model(inp_p, src_ids=src), labels_p, label_smoothing=0.1)
    torch.testing.assert_close(got, ref)
    assert not torch.allclose(ref, lm_loss(model(inp, src_ids=src), labels))  # smoothing does something


@pytest.mark.parametrize("share,tie", [(True, True), (False, False)])
def test_save_load_round_trip(tmp_path, share, tie):
    model = tiny(share_embeddings=share, tie_embeddings=tie)
    model.save_pretrained(tmp_path)
    loaded = Seq2SeqTransformer.from_pretrained(tmp_path).eval()
    assert loaded.config == model.config
    src, tgt = torch.randint(3, 32, (2, 5)), torch.randint(3, 32, (2, 4))
    torch.testing.assert_close(loaded(tgt, src_ids=src), model(tgt, src_ids=src))
    assert (loaded.src_embeddings.weight is loaded.tgt_embeddings.weight) == share
    from llmcore.models.transformer import TransformerLM

    with pytest.raises(CheckpointError, match="Seq2SeqTransformer"):
        TransformerLM.from_pretrained(tmp_path)


# config.json exactly as the code before Seq2SeqConfig.decoder_start_token_id wrote it (Seq2SeqTransformer of
# ModelConfig(vocab_size=40, max_seq_len=16, d_model=16, n_layers=1, n_heads=2, extra={...}), save_pretrained):
# the decoder start id and share_embeddings lived in ``extra``.
OLD_CONFIG_JSON = """{
  "architecture": "Seq2SeqTransformer",
  "config": {
    "activation": "gelu", "bias": true, "d_ff": 64, "d_model": 16, "dropout": 0.0,
    "extra": {"decoder_start_token_id": 3, "share_embeddings": false, "translation": {"tgt_lang_tag": "<2zh>"}},
    "init_std": 0.02, "max_seq_len": 16, "multiple_of": 64, "n_encoder_layers": 1, "n_heads": 2,
    "n_kv_heads": 2, "n_layers": 1, "norm": "layernorm", "norm_eps": 1e-05, "pos_encoding": "learned",
    "rope_theta": 10000.0, "share_embeddings": false, "tie_embeddings": true, "vocab_size": 40
  },
  "format": "llmcore"
}"""


def test_old_config_json_with_settings_in_extra_loads(tmp_path):
    torch.manual_seed(0)
    model = Seq2SeqTransformer(Seq2SeqConfig(vocab_size=40, max_seq_len=16, d_model=16, n_layers=1, n_heads=2,
                                             share_embeddings=False)).eval()
    model.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(OLD_CONFIG_JSON, encoding="utf-8")
    loaded = Seq2SeqTransformer.from_pretrained(tmp_path)
    cfg = loaded.config
    assert (cfg.decoder_start_token_id, cfg.share_embeddings) == (3, False)
    assert cfg.extra == {"translation": {"tgt_lang_tag": "<2zh>"}}  # what is not a field stays where it was
    assert loaded.src_embeddings.weight is not loaded.tgt_embeddings.weight
    src = torch.tensor([[5, 6, 7, 2]])
    out = loaded.generate(src, max_new_tokens=3, eos_token_id=[])  # starts from the saved decoder start id
    assert out[0, 0].item() == 3 and out.shape == (1, 4)
    torch.testing.assert_close(loaded(out, src_ids=src), model(out, src_ids=src), rtol=0, atol=0)
    # Saved again, the settings are fields; the new file loads to the same config.
    loaded.save_pretrained(tmp_path / "again")
    assert Seq2SeqTransformer.from_pretrained(tmp_path / "again").config == cfg


def test_decoder_start_token_id_is_validated():
    with pytest.raises(ConfigError, match=r"decoder_start_token_id=40 is invalid.*vocab_size=40"):
        Seq2SeqConfig(vocab_size=40, d_model=16, n_heads=2, decoder_start_token_id=40)
    model = tiny()
    with pytest.raises(DataError, match="decoder_start_ids"):
        model.generate(torch.tensor([[5, 6]]), max_new_tokens=1)
