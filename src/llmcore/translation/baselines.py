"""Non-neural translation baselines that a learned translator must beat: a translation memory, and memory +
dictionary.

* :class:`TranslationMemory` — return the Chinese of the nearest training source, by cosine similarity of
  TF-IDF vectors over lower-cased word unigrams and bigrams. This is what a non-neural system does with a
  parallel corpus, and it is strong wherever the training data holds near-duplicates of a test sentence
  (everyday sentences often do: "How are you?" / "How are you doing?").
* :class:`MemoryDictionaryBaseline` — the memory's answer when its cosine clears a threshold, else the
  word-by-word dictionary (:class:`~llmcore.translation.metrics.DictionaryBaseline`).
  :meth:`MemoryDictionaryBaseline.fit_threshold` picks the threshold on a validation split, never on test.

Both are deterministic and need only torch (sparse matrix products), so they run wherever llmcore runs.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..errors import DataError
from .metrics import TOKEN_RE, DictionaryBaseline


def _terms(text: str) -> list[str]:
    """Lower-cased word unigrams and bigrams (punctuation and numbers count as words)."""
    words = [w.lower() for w in TOKEN_RE.findall(text)]
    return words + [f"{a} {b}" for a, b in zip(words, words[1:])]


class TranslationMemory:
    """Nearest training source by TF-IDF cosine over word uni+bigrams; its target is the translation.

    Args:
        pairs: (source, target) training pairs. Exact duplicate sources keep the first target (and key).
        keys: optional group key per pair (e.g. :attr:`~llmcore.translation.data.Pair.split_key`), so that
            :meth:`search` can skip a query's own group (``exclude_keys``).

    ``idf(t) = ln((1 + N) / (1 + df(t))) + 1`` (the smoothed form scikit-learn uses); vectors are
    L2-normalised, so the dot product is the cosine. Ties go to the earlier training pair.
    """

    def __init__(self, pairs: Sequence[tuple[str, str]], keys: Sequence[str] | None = None) -> None:
        if not pairs:
            raise DataError("TranslationMemory needs at least one (source, target) pair.")
        if keys is not None and len(keys) != len(pairs):
            raise DataError(f"TranslationMemory got {len(keys)} keys for {len(pairs)} pairs; give one per pair.")
        first: dict[str, tuple[str, str | None]] = {}
        for j, (src, tgt) in enumerate(pairs):
            first.setdefault(src, (tgt, None if keys is None else keys[j]))
        self.sources, self.targets = list(first), [t for t, _ in first.values()]
        self.groups: dict[str, list[int]] = {}  # key -> entries, for search(exclude_keys=)
        for i, (_, key) in enumerate(first.values()):
            if key is not None:
                self.groups.setdefault(key, []).append(i)
        terms = [_terms(s) for s in self.sources]
        n = len(terms)
        self.vocab = {t: i for i, t in enumerate(sorted({t for doc in terms for t in doc}))}
        # Vectorised TF-IDF (a Python loop per term took ~10 s on the shipped corpus): one (row, column)
        # entry per term occurrence, merged into counts by np.unique.
        rows = np.repeat(np.arange(n, dtype=np.int64), [len(doc) for doc in terms])
        cols = np.fromiter((self.vocab[t] for doc in terms for t in doc), dtype=np.int64, count=len(rows))
        cells, tf = np.unique(rows * len(self.vocab) + cols, return_counts=True)
        rows, cols = cells // len(self.vocab), cells % len(self.vocab)
        df = np.bincount(cols, minlength=len(self.vocab))
        self.idf = np.log((1 + n) / (1 + df)) + 1  # (V,) float64, indexed by self.vocab
        weights = tf * self.idf[cols]
        norms = np.sqrt(np.bincount(rows, weights=weights * weights, minlength=n))
        values = weights / np.where(norms > 0, norms, 1.0)[rows]
        self.matrix = torch.sparse_coo_tensor(torch.from_numpy(np.stack([rows, cols])),
                                              torch.from_numpy(values.astype(np.float32)),
                                              (n, len(self.vocab)), check_invariants=False).coalesce()  # (N, V)

    def _query(self, texts: Sequence[str]) -> torch.Tensor:
        """Dense (V, M) TF-IDF columns of ``texts``; terms never seen in training are dropped."""
        q = torch.zeros(len(self.vocab), len(texts))
        for j, text in enumerate(texts):
            weights = {self.vocab[t]: c * self.idf[self.vocab[t]] for t, c in Counter(_terms(text)).items()
                       if t in self.vocab}
            norm = math.sqrt(sum(w * w for w in weights.values())) or 1.0
            for col, w in weights.items():
                q[col, j] = w / norm
        return q

    def search(self, texts: Sequence[str], chunk: int = 64,
               exclude_keys: Sequence[str] | None = None) -> tuple[list[int], list[float]]:
        """Index of the nearest training pair and its cosine in [0, 1] for each text (cosine 0: no shared term).

        ``exclude_keys``: per text, a key (of the constructor's ``keys``) whose entries are never its match,
        e.g. a training sentence's own group when building training inputs that must not contain the answer.
        """
        if exclude_keys is not None and len(exclude_keys) != len(texts):
            raise DataError(f"search got {len(exclude_keys)} exclude_keys for {len(texts)} texts.")
        best, score = [], []
        for i in range(0, len(texts), chunk):
            sims = torch.sparse.mm(self.matrix, self._query(texts[i:i + chunk]))  # (N, chunk)
            for j, key in enumerate(exclude_keys[i:i + chunk] if exclude_keys is not None else ()):
                sims[self.groups.get(key, []), j] = -1.0  # below any cosine: chosen only if nothing else is left
            values, index = sims.max(dim=0)  # max returns the first maximum: ties go to the earlier pair
            best += index.tolist()
            score += values.clamp(0, 1).tolist()
        return best, score

    def __call__(self, texts: Sequence[str]) -> list[str]:
        return [self.targets[i] for i in self.search(texts)[0]]


class MemoryDictionaryBaseline:
    """The memory's translation when its cosine is at least ``threshold``, else the dictionary's."""

    def __init__(self, memory: TranslationMemory, dictionary: DictionaryBaseline | None = None,
                 threshold: float = 0.5) -> None:
        self.memory, self.dictionary, self.threshold = memory, dictionary or DictionaryBaseline(), threshold

    def __call__(self, texts: Sequence[str]) -> list[str]:
        index, score = self.memory.search(texts)
        words = self.dictionary(texts)
        return [self.memory.targets[i] if s >= self.threshold else w for i, s, w in zip(index, score, words)]

    def fit_threshold(self, sources: Sequence[str], references: Sequence[str],
                      metric: Callable[[list[str], list[str]], float],
                      grid: Sequence[float] = tuple(i / 20 for i in range(21))) -> float:
        """Set (and return) the threshold in ``grid`` that maximises ``metric(hyps, refs)`` on these pairs
        (pass a validation split); the lowest threshold wins a tie."""
        index, score = self.memory.search(sources)
        words = self.dictionary(sources)
        best = None
        for th in grid:
            hyps = [self.memory.targets[i] if s >= th else w for i, s, w in zip(index, score, words)]
            value = metric(hyps, list(references))
            if best is None or value > best[0]:
                best = (value, th)
        self.threshold = best[1]
        return self.threshold


def baseline_systems(data_dir: str | None = None,
                     scored_on: str | None = None) -> dict[str, Callable[[Sequence[str]], list[str]]]:
    """The four English→Chinese baselines on the shipped corpus, by name: copy the source, CC-CEDICT word
    lookup, the translation memory of the training split, and memory + dictionary with its threshold chosen
    by chrF on the validation split (see the module docstring).

    ``scored_on``: the shipped split the systems will be scored on. For "train" or "validation" (what the
    memory and its threshold were fitted on) the two memory systems' names say so, ``[fitted on the
    validation split: not held out]``, so their figures are not read as held-out ones.
    """
    from .data import load_dictionary, load_parallel
    from .metrics import chrf, copy_source

    memory = TranslationMemory([(p.en, p.zh) for p in load_parallel("train", data_dir=data_dir)])
    dictionary = DictionaryBaseline(load_dictionary(data_dir))
    combined = MemoryDictionaryBaseline(memory, dictionary)
    val = load_parallel("validation", data_dir=data_dir)
    combined.fit_threshold([p.en for p in val], [p.zh for p in val], chrf)
    mark = f" [fitted on the {scored_on} split: not held out]" if scored_on in ("train", "validation") else ""
    return {"copy source": copy_source, "CC-CEDICT word lookup": dictionary, "translation memory" + mark: memory,
            f"memory + dictionary (cosine >= {combined.threshold:.2f})" + mark: combined}
