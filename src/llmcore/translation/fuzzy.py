"""Memory-augmented sources ("neural fuzzy repair", Bulte & Tezcan 2019): the encoder reads the sentence to
translate *and* the translation of its nearest training sentence, so the model learns when to copy the
memory's answer, when to edit it, and when to ignore it.

The source string is ``"{src} {tag} {match}"``: ``match`` is the Chinese of the nearest training source by
:class:`~llmcore.translation.baselines.TranslationMemory` (TF-IDF cosine), and ``tag`` one of
:data:`FUZZY_TAGS`, the cosine's fifth (``<fm0>`` for [0, 0.2) … ``<fm4>`` for [0.8, 1]), so the model can
learn how far to trust the match. The tags must be single tokens of the tokenizer (``user_defined_symbols``).

In training, a sentence must not be its own match (the model would learn to copy blindly): the search skips
training pairs with the sentence's split key (:attr:`~llmcore.translation.data.Pair.split_key`: the same
normalised English for everyday sentences, the same chapter for Bible verses), which is exactly what the
validation and test splits see, since their keys are absent from training by construction.

A model trained this way records ``memory="shipped-train"`` in ``config.extra["translation"]``; its
:class:`~llmcore.translation.Translator` then rebuilds the memory from the shipped training split (a few
seconds) and augments every input the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

from .baselines import TranslationMemory

FUZZY_TAGS = tuple(f"<fm{i}>" for i in range(5))
SHIPPED_MEMORY = "shipped-train"  # the one memory a saved model can name: the shipped corpus's training split


def fuzzy_tag(score: float) -> str:
    """The tag of a cosine in [0, 1]: its fifth, ``<fm0>`` … ``<fm4>``."""
    return FUZZY_TAGS[min(max(int(score * len(FUZZY_TAGS)), 0), len(FUZZY_TAGS) - 1)]


def augment_sources(memory: TranslationMemory, texts: Sequence[str],
                    exclude_keys: Sequence[str] | None = None) -> list[str]:
    """``"{src} {tag} {match}"`` for each text (see the module docstring).

    Args:
        memory: the translation memory (built with ``keys`` when ``exclude_keys`` is given).
        texts: English sentences.
        exclude_keys: per text, a key whose memory entries must not be its match (training only).
    """
    index, score = memory.search(texts, exclude_keys=exclude_keys)
    return [f"{t} {fuzzy_tag(s)} {memory.targets[i]}" for t, i, s in zip(texts, index, score)]


def shipped_memory(data_dir: str | None = None) -> TranslationMemory:
    """The translation memory of the shipped training split, keyed by split key (what training excludes)."""
    from .data import load_parallel

    train = load_parallel("train", data_dir=data_dir)
    return TranslationMemory([(p.en, p.zh) for p in train], keys=[p.split_key for p in train])
