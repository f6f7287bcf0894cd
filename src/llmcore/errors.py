"""Exceptions raised for user mistakes.

Every error a user can cause (a bad config value, a missing file, a checkpoint that does not match its
config) raises a subclass of :class:`LLMCoreError` whose message names the bad value, the limit and the
fix. Each subclass is also a ``ValueError`` so callers that already catch
``ValueError`` keep working. ``assert`` is kept for internal invariants only.
"""

from __future__ import annotations


class LLMCoreError(Exception):
    """Base class of every error llmcore raises on purpose. The CLI prints it as one line and exits 2."""


class ConfigError(LLMCoreError, ValueError):
    """An invalid configuration value (model, training, generation or fine-tuning config)."""


class DataError(LLMCoreError, ValueError):
    """Input data that cannot be used: missing, empty, not UTF-8, too short for the block size."""


class TokenizerError(LLMCoreError, ValueError):
    """A tokenizer that cannot be trained, loaded or applied as asked."""


class CheckpointError(LLMCoreError, ValueError):
    """A checkpoint or model directory that is missing, truncated or does not match its config."""


class GenerationError(LLMCoreError, ValueError):
    """A generation request that cannot be served (prompt too long, incompatible options)."""


class TrainingError(LLMCoreError, RuntimeError):
    """A training run that cannot continue (non-finite loss or gradients); the last checkpoint stays valid."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during :meth:`Trainer.fit`: still a ``KeyboardInterrupt``, carrying where the run stopped.

    ``step`` is the number of optimizer steps done; ``checkpoint_step`` the step of the newest checkpoint in
    ``out_dir`` (what a resumed run continues from; None if there is none yet). ``llmcore train`` turns it into
    "interrupted at step N; rerun with --resume to continue" and exit status 130.
    """

    def __init__(self, step: int, checkpoint_step: int | None = None, out_dir: str | None = None) -> None:
        super().__init__(f"interrupted at step {step}")
        self.step, self.checkpoint_step, self.out_dir = step, checkpoint_step, out_dir


__all__ = ["LLMCoreError", "ConfigError", "DataError", "TokenizerError", "CheckpointError", "GenerationError",
           "TrainingError", "TrainingInterrupted"]
