"""Rebuild the translation data shipped in ``src/llmcore/translation/data/`` from the raw sources.

    python scripts/build_parallel_data.py /path/to/shared/data [src/llmcore/translation/data]

An offline step run by maintainers, not part of the installed library: it reads the project's shared data
folder (``bible-parallel/verses.tsv``, ``hsk-sentences/hsk_en_zh.tsv``, ``tatoeba-cmn/tatoeba_en_zh.tsv``,
``cc-cedict/cedict.tsv``), applies the cleaning rules described in :mod:`llmcore.translation.data` (Bible: empty
sides, merged and flagged verses, length-ratio outliers, verses over ``MAX_EN_CHARS``; HSK and Tatoeba: exact
duplicates) and writes the four xz files that ``load_parallel`` / ``load_cuv_text`` / ``load_dictionary`` /
``load_attribution`` read. The same inputs give the same bytes.
Prints the statistics (pairs per source and split, rows dropped per rule) as JSON.
"""

from __future__ import annotations

import argparse
import json
import lzma
import re
import statistics
import sys
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llmcore.errors import DataError, LLMCoreError
from llmcore.translation.data import (
    ATTRIBUTION_FILE,
    CUV_FILE,
    DATA_DIR,
    DICT_FILE,
    FLAGGED,
    MAX_EN_CHARS,
    PAIRS_FILE,
    SOURCES,
    SPLITS,
    Pair,
    split_of,
)
from llmcore.translation.metrics import TOKEN_RE

# Gloss prefixes of CC-CEDICT senses that are not translations of an English word.
SKIP_SENSES = ("surname ", "variant of", "old variant", "see ", "cl:", "used in", "abbr.", "japanese variant",
               "erhua variant", "(bound form)")


def _read_tsv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise DataError(f"{path} not found; pass the shared data directory that holds it.")
    lines = path.read_text(encoding="utf-8").split("\n")
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"))) for line in lines[1:] if line]


def bible_pairs(verses_tsv: Path) -> tuple[list[Pair], dict[str, int]]:
    """Clean WEB→CUV verse pairs (see the module docstring) and counts of what each rule dropped."""
    rows = _read_tsv(verses_tsv)
    ids = [f"{r['book']}.{r['chapter']}.{r['verse']}" for r in rows]
    drop: dict[int, str] = {}
    for k, r in enumerate(rows):
        if not r["en_web"].strip():
            drop.setdefault(k, "empty_en")
        if not r["zh_cuv"].strip():
            drop.setdefault(k, "empty_zh")
            merged_into = k + 1 if ids[k] == "John.7.53" else k - 1
            drop.setdefault(merged_into, "merged_verse")
        if ids[k] in FLAGGED:
            drop.setdefault(k, "flagged")
    kept = [k for k in range(len(rows)) if k not in drop]
    ratio = {k: len(rows[k]["zh_cuv"]) / len(rows[k]["en_web"]) for k in kept}
    med = statistics.median(ratio.values())
    for k in kept:
        if not med / 2 <= ratio[k] <= 2 * med:
            drop[k] = "length_ratio"
        elif len(rows[k]["en_web"]) > MAX_EN_CHARS:
            drop[k] = "too_long"
    counts: dict[str, int] = {}
    for why in drop.values():
        counts[why] = counts.get(why, 0) + 1
    pairs = [Pair("bible:" + ids[k], "bible", rows[k]["en_web"].strip(), rows[k]["zh_cuv"].strip())
             for k in range(len(rows)) if k not in drop]
    return pairs, counts


def hsk_pairs(hsk_tsv: Path) -> list[Pair]:
    """All HSK sentence pairs (Simplified Chinese), exact (en, zh) duplicates removed."""
    seen, pairs = set(), []
    for r in _read_tsv(hsk_tsv):
        en, zh = r["en"].strip(), r["zh_hans"].strip()
        if en and zh and (en, zh) not in seen:
            seen.add((en, zh))
            pairs.append(Pair("hsk:" + r["id"], "hsk", en, zh))
    return pairs


def tatoeba_pairs(tatoeba_tsv: Path) -> tuple[list[Pair], dict[str, str]]:
    """All Tatoeba pairs (the Simplified-character column), exact (en, zh) duplicates removed, and each kept
    pair's attribution (Tatoeba sentence numbers and contributors, which CC BY 2.0 FR asks to keep)."""
    seen, pairs, credit = set(), [], {}
    for i, r in enumerate(_read_tsv(tatoeba_tsv), start=1):
        en, zh = r["en"].lstrip("\ufeff").strip(), r["zh_hans"].strip()  # the export starts with a BOM
        if en and zh and (en, zh) not in seen:
            seen.add((en, zh))
            pair = Pair(f"tatoeba:{i}", "tatoeba", en, zh)
            pairs.append(pair)
            credit[pair.id] = r["attribution"].strip()
    return pairs, credit


def _write_xz(path: Path, text: str) -> None:
    with lzma.open(path, "wt", encoding="utf-8", preset=9 | lzma.PRESET_EXTREME) as f:
        f.write(text)


def build_parallel_data(shared_dir: str | Path, out_dir: str | Path = DATA_DIR) -> dict[str, Any]:
    """Rebuild the shipped files from the shared data folder (``bible-parallel``, ``hsk-sentences``, ``cc-cedict``).

    Writes :data:`PAIRS_FILE`, :data:`CUV_FILE` and :data:`DICT_FILE` into ``out_dir`` and returns statistics
    (pairs per source and split, rows dropped per rule). Deterministic: the same inputs give the same bytes.
    """
    shared, out = Path(shared_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    bible, dropped = bible_pairs(shared / "bible-parallel" / "verses.tsv")
    hsk = hsk_pairs(shared / "hsk-sentences" / "hsk_en_zh.tsv")
    tatoeba, credit = tatoeba_pairs(shared / "tatoeba-cmn" / "tatoeba_en_zh.tsv")
    pairs = bible + hsk + tatoeba
    bad = [p.id for p in pairs if "\t" in p.en + p.zh or "\n" in p.en + p.zh]
    bad += [k for k, v in credit.items() if "\t" in v or "\n" in v]  # the attribution file is TSV too
    if bad:
        raise DataError(f"Pairs {bad[:3]} contain tabs or newlines, which the TSV format cannot hold.")
    _write_xz(out / PAIRS_FILE, "id\tsource\ten\tzh\n" + "".join("\t".join(p) + "\n" for p in pairs))
    _write_xz(out / ATTRIBUTION_FILE, "id\tattribution\n" + "".join(f"{k}\t{v}\n" for k, v in credit.items()))
    cuv = [r["zh_cuv"].strip() for r in _read_tsv(shared / "bible-parallel" / "verses.tsv")]
    _write_xz(out / CUV_FILE, "".join(v + "\n" for v in cuv if v))
    train = [p for p in pairs if split_of(p) == "train"]
    dictionary = build_dictionary(shared / "cc-cedict" / "cedict.tsv", train)
    _write_xz(out / DICT_FILE, "en\tzh\n" + "".join(f"{w}\t{z}\n" for w, z in sorted(dictionary.items())))
    stats: dict[str, Any] = {"dropped": dropped, "dictionary_words": len(dictionary)}
    for source in SOURCES:
        for split in SPLITS:
            stats[f"{source}_{split}"] = sum(p.source == source and split_of(p) == split for p in pairs)
    stats["bytes"] = {f.name: f.stat().st_size for f in sorted(out.glob("*.xz"))}
    return stats



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


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("shared_dir", help="the shared data folder (holds bible-parallel/, hsk-sentences/, tatoeba-cmn/, "
                   "cc-cedict/)")
    p.add_argument("out_dir", nargs="?", default=str(DATA_DIR), help="where to write (default: the package data)")
    args = p.parse_args(argv)
    try:
        stats = build_parallel_data(args.shared_dir, args.out_dir)
    except LLMCoreError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(stats, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
