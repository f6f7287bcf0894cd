"""llmcore: a readable, complete Transformer language-model library.

Tokenizers, Transformer modules, pretraining, fine-tuning and generation as small parts that import on
their own; a thin Trainer wires them together. Importing this package has no side effects.
"""

from . import errors
from .config import ModelConfig
from .errors import *  # noqa: F403 - every llmcore exception is public at the top level (errors.__all__)
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
