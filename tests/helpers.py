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
