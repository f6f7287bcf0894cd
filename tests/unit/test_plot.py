"""Plots: loss curves from metrics.jsonl, sweep overlays, attention grids (CJK included), CLI exit codes."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("matplotlib")

import torch  # noqa: E402

from llmcore import ModelConfig, TransformerLM  # noqa: E402
from llmcore.cli import main  # noqa: E402
from llmcore.errors import ConfigError, LLMCoreError  # noqa: E402
from llmcore.plot import (  # noqa: E402
    attention_weights,
    plot_attention,
    plot_metrics,
    plot_runs,
    read_metrics,
    token_labels,
)
from llmcore.tokenizer import CharTokenizer  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


def write_run(run_dir, steps=40, offset=0.0):
    run_dir.mkdir(parents=True)
    lines = []
    for s in range(1, steps + 1):
        lines.append({"step": s, "train_loss": 4.0 / (1 + 0.1 * s) + offset, "lr": 1e-3 * min(1, s / 10),
                      "tokens_per_s": 1000.0})
        if s % 10 == 0:
            lines.append({"step": s, "val_loss": 4.2 / (1 + 0.08 * s) + offset, "val_ppl": 10.0, "is_best": True})
    text = "".join(json.dumps(r) + "\n" for r in lines) + '{"step": 41, "train_lo'  # a line cut short by a kill
    (run_dir / "metrics.jsonl").write_text(text, encoding="utf-8")
    return run_dir


def test_plot_metrics_writes_png(tmp_path):
    run = write_run(tmp_path / "run")
    assert len(read_metrics(run)) == 44
    out = plot_metrics(run)
    assert out == run / "loss_curve.png"
    data = out.read_bytes()
    assert data.startswith(PNG) and len(data) > 20_000  # axes, labels, two curves: not a blank canvas
    assert plot_metrics(run, tmp_path / "sub" / "x.png").is_file()


def test_missing_or_empty_metrics_raise(tmp_path):
    with pytest.raises(LLMCoreError, match="metrics.jsonl"):
        plot_metrics(tmp_path)
    (tmp_path / "metrics.jsonl").write_text("", encoding="utf-8")
    with pytest.raises(LLMCoreError, match="no train_loss"):
        plot_metrics(tmp_path)


def test_plot_runs_overlays_a_sweep(tmp_path):
    runs = [write_run(tmp_path / f"run-lr={lr}", offset=o) for lr, o in (("0.001", 0.0), ("0.003", 0.3))]
    assert plot_runs(runs, tmp_path / "val.png").read_bytes().startswith(PNG)


def test_attention_grid(tmp_path):
    text = "to be or not 起初神创造天地"
    tok = CharTokenizer.from_text(text)
    model = TransformerLM(ModelConfig.from_preset("debug", vocab_size=tok.vocab_size))
    model.train()
    out = plot_attention(model, tok, text, tmp_path / "attn.png", layers=[1], heads=[0, 3])
    assert out.read_bytes().startswith(PNG) and out.stat().st_size > 10_000
    assert model.training  # mode left as found
    ids = tok.encode(text)
    weights = attention_weights(model, ids)  # one (H, T, T) map per layer, rows are distributions
    assert len(weights) == 2 and weights[0].shape == (4, len(ids), len(ids))
    torch.testing.assert_close(weights[1].sum(-1), torch.ones(4, len(ids)))
    small = CharTokenizer.from_text("ab \n")
    assert token_labels(small, small.encode("a b\n")) == ["a", "␣", "b", "↵"]
    with pytest.raises(ConfigError, match="layer"):
        plot_attention(model, tok, text, tmp_path / "bad.png", layers=[5])


def test_cli_plot(tmp_path, capsys):
    run = write_run(tmp_path / "run")
    assert main(["plot", str(run)]) == 0
    assert (run / "loss_curve.png").is_file()
    assert main(["plot", str(tmp_path), "--out", str(tmp_path / "sweep.png")]) == 0  # a directory of runs
    assert (tmp_path / "sweep.png").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["plot", str(empty)]) == 2
    assert main(["plot", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "llmcore plot: error:" in err and len(err.strip().splitlines()) == 2


def test_missing_cjk_font_warns_once(monkeypatch):
    import llmcore.plot as plot

    monkeypatch.setattr(plot, "cjk_font", lambda: None)
    monkeypatch.setattr(plot, "_warned_no_cjk", False)
    assert plot._font_family(["abc"]) == ["DejaVu Sans"]  # no CJK text: no font needed, no warning
    with pytest.warns(UserWarning, match="fonts-noto-cjk") as record:
        plot._font_family(["起初"])
        plot._font_family(["神"])
    assert len(record) == 1


def test_without_matplotlib_the_error_says_what_to_install(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    with pytest.raises(LLMCoreError, match=r"llmcore\[plot\]"):
        plot_metrics(write_run(tmp_path / "run"))
