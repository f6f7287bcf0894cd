"""Trainer: accumulation == big batch, early stopping, NaN handling, strategy hooks, any-model, config."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from llmcore import ModelConfig, TransformerLM
from llmcore.data import TokenDataset
from llmcore.errors import ConfigError, TrainingError
from llmcore.training import TrainConfig, Trainer
from llmcore.training.checkpoint import latest_checkpoint, load_model_weights, read_checkpoint


class Rows:
    """A fixed set of (x, y) rows; sample_batch draws rows with the generator, iter_eval walks them in order."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def sample_batch(self, batch_size, generator=None, rows=None):
        idx = torch.randint(len(self.x), (batch_size,), generator=generator)
        idx = idx if rows is None else idx[rows]
        return {"input_ids": self.x[idx], "labels": self.y[idx]}

    def iter_eval(self, batch_size, max_batches=None):
        for b, i in enumerate(range(0, len(self.x), batch_size)):
            if max_batches is not None and b >= max_batches:
                return
            yield {"input_ids": self.x[i:i + batch_size], "labels": self.y[i:i + batch_size]}


def config(**kw) -> TrainConfig:
    base = dict(max_steps=4, batch_size=4, warmup_steps=0, lr=1e-2, min_lr=1e-3, eval_interval=2, eval_batches=2,
                progress=False, num_samples=0, device="cpu")
    return TrainConfig(**{**base, **kw})


def tiny_model(**overrides) -> TransformerLM:
    torch.manual_seed(0)
    return TransformerLM(ModelConfig.from_preset("debug", **{"vocab_size": 32, "max_seq_len": 16, **overrides}))


def random_rows(n=16, T=8, V=32, seed=0, ignore=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, V, (n, T), generator=g)
    y = torch.randint(0, V, (n, T), generator=g)
    if ignore:  # uneven numbers of targets per row: normalising per micro-batch would be wrong
        mask = torch.rand(n, T, generator=g) < torch.linspace(0.0, 0.9, n)[:, None]
        y[mask] = -100
    return Rows(x, y)


def one_step(batch_size, grad_accum, data):
    model = tiny_model()
    grads = {}

    def grab(trainer, info):
        step = trainer.optimizer.step

        def wrapped(*a, **k):
            grads.update({n: p.grad.clone() for n, p in trainer.model.named_parameters()})
            return step(*a, **k)
        trainer.optimizer.step = wrapped

    trainer = Trainer(model, config(max_steps=1, batch_size=batch_size, grad_accum=grad_accum, lr=1e-3), data)
    trainer.add_callback("on_train_start", grab)
    summary = trainer.fit()
    return grads, dict(model.named_parameters()), summary


def test_accumulation_equals_one_big_batch():
    data = random_rows()
    g1, p1, s1 = one_step(batch_size=12, grad_accum=1, data=data)
    g3, p3, s3 = one_step(batch_size=4, grad_accum=3, data=data)
    assert s1["final_train_loss"] == pytest.approx(s3["final_train_loss"], rel=1e-6)
    for n in g1:
        torch.testing.assert_close(g3[n], g1[n], atol=1e-6, rtol=0)
        torch.testing.assert_close(p3[n], p1[n], atol=1e-6, rtol=0)


def test_early_stopping_on_worsening_val_loss():
    ones, twos = torch.ones(8, 8, dtype=torch.long), torch.full((8, 8), 2)
    train, val = Rows(ones, ones), Rows(twos, twos)  # learning "1 follows 1" makes "2 follows 2" worse
    trainer = Trainer(tiny_model(), config(max_steps=50, eval_interval=1, patience=2), train, val)
    evals = []
    trainer.add_callback("on_eval", lambda t, info: evals.append(info))
    summary = trainer.fit()
    best = summary["best_step"]
    assert summary["stopped_early"] and summary["steps"] == best + 2 < 10  # patience 2: two evals past the best
    assert [e["is_best"] for e in evals][best - 1:] == [True, False, False]
    assert summary["best_val_loss"] == evals[best - 1]["val_loss"] < evals[-1]["val_loss"] == summary["final_val_loss"]
    assert {"val_ppl", "val_acc"} <= set(evals[0])


class NaNAfter(nn.Module):
    """Wraps a model and returns NaN logits from training call ``k + 1`` on."""

    def __init__(self, inner: nn.Module, k: int) -> None:
        super().__init__()
        self.inner, self.k, self.calls, self.config = inner, k, 0, inner.config

    def forward(self, input_ids):
        self.calls += self.training
        out = self.inner(input_ids)
        return out * float("nan") if self.training and self.calls > self.k else out


def test_nan_loss_stops_with_clear_error_and_keeps_checkpoint(tmp_path):
    model = NaNAfter(tiny_model(), k=5)
    trainer = Trainer(model, config(max_steps=10, out_dir=str(tmp_path)), random_rows(), random_rows(seed=1))
    with pytest.raises(TrainingError, match=r"step 6.*loss is nan.*ckpt-000004"):
        trainer.fit()
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the bad step changed nothing
    last = latest_checkpoint(tmp_path)
    assert last.name == "ckpt-000004"
    fresh = NaNAfter(tiny_model(), k=5)
    load_model_weights(last, fresh, read_checkpoint(last))  # intact and loadable


def test_any_module_mapping_ids_to_logits_trains():
    class TinyLSTM(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.rnn, self.head = nn.Embedding(32, 16), nn.LSTM(16, 16, batch_first=True), nn.Linear(16, 32)

        def forward(self, input_ids):
            return self.head(self.rnn(self.emb(input_ids))[0])

    torch.manual_seed(0)
    ids = torch.arange(400) % 7  # a periodic sequence an LSTM learns quickly
    data = TokenDataset(ids, 8)
    summary = Trainer(TinyLSTM(), config(max_steps=30, eval_interval=30), data, data).fit()
    assert summary["final_val_loss"] < 2.0  # from ln(32) ≈ 3.47 at init
    assert summary["steps"] == 30


class Recorder:
    """A fine-tuning strategy that freezes all but the head, then unfreezes everything at step 2."""

    def __init__(self):
        self.calls = []

    def setup(self, model, trainer):
        self.model, self.trainer = model, trainer
        self.calls.append(("setup", trainer.optimizer is None))
        for n, p in model.named_parameters():
            p.requires_grad_(n.startswith("lm_head"))

    def on_step(self, step):
        self.calls.append(("step", step))
        if step < 2:
            assert self.model.blocks[0].mlp.down_proj.weight.grad is None  # frozen parameters keep grad None
        if step == 2:
            head = self.model.lm_head.weight
            self.head_state = self.trainer.optimizer.state[head]["exp_avg"].clone()
            for p in self.model.parameters():
                p.requires_grad_(True)
            self.trainer.rebuild_optimizer()

    def on_epoch(self, epoch):
        self.calls.append(("epoch", epoch))

    def schedule(self, step, max_steps):
        return 0.5

    def param_groups(self, model, base_lr, weight_decay):
        return None  # the default groups


def test_strategy_hooks_contract():
    ids = torch.arange(200) % 5
    data = TokenDataset(ids, 8)  # 200 tokens; each step sees 4 x 8 = 32 -> epochs end after steps 7 and 13
    strategy = Recorder()
    lrs = []
    trainer = Trainer(tiny_model(), config(max_steps=20, max_epochs=2, eval_interval=100), data,
                      strategies=[strategy])
    trainer.add_callback("on_step_end", lambda t, info: lrs.append(info["lr"]))
    summary = trainer.fit()
    assert summary["steps"] == 13  # max_epochs
    assert strategy.calls[0] == ("setup", True)
    steps = [c[1] for c in strategy.calls if c[0] == "step"]
    assert steps == list(range(13))
    assert [c for c in strategy.calls if c[0] == "epoch"] == [("epoch", 1), ("epoch", 2)]
    assert strategy.calls.index(("epoch", 1)) > strategy.calls.index(("step", 6))
    assert lrs == [pytest.approx(0.5e-2)] * 13  # the strategy's schedule replaced the cosine
    opt = trainer.optimizer
    assert len(opt.param_groups) > 1 and sum(len(g["params"]) for g in opt.param_groups) == len(
        list(trainer.model.parameters()))
    head = trainer.model.lm_head.weight
    assert int(opt.state[head]["step"]) == 13  # the head kept its AdamW state through the rebuild
    assert int(opt.state[trainer.model.tok_embeddings.weight]["step"]) == 11  # joined at step 2, fresh


def test_strategy_param_groups_override():
    class Half:
        def setup(self, model, trainer):
            pass

        def on_step(self, step):
            pass

        def param_groups(self, model, base_lr, weight_decay):
            return [{"params": list(model.parameters()), "lr_mult": 0.5, "weight_decay": 0.0}]

    trainer = Trainer(tiny_model(), config(max_steps=1, schedule="constant"), random_rows(), strategies=[Half()])
    trainer.fit()
    (g,) = trainer.optimizer.param_groups
    assert g["lr"] == pytest.approx(0.5e-2) and g["lr_mult"] == 0.5


def test_bf16_autocast_on_cpu():
    summary = Trainer(tiny_model(), config(max_steps=2, dtype="bfloat16"), random_rows(), random_rows()).fit()
    assert torch.isfinite(torch.tensor(summary["final_train_loss"])) and summary["final_val_loss"] > 0


def test_compile_failure_falls_back(monkeypatch):
    class Broken(nn.Module):
        def forward(self, input_ids):
            raise RuntimeError("backend exploded")

    monkeypatch.setattr(torch, "compile", lambda m, **k: Broken())
    with pytest.warns(UserWarning, match="torch.compile failed"):
        summary = Trainer(tiny_model(), config(max_steps=2, compile=True), random_rows()).fit()
    assert summary["steps"] == 2


def test_callbacks_metrics_and_samples(tmp_path):
    from llmcore.tokenizer import CharTokenizer

    tok = CharTokenizer.from_text("abcdefgh \n")
    ids = torch.tensor(tok.encode("abc defgh\n" * 40))
    model = tiny_model(vocab_size=tok.vocab_size)
    cfg = config(max_steps=4, out_dir=str(tmp_path), log_interval=2, num_samples=2, sample_tokens=20, sample_prompt="a")
    seen = []
    summary = Trainer(model, cfg, TokenDataset(ids, 8), TokenDataset(ids, 8), tokenizer=tok,
                      callbacks=[type("CB", (), {"on_step_end": lambda self, t, i: seen.append(i["step"])})()]).fit()
    assert seen == [1, 2, 3, 4]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "train_loss" in r] == [2, 4]
    assert [r["step"] for r in records if "val_loss" in r] == [2, 4]
    assert {"lr", "tokens_per_s", "grad_norm"} <= set(records[0])
    assert len(summary["samples"]) == 2 and all(s.startswith("a") for s in summary["samples"])
    assert (tmp_path / "samples.txt").read_text().count("--- sample") == 2
    assert TransformerLM.from_pretrained(tmp_path).config == model.config  # the run dir is a model dir
    from llmcore.tokenizer import load_tokenizer
    assert load_tokenizer(tmp_path / "tokenizer").vocab_size == tok.vocab_size
    with pytest.raises(ConfigError, match="Unknown callback event"):
        Trainer(model, cfg, TokenDataset(ids, 8)).add_callback("on_batch", print)


def test_train_config_validation():
    with pytest.raises(ConfigError, match="TrainConfig.batch_size=0"):
        TrainConfig(batch_size=0)
    with pytest.raises(ConfigError, match="min_lr"):
        TrainConfig(lr=1e-3, min_lr=1e-2)
    with pytest.raises(ConfigError, match="dtype"):
        TrainConfig(dtype="float16")
    with pytest.raises(ConfigError, match="schedule"):
        TrainConfig(schedule="triangle")
    with pytest.raises(ConfigError, match=r"Unknown TrainConfig keys \['lr_max'\].*valid keys"):
        TrainConfig.from_dict({"lr_max": 1.0})
    cfg = TrainConfig(max_steps=7, betas=[0.9, 0.95])
    assert cfg.betas == (0.9, 0.95)
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


# ---------------------------------------------------------------------------------------------- CLI
TINY = ["--set", "n_layers=1", "--set", "d_model=32", "--set", "n_heads=2", "--set", "max_seq_len=16",
        "--set", "num_samples=1", "--set", "sample_tokens=5", "--batch-size", "4", "--no-progress"]


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("To be, or not to be, that is the question.\n" * 80, encoding="utf-8")
    return path


def cli(*argv):
    from llmcore.cli import main

    return main([str(a) for a in argv])


def test_cli_train_resume_and_eval(tmp_path, text_file, capsys):
    out = tmp_path / "run"
    assert cli("train", "--data", text_file, "--out", out, "--max-steps", 2, "--eval-interval", 2, *TINY) == 0
    assert "trained 2 steps" in capsys.readouterr().out
    assert cli("train", "--data", text_file, "--out", out, "--max-steps", 4, "--eval-interval", 2, "--resume",
               *TINY) == 0
    assert [json.loads(r)["step"] for r in (out / "metrics.jsonl").read_text().splitlines()
            if "val_loss" in r] == [2, 4]
    assert (out / "samples.txt").is_file() and (out / "data" / "train-00000.bin").is_file()
    capsys.readouterr()
    assert cli("eval", "--model", out, "--max-batches", 2) == 0
    assert "val split): loss" in capsys.readouterr().out
    assert cli("eval", "--model", out, "--data", text_file) == 0
    assert "perplexity" in capsys.readouterr().out


def test_cli_errors_are_one_line_exit_2(tmp_path, text_file, capsys):
    out = tmp_path / "run"
    assert cli("train", "--data", text_file, "--out", out, "--set", "bogus=1", *TINY) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Unknown --set key 'bogus'" in err and "dropout" in err and "warmup_steps" in err
    assert cli("train", "--data", text_file, "--out", out, "--resume", *TINY) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "No checkpoint to resume" in err
    assert cli("train", "--data", text_file, "--out", out, "--max-steps", 2, "--eval-interval", 2, *TINY) == 0
    capsys.readouterr()
    assert cli("train", "--data", text_file, "--out", out, "--max-steps", 4, "--resume", *TINY,
               "--set", "d_model=64") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "d_model: 32 in checkpoint vs 64 now" in err
    assert cli("eval", "--model", tmp_path / "nowhere") == 2


def test_samples_start_from_bos_when_the_prompt_is_not_in_the_vocabulary():
    """The default sample prompt is "\\n"; a char vocabulary of a text with no newline lacks it. Sampling then
    starts from the BOS token instead of failing at the end of a finished run."""
    from llmcore.tokenizer import CharTokenizer
    from llmcore.training.callbacks import SampleGenerator

    tok = CharTokenizer.from_text("to be or not to be")
    model = TransformerLM(ModelConfig.from_preset("debug", vocab_size=tok.vocab_size, max_seq_len=16))
    samples = SampleGenerator(tok, num_samples=1, prompt="\n", max_new_tokens=5).sample(model, torch.device("cpu"))
    assert len(samples) == 1 and isinstance(samples[0], str)  # before the fix: TokenizerError on '\n'
