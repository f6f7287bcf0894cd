"""``llmcore train --resume`` continues on the run's own prepared data, whatever the data flags say.

Two failures this guards against: ``--resume`` with the data flags left out re-prepared OUT/data from the
defaults (the bundled Shakespeare) and replaced the run's data; and a run whose source file merely got a new
mtime (a reinstalled package, a touched file) could not be resumed.
"""

from __future__ import annotations

import logging
import os

from llmcore.training.run import RunConfig, train

TINY = {"d_model": 16, "n_layers": 1, "n_heads": 2, "max_seq_len": 16}
STEPS = {"max_steps": 2, "batch_size": 2, "eval_interval": 2, "eval_batches": 1, "progress": False,
         "num_samples": 0, "device": "cpu", "schedule": "constant", "warmup_steps": 0}


def _run(tmp_path, name, **kw):
    return RunConfig(preset="debug", model=TINY, out_dir=str(tmp_path / name), **kw)


def test_resume_keeps_the_run_data_and_equals_an_uninterrupted_run(tmp_path, caplog):
    text = tmp_path / "a.txt"
    text.write_text("to be or not to be, that is the question. " * 40, encoding="utf-8")
    full = train(_run(tmp_path, "full", data=[str(text)], train={**STEPS, "max_steps": 4}))

    out = tmp_path / "run"
    train(_run(tmp_path, "run", data=[str(text)], train=STEPS))
    before = {p.name: p.read_bytes() for p in (out / "data").glob("*.*")}
    os.utime(text, (1, 1))  # a new mtime: the fingerprint differs, the text does not
    # the documented mistake: --resume with the data flags left out (the bundled Shakespeare is the default)
    with caplog.at_level(logging.WARNING, logger="llmcore"):
        resumed = train(_run(tmp_path, "run", train={**STEPS, "max_steps": 4}, resume=True))
    assert "Resuming on the run's own prepared data" in caplog.text and "shakespeare" in caplog.text
    assert {p.name: p.read_bytes() for p in (out / "data").glob("*.*")} == before  # untouched
    assert resumed["steps"] == 4
    assert resumed["final_train_loss"] == full["final_train_loss"]  # the same run, on the same data
    assert resumed["final_val_loss"] == full["final_val_loss"]
