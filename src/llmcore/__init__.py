"""llmcore: a readable, complete Transformer language-model library.

Tokenizers, Transformer modules, pretraining, fine-tuning and generation as small parts that import on
their own; a thin Trainer wires them together. Importing this package has no side effects.
"""

from .config import ModelConfig
from .errors import (
    CheckpointError,
    ConfigError,
    DataError,
    GenerationError,
    LLMCoreError,
    TokenizerError,
    TrainingError,
)
from .generation import GenerationConfig
from .models import TransformerLM
from .tokenizer import load_tokenizer
from .training import TrainConfig, Trainer

__version__ = "0.1.0"

__all__ = [
    "ModelConfig",
    "TransformerLM",
    "GenerationConfig",
    "load_tokenizer",
    "Trainer",
    "TrainConfig",
    "LLMCoreError",
    "ConfigError",
    "DataError",
    "TokenizerError",
    "CheckpointError",
    "GenerationError",
    "TrainingError",
    "__version__",
]
