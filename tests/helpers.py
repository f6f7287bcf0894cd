"""Small helpers shared by several test files (importable as ``helpers``: pytest puts tests/ on sys.path
for the rootdir conftest.py)."""

from __future__ import annotations

from typing import Any


class Crash(Exception):
    """Stands in for the process being killed."""


def run(trainer: Any, resume: bool = False, crash_at: int | None = None) -> dict[int, float]:
    """``trainer.fit(resume)``, "killed" right after step ``crash_at``; returns {step: train_loss}."""
    losses: dict[int, float] = {}

    def record(t: Any, info: dict[str, Any]) -> None:
        losses[info["step"]] = info["train_loss"]
        if info["step"] == crash_at:
            raise Crash

    trainer.add_callback("on_step_end", record)
    try:
        trainer.fit(resume=resume)
    except Crash:
        pass
    return losses


def one_line_error(capsys: Any, argv: list[str], command: str, prefix: str = "error: ") -> str:
    """Run ``llmcore ARGV`` in-process; assert exit status 2 and exactly one stderr line, no traceback, that
    starts ``llmcore COMMAND: PREFIX``. Returns the line."""
    from llmcore.cli import main

    try:
        code = main(argv)
    except SystemExit as e:  # argparse exits; the commands' own errors return 2
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"llmcore {command}: {prefix}"), lines[0]
    return lines[0]
