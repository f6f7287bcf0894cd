"""English→Chinese translation: the shipped parallel corpus, metrics and baselines, and ``llmcore translate``.

- :mod:`.data` — :func:`load_parallel` (train / validation / test pairs shipped with the package),
  :func:`load_cuv_text` (Chinese text for LM examples) and :class:`Seq2SeqPairs` (Trainer batches for an
  encoder-decoder). The shipped files are rebuilt offline from the raw sources by
  ``scripts/build_parallel_data.py``.
- :mod:`.metrics` — :func:`bleu` and :func:`chrf` (sacrebleu, optional), :class:`DictionaryBaseline` and
  :func:`copy_source`.
- :mod:`.baselines` — :class:`TranslationMemory` (nearest training source by TF-IDF cosine) and
  :class:`MemoryDictionaryBaseline` (memory above a threshold chosen on validation, else the dictionary).
- ``llmcore translate`` (in :mod:`llmcore.cli.translate`) runs it from the command line (encoder-decoder or decoder-only models).

The models live in :mod:`llmcore.models` (:class:`~llmcore.models.seq2seq.Seq2SeqTransformer`); decoding in
:mod:`llmcore.generation`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

if TYPE_CHECKING:  # the public names, imported on first use (llmcore.lazy): importing the package loads no torch
    from .baselines import MemoryDictionaryBaseline, TranslationMemory, baseline_systems
    from .data import (
        Pair,
        Seq2SeqPairs,
        load_attribution,
        load_cuv_text,
        load_dictionary,
        load_parallel,
        load_zh_text,
        split_of,
    )
    from .metrics import (
        DictionaryBaseline,
        bleu,
        chrf,
        copy_source,
        evaluate_by_source,
        evaluate_translations,
    )

__all__ = [
    "Pair", "Seq2SeqPairs", "load_parallel", "load_cuv_text", "load_zh_text", "load_dictionary", "load_attribution", "split_of",
    "bleu", "chrf", "evaluate_translations", "evaluate_by_source", "DictionaryBaseline", "copy_source",
    "TranslationMemory", "MemoryDictionaryBaseline", "baseline_systems",
]

__getattr__, __dir__ = lazy_exports(__name__, __file__)
