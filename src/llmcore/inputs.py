"""Input checks shared by every model: shape, context length and vocabulary range of token ids.

They turn what would be a deep torch IndexError (or a silent wrong embedding on some devices) into a
:class:`DataError` naming the value, the limit and the fix.
"""

from __future__ import annotations

import torch

from .config import ModelConfig
from .errors import DataError


def check_token_ids(ids: torch.Tensor, config: ModelConfig, past: int = 0, what: str = "input_ids",
                    check_length: bool = True, check_vocab: bool = True) -> None:
    """Raise DataError unless ``ids`` is (B, T), ``past + T <= config.max_seq_len`` and ids are in the vocabulary.

    ``check_vocab=False`` skips the range check, which reads the ids on the host (a device sync and a
    ``torch.compile`` graph break): model ``forward`` methods pass it and check shapes only; ids are
    range-checked once where they enter (datasets, generation prompts, the CLI).
    """
    if ids.dim() != 2:
        raise DataError(f"{what} must be 2-D (batch, seq_len); got shape {tuple(ids.shape)}. "
                        "Use ids[None] for a single sequence.")
    n = past + ids.shape[1]
    if check_length and n > config.max_seq_len:
        raise DataError(f"{what} length {n} exceeds max_seq_len={config.max_seq_len}; truncate the input "
                        "(keep the last max_seq_len tokens) or use a model with a longer context.")
    if check_vocab and ids.numel():
        lo, hi = (int(v) for v in torch.aminmax(ids))
        if lo < 0 or hi >= config.vocab_size:
            bad = hi if hi >= config.vocab_size else lo
            raise DataError(f"Token id {bad} is outside the vocabulary [0, {config.vocab_size}) in {what}; "
                            "the tokenizer and the model disagree on vocab_size.")


# Labels equal to this take no part in the loss (padding, prompt tokens): PyTorch's cross-entropy default,
# and Hugging Face's. Defined once; every dataset and loss uses this name.
IGNORE_INDEX = -100
