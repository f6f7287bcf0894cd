"""llmcore: a readable, complete Transformer language-model library.

Tokenizers, Transformer modules, pretraining, fine-tuning and generation as small parts that import on
their own; a thin Trainer wires them together. Importing this package has no side effects and loads no
torch: the names below are imported on first use (``llmcore.lazy``), so ``llmcore --help`` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import errors
from .errors import *  # noqa: F403 - every llmcore exception is public at the top level (errors.__all__)
from .lazy import lazy_exports

if TYPE_CHECKING:  # the public names, imported on first use
    from .config import ModelConfig
    from .generation import GenerationConfig
    from .models import TransformerLM
    from .models.text import generate_text
    from .tokenizer import load_tokenizer
    from .training import TrainConfig, Trainer

__version__ = "0.1.0"

__all__ = [
    "ModelConfig",
    "TransformerLM",
    "GenerationConfig",
    "generate_text",
    "load_tokenizer",
    "Trainer",
    "TrainConfig",
    *errors.__all__,
    "__version__",
]

__getattr__, __dir__ = lazy_exports(__name__, __file__)
