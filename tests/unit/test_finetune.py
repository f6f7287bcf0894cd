"""Fine-tuning strategies: which tensors train, at which learning rate, on which schedule; the classifier head."""

from __future__ import annotations

import json
import math

import pytest
import torch

from llmcore import ConfigError, DataError, TransformerLM
from llmcore.data import TokenDataset
from llmcore.finetune import (
    DiscriminativeLR,
    Freeze,
    Full,
    GradualUnfreeze,
    SlantedTriangular,
    count_parameters,
    layer_groups,
    set_trainable,
    slanted_triangular,
    ulmfit,
)
from llmcore.finetune.classification import ClassificationDataset, classification_loss, evaluate
from llmcore.models.classifier import SequenceClassifier
from llmcore.tokenizer import ByteTokenizer
from llmcore.training import TrainConfig, Trainer
from llmcore.training.loss import lm_loss


def fit(model, strategies=(), steps=3, data=None, loss_fn=None, **overrides):
    """Run the real Trainer for a few steps (random tokens unless ``data``); returns the trainer."""
    cfg = TrainConfig(**{"max_steps": steps, "batch_size": 4, "lr": 1e-2, "warmup_steps": 0, "eval_interval": 1000,
                         "progress": False, "num_samples": 0, "device": "cpu", **overrides})
    if data is None:
        data = TokenDataset(torch.randint(0, 128, (2000,), generator=torch.Generator().manual_seed(0)), 16)
    trainer = Trainer(model, cfg, data, strategies=strategies, loss_fn=loss_fn)
    trainer.fit()
    return trainer


# ---------------------------------------------------------------------------------------------- layer groups
def test_layer_groups_bottom_to_top(tiny_config, tiny_gpt2_config):
    groups = layer_groups(TransformerLM(tiny_config))
    assert list(groups) == ["embeddings", "blocks.0", "blocks.1", "head"]
    assert list(groups["embeddings"]) == ["tok_embeddings.weight"]
    assert set(groups["head"]) == {"final_norm.weight", "lm_head.weight"}
    # GPT-2 style: learned positions join the embeddings; the tied head is the embedding matrix itself.
    tied = layer_groups(TransformerLM(tiny_gpt2_config))
    assert set(tied["embeddings"]) == {"tok_embeddings.weight", "pos_embeddings.weight"}
    assert "lm_head.weight" not in tied["head"] and "final_norm.weight" in tied["head"]
    total = sum(len(g) for g in tied.values())
    assert total == len(list(TransformerLM(tiny_gpt2_config).named_parameters()))


def test_layer_groups_explicit(tiny_config):
    model = TransformerLM(tiny_config)
    groups = layer_groups(model, {"low": ["tok_embeddings", "blocks.0"], "high": ["blocks.1", "final_norm", "lm_head"]})
    assert list(groups) == ["low", "high"] and "blocks.0.attn.qkv_proj.weight" in groups["low"]
    with pytest.raises(ConfigError, match="in no layer group"):
        layer_groups(model, [["tok_embeddings"], ["blocks"]])


# ---------------------------------------------------------------------------------------------- freeze
def test_freeze_keeps_frozen_tensors_bit_identical(tiny_config):
    model = TransformerLM(tiny_config)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    strategy = Freeze(first_n_blocks=1, embeddings=True)
    opt = fit(model, [strategy], weight_decay=0.1).optimizer  # decay must not touch frozen tensors either
    frozen = strategy.frozen_names(model)
    assert frozen == {"tok_embeddings.weight"} | {n for n in before if n.startswith("blocks.0.")}
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, before[n]), n
            assert p.grad is None and p not in opt.state and id(p) not in in_opt
        else:
            assert not torch.equal(p, before[n]), n


def test_freeze_patterns_and_all_but_head(tiny_config):
    model = TransformerLM(tiny_config)
    Freeze(patterns=["*.attn.*", "re:mlp\\.down"]).apply(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any(".attn." in n or "down_proj" in n for n in trainable) and "blocks.0.mlp.up_proj.weight" in trainable
    Freeze(all_but_head=True).apply(model)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"final_norm.weight", "lm_head.weight"}
    Full().apply(model)
    assert count_parameters(model, trainable_only=True) == count_parameters(model)


def test_freeze_bad_input(tiny_config):
    model = TransformerLM(tiny_config)
    with pytest.raises(ConfigError, match=r"'blocks\.9\.\*'.*matches no parameter.*tok_embeddings\.weight"):
        Freeze(patterns=["blocks.9.*"]).apply(model)
    with pytest.raises(ConfigError, match="leaves no parameter trainable"):
        Freeze(patterns="*").apply(model)
    with pytest.raises(ConfigError, match="nothing to freeze"):
        Freeze()
    with pytest.raises(ConfigError, match="only 2 blocks"):
        Freeze(first_n_blocks=3).apply(model)


def test_set_trainable_clears_stale_grads(tiny_config):
    model = TransformerLM(tiny_config)
    lm_loss(model(torch.randint(0, 128, (2, 8))), torch.randint(0, 128, (2, 8))).backward()
    n = set_trainable(model, lambda name, p: name.startswith("lm_head"))
    assert n == model.lm_head.weight.numel() and model.tok_embeddings.weight.grad is None


# ---------------------------------------------------------------------------------------------- gradual unfreezing
class FakeTrainer:
    def __init__(self):
        self.rebuilds = 0

    def rebuild_optimizer(self):
        self.rebuilds += 1


def trainable_labels(model):
    return [label for label, g in layer_groups(model).items() if all(p.requires_grad for p in g.values())]


def test_gradual_unfreeze_by_steps(tiny_config):
    model, trainer = TransformerLM(tiny_config), FakeTrainer()
    s = GradualUnfreeze(every_n_steps=2)
    s.setup(model, trainer)
    expected = {0: ["head"], 1: ["head"], 2: ["blocks.1", "head"], 3: ["blocks.1", "head"],
                4: ["blocks.0", "blocks.1", "head"], 6: ["embeddings", "blocks.0", "blocks.1", "head"],
                50: ["embeddings", "blocks.0", "blocks.1", "head"]}
    for step, labels in expected.items():
        s.on_step(step)
        assert s.trainable_groups() == labels == trainable_labels(model), step
        # groups not listed are fully frozen
        frozen = [lb for lb, g in layer_groups(model).items() if not any(p.requires_grad for p in g.values())]
        assert len(frozen) + len(labels) == 4
    assert trainer.rebuilds == 3  # once per boundary, never at setup


def test_gradual_unfreeze_by_epoch(tiny_config):
    model = TransformerLM(tiny_config)
    s = GradualUnfreeze(every_epoch=True)
    s.setup(model, FakeTrainer())
    for epoch, n in [(0, 1), (1, 2), (2, 3), (3, 4), (7, 4)]:
        s.on_epoch(epoch)
        s.on_step(epoch * 100)  # steps do not unfreeze in epoch mode
        assert len(trainable_labels(model)) == n


def test_gradual_unfreeze_in_trainer_gives_fresh_optimizer_state(tiny_config):
    model = TransformerLM(tiny_config)
    emb = model.tok_embeddings.weight.detach().clone()
    s = GradualUnfreeze(every_n_steps=2)
    opt = fit(model, [s], steps=5).optimizer  # unfreezes before steps 2 and 4
    assert s.trainable_groups() == ["blocks.0", "blocks.1", "head"]
    # AdamW's per-parameter step count tells when each group joined: head 5 steps, blocks.1 3, blocks.0 1
    for label, steps in {"head": 5, "blocks.1": 3, "blocks.0": 1}.items():
        for name, p in layer_groups(model)[label].items():
            assert int(opt.state[p]["step"]) == steps, name
    assert model.tok_embeddings.weight not in opt.state and torch.equal(model.tok_embeddings.weight, emb)
    assert s.state_dict() == {"n_unfrozen": 3}


# ---------------------------------------------------------------------------------------------- learning rates
def test_discriminative_lr_per_group(tiny_config):
    model = TransformerLM(tiny_config)
    groups = DiscriminativeLR(factor=2.0).param_groups(model, base_lr=1e-3, weight_decay=0.1)
    opt = torch.optim.AdamW(groups)
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    wd_of = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    depth = {"embeddings": 3, "blocks.0": 2, "blocks.1": 1, "head": 0}
    for label, named in layer_groups(model).items():
        for name, p in named.items():
            assert math.isclose(lr_of[id(p)], 1e-3 / 2.0 ** depth[label]), name
            assert wd_of[id(p)] == (0.1 if p.dim() >= 2 and label != "embeddings" else 0.0), name
    assert all("lr_mult" in g for g in groups)
    # frozen parameters are left out of the optimizer entirely
    Freeze(embeddings=True).apply(model)
    ids = {id(p) for g in DiscriminativeLR().param_groups(model, 1e-3, 0.1) for p in g["params"]}
    assert id(model.tok_embeddings.weight) not in ids


def test_slanted_triangular_values():
    # T = 100, cut_frac = 0.1 -> cut = 10; ratio 32: lr goes 1/32 -> 1 (step 10) -> 1/32 (step 100)
    for step, want in [(0, 1 / 32), (5, 16.5 / 32), (10, 1.0), (55, 16.5 / 32), (100, 1 / 32)]:
        assert math.isclose(slanted_triangular(step, 100), want), step
    assert math.isclose(SlantedTriangular(cut_frac=0.2, ratio=10).schedule(1, 10), (1 + 0.5 * 9) / 10)
    with pytest.raises(ConfigError):
        SlantedTriangular(cut_frac=1.5)


def test_ulmfit_composition(tiny_config):
    parts = ulmfit(factor=2.0, every_n_steps=10)
    assert [type(s) for s in parts] == [GradualUnfreeze, DiscriminativeLR, SlantedTriangular]
    trainer = fit(TransformerLM(tiny_config), parts, steps=1)
    # only the top group trains yet, at lr = base · lr_mult (head: 1) · slanted_triangular(step 0)
    names = {n for g in trainer.optimizer.param_groups for n in g["names"]}
    assert names == {"final_norm.weight", "lm_head.weight"}
    for g in trainer.optimizer.param_groups:
        assert g["lr_mult"] == 1.0 and math.isclose(g["lr"], 1e-2 * slanted_triangular(0, 1))


# ---------------------------------------------------------------------------------------------- classifier
def test_classifier_pooling_ignores_padding(tiny_config):
    clf = SequenceClassifier(TransformerLM(tiny_config), num_classes=3)
    clf.eval()
    x = torch.randint(1, 128, (1, 7))
    padded = torch.cat([x, torch.zeros(1, 3, dtype=torch.long)], 1)
    mask = torch.tensor([[1] * 7 + [0] * 3])
    torch.testing.assert_close(clf(padded, attention_mask=mask), clf(x))
    # the mask comes from the batch only: without it, the pads are read as tokens (no guessing from a pad id)
    assert not torch.allclose(clf(padded), clf(x))
    mean = SequenceClassifier(TransformerLM(tiny_config), 3, pooling="mean").eval()
    torch.testing.assert_close(mean(padded, attention_mask=mask), mean(x))
    assert isinstance(clf.body.lm_head, torch.nn.Identity)
    assert list(layer_groups(clf))[-1] == "head" and "head.weight" in layer_groups(clf)["head"]


def test_classifier_last_pooling_finds_the_last_token_past_bf16_integers(tiny_config):
    """bf16 counts exactly only to 256: the last real token of a longer padded row must still be the one pooled."""
    clf = SequenceClassifier(TransformerLM(tiny_config.replace(max_seq_len=300)), num_classes=3).eval()
    clf = clf.to(torch.bfloat16)
    x = torch.randint(1, 128, (1, 257))
    padded = torch.cat([x, torch.zeros(1, 3, dtype=torch.long)], 1)
    mask = torch.tensor([[1] * 257 + [0] * 3])
    with torch.no_grad():
        h = clf.body.forward_hidden(padded, mask)
        want = clf.head(h[:, 256])  # the hidden state of the last real token, index 256
        torch.testing.assert_close(clf(padded, attention_mask=mask), want, rtol=0, atol=0)


def test_classifier_trains_and_round_trips(tiny_config, tmp_path):
    tok = ByteTokenizer()
    texts = ["good day", "fine morning", "bad night", "poor evening"] * 4
    labels = ["pos", "pos", "neg", "neg"] * 4
    data = ClassificationDataset(texts, labels, tok, max_len=16)
    assert data.label_names == ["neg", "pos"] and data.num_classes == 2
    batch = data.sample_batch(8, torch.Generator().manual_seed(0))
    assert list(batch) == ["input_ids", "attention_mask", "labels"] and batch["labels"].shape == (8,)
    assert batch["attention_mask"].sum(1).tolist() == [len(data.ids[i]) for i in
                                                       torch.randint(16, (8,), generator=torch.Generator()
                                                                     .manual_seed(0)).tolist()]
    lm = TransformerLM(tiny_config.replace(vocab_size=tok.vocab_size))
    clf = SequenceClassifier.from_lm(lm, data.num_classes)
    assert not isinstance(lm.lm_head, torch.nn.Identity)  # from_lm copies by default
    before = evaluate(clf, data)
    trainer = Trainer(clf, TrainConfig(max_steps=15, batch_size=4, lr=3e-3, warmup_steps=0, eval_interval=1000,
                                       progress=False, num_samples=0, device="cpu"), data,
                      loss_fn=classification_loss)
    # the Trainer's evaluation is the hand-computed mean cross-entropy over the set (example-weighted)
    with torch.no_grad():
        full = data.collate(range(len(data)))
        clf.eval()
        logits = clf(full["input_ids"], attention_mask=full["attention_mask"])
    want = float(torch.nn.functional.cross_entropy(logits, full["labels"]))
    assert trainer.evaluate(data)["val_loss"] == pytest.approx(want, rel=1e-5) == before["loss"]
    trainer.fit()
    after = evaluate(clf, data)
    assert after["loss"] < before["loss"] and after["accuracy"] == 1.0
    # the Trainer's own evaluation works on class logits too: val_acc is the accuracy
    assert math.isclose(trainer.evaluate(data)["val_acc"], 1.0)
    x, mask = batch["input_ids"], batch["attention_mask"]
    clf.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["config"]["num_classes"] == 2
    again = SequenceClassifier.from_pretrained(tmp_path)
    assert not again.training  # like every from_pretrained
    torch.testing.assert_close(again(x, mask), clf.eval()(x, mask))
    with pytest.raises(ConfigError, match="num_classes=1"):
        SequenceClassifier(lm, num_classes=1)
    with pytest.raises(DataError, match=r"logits \(B, C\) and labels \(B,\)"):
        classification_loss(torch.zeros(2, 3, 4), {"labels": torch.zeros(2, dtype=torch.long)})
    with pytest.raises(DataError, match=r"Token id \d+ in the encoded texts is outside the vocabulary \[0, 10\)"):
        ClassificationDataset(texts, labels, tok, vocab_size=10)


def test_classifier_directories_saved_before_classifier_config_load(tiny_config, tmp_path):
    clf = SequenceClassifier(TransformerLM(tiny_config), 3, pooling="mean").eval()
    clf.save_pretrained(tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    body = {k: v for k, v in meta["config"].items() if k not in ("num_classes", "pooling", "classifier_dropout")}
    legacy = {**meta, "config": body, "classifier": {"num_classes": 3, "pooling": "mean", "pad_id": 0, "dropout": 0.0}}
    (tmp_path / "config.json").write_text(json.dumps(legacy))
    again = SequenceClassifier.from_pretrained(tmp_path)
    x = torch.randint(0, 128, (2, 5))
    assert again.pooling == "mean" and not again.training
    torch.testing.assert_close(again(x), clf(x))


# ---------------------------------------------------------------------------------------------- command line
def test_cli_finetune_classify_with_lora(tiny_config, tmp_path):
    import argparse
    import json

    from llmcore.cli import finetune as cli

    tok = ByteTokenizer()
    TransformerLM(tiny_config.replace(vocab_size=tok.vocab_size)).save_pretrained(tmp_path / "base", tokenizer=tok)
    data = tmp_path / "cls.tsv"
    data.write_text("text\tlabel\n" + "".join(f"{w} {i}\t{w}\n" for i in range(20) for w in ("yes", "no")))
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    args = parser.parse_args(["finetune", "--model", str(tmp_path / "base"), "--data", str(data), "--task", "classify",
                              "--strategy", "lora", "--max-steps", "2", "--batch-size", "4", "--bucket", "3", "--device", "cpu",
                              "--out", str(tmp_path / "out")])
    assert args.func(args) == 0
    report = json.loads((tmp_path / "out" / "finetune.json").read_text())
    assert report["strategy"] == "lora" and report["trainable_parameters"] < report["total_parameters"]
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()
    args.strategy, args.freeze_first_n = "freeze", 5
    with pytest.raises(ConfigError, match="only 2 blocks"):
        args.func(args)
