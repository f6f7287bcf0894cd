"""Dict batches: rows= builds exactly those rows of the full batch (every dataset type), the Trainer's loss_fn
and evaluate contract, train mode inside fit after from_pretrained, and strategies resuming exactly."""

from __future__ import annotations

import pytest
import torch

from helpers import run
from llmcore import ModelConfig, TransformerLM
from llmcore.data import OnTheFlyTextDataset, TokenDataset
from llmcore.errors import DataError
from llmcore.finetune import ClassificationDataset, GradualUnfreeze, PairDataset
from llmcore.inputs import IGNORE_INDEX
from llmcore.tokenizer import ByteTokenizer, CharTokenizer
from llmcore.training import TrainConfig, Trainer
from llmcore.training import checkpoint as ckpt
from llmcore.translation.data import Seq2SeqPairs

TOK = ByteTokenizer(specials=("<bos>", "<eos>", "<pad>", "<2zh>"))
ROWS = [("a" * n, "好" * (n % 5 + 1)) for n in range(1, 30)]
TEXT = "the quick brown fox jumps over the lazy dog. " * 40


def datasets():
    char = CharTokenizer.from_text(TEXT)
    return {
        "token": TokenDataset(torch.randint(0, 50, (400,), generator=torch.Generator().manual_seed(0)), 8),
        "on_the_fly": OnTheFlyTextDataset(TEXT, char, block_size=16, sample=False),
        "pairs": PairDataset(ROWS, TOK, tgt_lang_tag="<2zh>"),
        "pairs_bucketed": PairDataset(ROWS, TOK, tgt_lang_tag="<2zh>", bucket=3),
        "seq2seq": Seq2SeqPairs(ROWS, TOK, src_len=40, tgt_len=8),
        "classification": ClassificationDataset([s for s, _ in ROWS], [len(t) % 2 for _, t in ROWS], TOK),
    }


@pytest.mark.parametrize("name", list(datasets()))
def test_rows_build_exactly_those_rows_of_the_full_batch(name):
    data = datasets()[name]
    g_full, g_rows = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    full = data.sample_batch(8, g_full)
    rows = torch.tensor([6, 1, 4])
    part = data.sample_batch(8, g_rows, rows=rows)
    assert list(part) == list(full) and "labels" in full
    for key in full:
        assert torch.equal(part[key], full[key][rows]), key  # same values and the same padding width
    assert torch.equal(g_full.get_state(), g_rows.get_state())  # the generator advanced identically
    assert torch.equal(data.sample_batch(8, g_full)["labels"], data.sample_batch(8, g_rows)["labels"])


def tiny_lm(dropout=0.0) -> TransformerLM:
    torch.manual_seed(0)
    return TransformerLM(ModelConfig.from_preset("debug", vocab_size=32, max_seq_len=16, dropout=dropout))


def config(**kw) -> TrainConfig:
    return TrainConfig(**{**dict(max_steps=3, batch_size=4, warmup_steps=0, lr=1e-2, min_lr=1e-3, eval_interval=100,
                                 eval_batches=2, progress=False, num_samples=0, device="cpu"), **kw})


def lm_data(seed=0):
    return TokenDataset(torch.randint(0, 32, (600,), generator=torch.Generator().manual_seed(seed)), 8)


def test_evaluate_uses_a_custom_loss_fn():
    def first_token_only(outputs, batch):  # summed over targets, here every row's first position only
        labels = batch["labels"].clone()
        labels[:, 1:] = IGNORE_INDEX
        return torch.nn.functional.cross_entropy(outputs.flatten(0, 1).float(), labels.flatten(),
                                                 ignore_index=IGNORE_INDEX, reduction="sum")

    model, val = tiny_lm(), lm_data(1)
    trainer = Trainer(model, config(), lm_data(), loss_fn=first_token_only)
    batches = list(val.iter_eval(4, 2))
    with torch.no_grad():
        total = sum(float(first_token_only(model(b["input_ids"]), b)) for b in batches)
    n = sum(int((b["labels"] != IGNORE_INDEX).sum()) for b in batches)  # the divisor is the labels' count
    got = trainer.evaluate(val)
    assert got["val_loss"] == pytest.approx(total / n, rel=1e-6)
    default = Trainer(model, config(), lm_data()).evaluate(val)["val_loss"]
    assert default != pytest.approx(got["val_loss"], rel=1e-3)  # and not the default cross-entropy


def test_fit_trains_in_train_mode_after_from_pretrained_and_evaluate_restores(tmp_path):
    tiny_lm(dropout=0.5).save_pretrained(tmp_path)
    model = TransformerLM.from_pretrained(tmp_path)
    assert not model.training  # as Hugging Face: a loaded model is for inference
    probe = torch.randint(0, 32, (2, 8), generator=torch.Generator().manual_seed(0))
    seen = []

    class Probe:
        def setup(self, model, trainer):
            self.model = model

        def on_step(self, step):
            with torch.no_grad():  # dropout active: two calls on the same input differ
                a, b = self.model(probe), self.model(probe)
            seen.append((self.model.training, all(m.training for m in self.model.modules()), not torch.equal(a, b)))

    trainer = Trainer(model, config(max_steps=2), lm_data(), lm_data(1), strategies=[Probe()])
    evals = []
    trainer.add_callback("on_eval", lambda t, info: evals.append(t.model.training))
    trainer.fit()
    assert seen == [(True, True, True)] * 2 and evals == [True]  # the mode was back after the evaluation
    trainer.evaluate()
    assert model.training
    model.eval()
    trainer.evaluate()
    assert not model.training


def unfreeze_trainer(out, max_steps=8):
    model = tiny_lm(dropout=0.1)
    cfg = config(max_steps=max_steps, grad_accum=2, eval_interval=3, out_dir=str(out), keep_last=3)
    return Trainer(model, cfg, lm_data(), lm_data(1), strategies=[GradualUnfreeze(every_n_steps=2)])


def test_gradual_unfreeze_interrupted_and_resumed_equals_uninterrupted(tmp_path):
    full = unfreeze_trainer(tmp_path / "a")
    ref = run(full)
    run(unfreeze_trainer(tmp_path / "b"), crash_at=4)  # killed after step 4; the checkpoint is step 3
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "b")] == ["ckpt-000003"]
    resumed = unfreeze_trainer(tmp_path / "b")
    losses = run(resumed, resume=True)
    assert sorted(losses) == [4, 5, 6, 7, 8]
    assert all(losses[s] == ref[s] for s in losses)  # exact
    assert resumed.strategies[0].n_unfrozen == full.strategies[0].n_unfrozen == 4
    for (n, p), q in zip(full.model.named_parameters(), resumed.model.parameters()):
        assert torch.equal(p, q), n
        assert p.requires_grad == q.requires_grad, n


def test_rank_rows_partition_the_global_batch():
    from llmcore.training.batches import check_batch, rank_rows, row_tokens
    from llmcore.training.distributed import DistEnv

    B, k, W = 4, 2, 3
    assert rank_rows(B, k, DistEnv()) is None  # one process builds every row
    rows = [rank_rows(B, k, DistEnv(rank=r, world_size=W)) for r in range(W)]
    assert sorted(torch.cat(rows).tolist()) == list(range(B * k * W))  # each row on exactly one rank
    # micro-batch i of rank r is the slice [(i·W + r)·B, ... + B)
    assert rows[1].tolist() == [4, 5, 6, 7, 16, 17, 18, 19]
    batch = {"input_ids": torch.zeros(8, 5, dtype=torch.long), "labels": torch.zeros(8, 5, dtype=torch.long)}
    assert row_tokens(batch) == 5 and row_tokens({"labels": torch.zeros(8)}) == 1
    with pytest.raises(DataError, match=r"must give 6 rows.*'input_ids': \(8, 5\)"):
        check_batch(batch, 6, "sample_batch")
    with pytest.raises(DataError, match="needs a dict of tensors with a 'labels' entry"):
        check_batch((batch["input_ids"], batch["labels"]), 8, "sample_batch")
