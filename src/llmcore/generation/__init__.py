"""Text generation: greedy, sampling (temperature / top-k / top-p / min-p), beam search and streaming.

``generate(model, input_ids, **options)`` is the entry point; ``stream`` yields tokens or text as they are
produced and ``beam_search`` is what ``generate`` calls when ``num_beams > 1``. Options live in
:class:`GenerationConfig`; the logits processors are small pure functions in :mod:`.processors`. The model
protocol (what a model needs to be decodable, including encoder-decoders) is described in :mod:`.decode`.
This package knows nothing about tokenization except through an optional ``tokenizer`` argument.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

if TYPE_CHECKING:  # the public names, imported on first use (llmcore.lazy): importing the package loads no torch
    from .beam import beam_search
    from .config import GenerationConfig
    from .decode import TextDeltas, generate, stream
    from .processors import (
        add_logit_bias,
        apply_processors,
        apply_temperature,
        build_processors,
        min_p_filter,
        no_repeat_ngram,
        openai_penalties,
        repetition_penalty,
        sample_next,
        suppress_eos,
        top_k_filter,
        top_p_filter,
    )

__all__ = [
    "GenerationConfig",
    "generate",
    "stream",
    "beam_search",
    "TextDeltas",
    "build_processors",
    "apply_processors",
    "sample_next",
    "repetition_penalty",
    "no_repeat_ngram",
    "suppress_eos",
    "openai_penalties",
    "add_logit_bias",
    "apply_temperature",
    "top_k_filter",
    "top_p_filter",
    "min_p_filter",
]

__getattr__, __dir__ = lazy_exports(__name__, __file__)
