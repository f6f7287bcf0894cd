"""Translation quality: corpus BLEU and chrF (via sacrebleu), and two trivial baselines to read them against.

* :func:`bleu` — corpus BLEU (Papineni et al., 2002) with sacrebleu's ``zh`` tokenizer by default, which
  splits Chinese into characters (Chinese has no spaces, so word BLEU would need a segmenter).
* :func:`chrf` — character n-gram F-score (Popović, 2015), sacrebleu defaults (n=6, β=2); less sensitive to
  segmentation than BLEU and more informative at low quality.
* :class:`DictionaryBaseline` — word-by-word lookup in an English→Chinese dictionary derived from CC-CEDICT
  (built offline by ``scripts/build_parallel_data.py``), unknown words dropped, punctuation mapped to
  full-width. A floor any learned system must beat.
* :func:`copy_source` — the source unchanged (scores near zero for en→zh; a sanity check of the metric).

sacrebleu is an optional dependency (``pip install llmcore[eval]``); it is imported only when a metric is
computed, with an error saying how to install it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from ..errors import DataError

TOKEN_RE = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?|[0-9]+|\S")
PUNCT = {",": "，", ".": "。", "?": "？", "!": "！", ":": "：", ";": "；", "(": "（", ")": "）", '"': "",
         "“": "“", "”": "”", "‘": "‘", "’": "’"}
# A few irregular English forms, mapped to the form CC-CEDICT glosses use.
IRREGULAR = {"is": "be", "are": "be", "was": "be", "were": "be", "am": "be", "been": "be", "said": "say",
             "went": "go", "came": "come", "saw": "see", "took": "take", "made": "make", "gave": "give",
             "had": "have", "has": "have", "did": "do", "does": "do", "men": "man", "children": "child",
             "spoke": "speak", "knew": "know", "told": "tell", "brought": "bring", "heard": "hear"}


def _sacrebleu() -> Any:
    try:
        import sacrebleu
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("BLEU and chrF need sacrebleu, an optional dependency: pip install 'llmcore[eval]' "
                          "(or pip install sacrebleu).") from e
    return sacrebleu


def _check(hyps: Sequence[str], refs: Sequence[str]) -> None:
    if isinstance(hyps, str) or isinstance(refs, str):
        raise DataError("bleu()/chrf() take lists of sentences (hypotheses, references), not single strings.")
    if len(hyps) != len(refs) or not refs:
        raise DataError(f"Got {len(hyps)} hypotheses for {len(refs)} references; they must pair up one to one "
                        "and be non-empty.")


def bleu(hyps: Sequence[str], refs: Sequence[str], tokenize: str = "zh") -> float:
    """Corpus BLEU in [0, 100] of ``hyps`` against one reference each (``tokenize="13a"`` for English)."""
    _check(hyps, refs)
    return float(_sacrebleu().corpus_bleu(list(hyps), [list(refs)], tokenize=tokenize).score)


def chrf(hyps: Sequence[str], refs: Sequence[str]) -> float:
    """Corpus chrF in [0, 100] (character 6-grams, β = 2; whitespace ignored)."""
    _check(hyps, refs)
    return float(_sacrebleu().corpus_chrf(list(hyps), [list(refs)]).score)


def evaluate_translations(hyps: Sequence[str], refs: Sequence[str], tokenize: str = "zh") -> dict[str, float]:
    """``{"bleu": ..., "chrf": ...}`` for one system."""
    return {"bleu": bleu(hyps, refs, tokenize), "chrf": chrf(hyps, refs)}


def evaluate_by_source(hyps: Sequence[str], refs: Sequence[str], sources: Sequence[str | None],
                       tokenize: str = "zh") -> dict[str, dict[str, float]]:
    """``{"all": {"bleu", "chrf"}, source: {...}, ...}``: one system overall and per source of its pairs.

    ``sources`` labels each pair (``Pair.source``: bible / hsk / tatoeba; None for unlabelled pairs, which count
    in "all" only). Per-source scores appear only when there are two sources or more: with one they would
    repeat the overall figures.
    """
    labels = sorted({s for s in sources if s is not None})
    scores = {"all": evaluate_translations(hyps, refs, tokenize)}
    for label in labels if len(labels) > 1 else []:
        idx = [i for i, s in enumerate(sources) if s == label]
        scores[label] = evaluate_translations([hyps[i] for i in idx], [refs[i] for i in idx], tokenize)
    return scores


def copy_source(sources: Sequence[str]) -> list[str]:
    """The trivial baseline: output the source sentence unchanged."""
    return list(sources)


class DictionaryBaseline:
    """Word-by-word English→Chinese: each word's dictionary entry (or nothing), concatenated without spaces.

    A word not in the dictionary is tried without a plural / past / -ing ending before it is dropped.
    """

    def __init__(self, dictionary: dict[str, str] | None = None) -> None:
        if dictionary is None:
            from .data import load_dictionary

            dictionary = load_dictionary()
        self.dictionary = dictionary

    def lookup(self, word: str) -> str:
        w = word.lower()
        for cand in (w, IRREGULAR.get(w, ""), w[:-1] if w.endswith("s") else "", w[:-2] if w.endswith(("es", "ed")) else "",
                     w[:-1] if w.endswith("ed") else "", w[:-3] if w.endswith("ing") else "",
                     w[:-2] if w.endswith("'s") else ""):
            if cand and cand in self.dictionary:
                return self.dictionary[cand]
        return ""

    def translate(self, text: str) -> str:
        out = []
        for tok in TOKEN_RE.findall(text):
            if tok[0].isalpha():
                out.append(self.lookup(tok))
            else:
                out.append(PUNCT.get(tok, tok))
        return "".join(out)

    def __call__(self, texts: Sequence[str]) -> list[str]:
        return [self.translate(t) for t in texts]
