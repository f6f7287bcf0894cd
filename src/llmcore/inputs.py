"""Input checks shared by every model: shape, context length and vocabulary range of token ids, and shape,
dtype and context length of ``inputs_embeds`` (vectors fed in place of token ids).

They turn what would be a deep torch IndexError or matmul shape error (or a silent wrong embedding on some
devices) into a :class:`DataError` naming the value, the limit and the fix. Nothing here reads a tensor's
values except the vocabulary check, which callers can turn off (see :func:`check_token_ids`).
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


def check_inputs_embeds(embeds: object, d_model: int, dtype: torch.dtype, max_seq_len: int | None = None,
                        past: int = 0, what: str = "inputs_embeds") -> None:
    """Raise DataError unless ``embeds`` is a (B, T, d_model) tensor of ``dtype`` with ``past + T <= max_seq_len``.

    ``dtype`` is the model's embedding dtype: the vectors take the place of the embedding lookup, so they must
    be of the same kind (an fp32 prefix into a bf16 model would fail deep in the first matmul). Shapes and
    dtypes only, no values read: safe inside ``forward`` (no host sync, no ``torch.compile`` graph break).
    """
    expected = f"(batch, seq_len, {d_model})"
    if not isinstance(embeds, torch.Tensor):
        raise DataError(f"{what} must be a tensor {expected}, got {type(embeds).__name__}.")
    if embeds.dim() != 3 or embeds.shape[-1] != d_model:
        hint = ("use x[None] for a single sequence" if embeds.dim() == 2 and embeds.shape[-1] == d_model
                else f"project the features to d_model={d_model} first (e.g. nn.Linear(d_features, {d_model}))")
        raise DataError(f"{what} must have shape {expected} (d_model={d_model}); got {tuple(embeds.shape)}: {hint}.")
    if embeds.dtype != dtype:
        hint = ("token ids go in input_ids" if not embeds.is_floating_point()
                else f"cast it with .to({dtype}) (model.get_input_embeddings().weight.dtype)")
        raise DataError(f"{what} has dtype {embeds.dtype} but the model's embeddings are {dtype}; {hint}.")
    n = past + embeds.shape[1]
    if max_seq_len is not None and n > max_seq_len:
        parts = f" ({past} cached + {embeds.shape[1]} new)" if past else ""
        raise DataError(f"{what} length {n}{parts} exceeds max_seq_len={max_seq_len}; "
                        "shorten the prefix or the prompt, or use a model with a longer context.")


# Labels equal to this take no part in the loss (padding, prompt tokens): PyTorch's cross-entropy default,
# and Hugging Face's. Defined once; every dataset and loss uses this name.
IGNORE_INDEX = -100
