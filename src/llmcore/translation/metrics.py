"""Translation quality: corpus BLEU and chrF (via sacrebleu), and two trivial baselines to read them against.

* :func:`bleu` — corpus BLEU (Papineni et al., 2002) with sacrebleu's ``zh`` tokenizer by default, which
  splits Chinese into characters (Chinese has no spaces, so word BLEU would need a segmenter).
* :func:`chrf` — character n-gram F-score (Popović, 2015), sacrebleu defaults (n=6, β=2); less sensitive to
  segmentation than BLEU and more informative at low quality.
* :class:`DictionaryBaseline` — word-by-word lookup in an English→Chinese dictionary derived from CC-CEDICT,
  unknown words dropped, punctuation mapped to full-width. A floor any learned system must beat.
* :func:`copy_source` — the source unchanged (scores near zero for en→zh; a sanity check of the metric).

sacrebleu is an optional dependency (``pip install llmcore[eval]``); it is imported only when a metric is
computed, with an error saying how to install it.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
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
# Gloss prefixes of CC-CEDICT senses that are not translations of an English word.
SKIP_SENSES = ("surname ", "variant of", "old variant", "see ", "cl:", "used in", "abbr.", "japanese variant",
               "erhua variant", "(bound form)")


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


# ---------------------------------------------------------------------------------------------- building
def _glosses(english: str) -> list[tuple[int, str]]:
    """(sense index, single-word gloss) pairs of one CC-CEDICT definition, e.g. "to go; to leave" -> go, leave."""
    out = []
    for si, sense in enumerate(english.split(",")):
        if sense.strip().lower().startswith(SKIP_SENSES):
            continue
        for gloss in sense.split(";"):
            g = re.sub(r"\([^)]*\)|\[[^]]*\]", " ", gloss).strip().lower()
            g = re.sub(r"^(to|a|an|the) ", "", g).strip()
            if re.fullmatch(r"[a-z]+(?:'[a-z]+)?", g):
                out.append((si, g))
    return out


def build_dictionary(cedict_tsv: str | Path, train_pairs: Sequence[Any], min_count: int = 2) -> dict[str, str]:
    """English word → Chinese word from CC-CEDICT, choosing among candidates with the parallel training data.

    Every CC-CEDICT entry whose definition contains the English word as a whole gloss is a candidate (CC-CEDICT
    is Chinese→English, so one English word has many). The candidate chosen is the one that co-occurs best with
    the word in the training pairs (Dice coefficient over sentence pairs: 2·n(w, c) / (n(w) + n(c))), then the
    earlier sense, then the shorter word. Only words seen ``min_count`` times in the training English are kept.
    Uses training pairs only, so test sentences never influence the baseline.
    """
    en_sents = [set(w.lower() for w in TOKEN_RE.findall(p.en) if w[0].isalpha()) for p in train_pairs]
    zh_sents = [p.zh for p in train_pairs]
    word_count = Counter(w for s in en_sents for w in s)
    vocab = {w for w, n in word_count.items() if n >= min_count}
    cands: dict[str, dict[str, int]] = defaultdict(dict)  # word -> {zh: best sense index}
    path = Path(cedict_tsv)
    if not path.is_file():
        raise DataError(f"{path} not found; pass the CC-CEDICT TSV of the shared data folder.")
    for line in path.read_text(encoding="utf-8").split("\n")[1:]:
        parts = line.split("\t")
        if len(parts) < 4 or re.search(r"[A-Za-z0-9%·，]", parts[1]):
            continue
        for si, g in _glosses(parts[3]):
            if g in vocab:
                cands[g][parts[1]] = min(si, cands[g].get(parts[1], si))
    # Postings: which training sentences contain each Chinese character (to count n(c) quickly).
    postings: dict[str, set[int]] = defaultdict(set)
    for i, zh in enumerate(zh_sents):
        for ch in set(zh):
            postings[ch].add(i)
    n_c_cache: dict[str, int] = {}

    def n_c(c: str) -> int:
        if c not in n_c_cache:
            rows = set.intersection(*(postings.get(ch, set()) for ch in set(c)))
            n_c_cache[c] = sum(c in zh_sents[i] for i in rows)
        return n_c_cache[c]

    word_rows: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(en_sents):
        for w in s & cands.keys():
            word_rows[w].append(i)

    def score(c: str, si: int, rows: list[int]) -> tuple[float, int, int]:
        both = sum(c in zh_sents[i] for i in rows)
        dice = 2 * both / (len(rows) + n_c(c)) if both else 0.0
        return (-round(dice, 6), si, len(c))

    return {w: min(options.items(), key=lambda kv: score(kv[0], kv[1], word_rows[w]))[0]
            for w, options in cands.items()}
