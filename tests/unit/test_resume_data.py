"""``llmcore train --resume`` with other data flags than the run's fails before it touches OUT/data."""

from __future__ import annotations

import pytest

from llmcore.errors import CheckpointError
from llmcore.training.run import RunConfig, train

TINY = {"d_model": 16, "n_layers": 1, "n_heads": 2, "max_seq_len": 16}
STEPS = {"max_steps": 2, "batch_size": 2, "eval_interval": 2, "eval_batches": 1, "progress": False,
         "num_samples": 0, "device": "cpu"}


def test_resume_with_other_data_fails_and_keeps_the_prepared_data(tmp_path):
    text = tmp_path / "a.txt"
    text.write_text("to be or not to be, that is the question. " * 40, encoding="utf-8")
    out = tmp_path / "run"
    train(RunConfig(data=[str(text)], preset="debug", model=TINY, train=STEPS, out_dir=str(out)))
    before = {p.name: p.read_bytes() for p in (out / "data").glob("*.*")}

    # the documented mistake: --resume with the data flags left out (the bundled Shakespeare is the default)
    with pytest.raises(CheckpointError, match="prepared from other data.*--data"):
        train(RunConfig(preset="debug", model=TINY, train={**STEPS, "max_steps": 4}, out_dir=str(out), resume=True))
    assert {p.name: p.read_bytes() for p in (out / "data").glob("*.*")} == before

    summary = train(RunConfig(data=[str(text)], preset="debug", model=TINY, train={**STEPS, "max_steps": 4},
                              out_dir=str(out), resume=True))
    assert summary["steps"] == 4
