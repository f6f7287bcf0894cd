"""The English→Chinese parallel corpus shipped with llmcore, its splits, and batches for the Trainer.

Three sources, assembled once by ``scripts/build_parallel_data.py`` from the project's shared data folder into
``llmcore/translation/data/`` (see the README there for sources and licences):

* Bible verses, World English Bible (derived text) → Chinese Union Version 1919 (Simplified); public domain.
  Cleaning follows the source README: rows with an empty side are dropped; where CUV merged verse *k* into
  verse *k-1* (empty Chinese in row *k*) rows *k-1* and *k* are both dropped (John 7:53 is merged into 8:1
  instead, so 8:1 goes too); the rows the README lists as split differently are dropped; pairs whose
  Chinese/English character ratio lies outside [median/2, 2·median] are dropped as misaligned; and verses
  longer than :data:`MAX_EN_CHARS` English characters are left out to keep the examples CPU-sized.
* HSK everyday sentences (CC-BY-SA-4.0, "hsk-sentences-audio contributors"): all pairs, exact duplicates removed.
* Tatoeba everyday sentences (CC BY 2.0 FR, "Tatoeba (tatoeba.org)"): all pairs in Simplified characters, exact
  duplicates removed; the contributors of every row are listed in ``tatoeba_attribution.tsv.xz`` beside it.

Splits are a pure function of an example's *split key* (:func:`split_of`), never of file order, so they are
stable across rebuilds and machines: SHA-1 of the key, modulo 1000. Bible verses are split by **chapter**
(key ``bible:Gen.1``), so near-identical neighbouring verses never straddle train and test; the everyday
sentences (HSK and Tatoeba alike) by their normalised English text (``everyday:<lower-cased, single-spaced
English>``), so all translations of one English sentence, from either source, stay on one side. Test takes
15‰ of Bible chapters and 60‰ of everyday keys; validation the next 15‰ / 30‰.

At run time :func:`load_parallel` reads only the shipped files. :class:`Seq2SeqPairs` turns pairs into the
dict batches (``tgt_ids``, ``src_ids``, ``src_mask``, ``labels``) on which a
:class:`~llmcore.models.seq2seq.Seq2SeqTransformer` trains directly through the Trainer.
"""

from __future__ import annotations

import functools
import hashlib
import lzma
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch

from ..data.examples import ExampleDataset, check_rows_in_vocab
from ..errors import DataError, TokenizerError
from ..inputs import IGNORE_INDEX
from ..tokenizer import language_tag_id

DATA_DIR = Path(__file__).parent / "data"
PAIRS_FILE = "en_zh_pairs.tsv.xz"  # id, source, en, zh
CUV_FILE = "cuv_zh.txt.xz"  # the whole CUV (Simplified), one verse per line, book order
DICT_FILE = "en_zh_dict.tsv.xz"  # English word -> Chinese word, for the dictionary baseline
ATTRIBUTION_FILE = "tatoeba_attribution.tsv.xz"  # id, attribution (the CC BY 2.0 FR credit of each Tatoeba row)
SPLITS = ("train", "validation", "test")
SOURCES = ("bible", "hsk", "tatoeba")
MAX_EN_CHARS = 240  # longest English verse kept (~95% of verses)
# (test, validation) upper bounds in per-mille of the SHA-1 bucket, per source.
# HSK and Tatoeba share one key space and so must share their bounds: one English sentence, one side.
SPLIT_PERMILLE = {"bible": (15, 30), "hsk": (60, 90), "tatoeba": (60, 90)}
# Rows whose alignment the source README flags: CUV versification differs (3 John 1:14, Rev 12:17, 13:1,
# Rom 16:23-24) or the WEB moved the Romans doxology to the end of Rom 14:23.
FLAGGED = {"3John.1.14", "Rev.12.17", "Rev.13.1", "Rom.16.23", "Rom.16.24", "Rom.14.23"}


class Pair(NamedTuple):
    """One parallel example: ``id`` (``bible:Gen.1.1`` / ``hsk:hsk1-0001`` / ``tatoeba:17``), ``source``
    (bible|hsk|tatoeba), en, zh."""

    id: str
    source: str
    en: str
    zh: str

    @property
    def split_key(self) -> str:
        if self.source == "bible":
            return "bible:" + self.id.split(":", 1)[1].rsplit(".", 1)[0]  # the chapter
        return "everyday:" + " ".join(self.en.lower().split())


def split_of(pair: Pair) -> str:
    """``"train"``, ``"validation"`` or ``"test"``: SHA-1 of the pair's split key, modulo 1000 (see module doc)."""
    bucket = int(hashlib.sha1(pair.split_key.encode("utf-8")).hexdigest(), 16) % 1000
    test, val = SPLIT_PERMILLE[pair.source]
    return "test" if bucket < test else "validation" if bucket < val else "train"


# ---------------------------------------------------------------------------------------------- run time
def _read_xz_lines(name: str, data_dir: Path | None) -> list[str]:
    path = Path(data_dir or DATA_DIR) / name
    if not path.is_file():
        raise DataError(f"{path} is missing: the translation data ships inside the llmcore package. Reinstall "
                        "llmcore, or rebuild it with python scripts/build_parallel_data.py SHARED_DIR OUT_DIR.")
    with lzma.open(path, "rt", encoding="utf-8") as f:
        return f.read().split("\n")


def load_parallel(split: str | None = "train", sources: Sequence[str] = SOURCES,
                  data_dir: str | Path | None = None) -> list[Pair]:
    """The shipped English→Chinese pairs of one split (``None``: all), in file order.

    Args:
        split: ``"train"``, ``"validation"``, ``"test"`` or None.
        sources: any of ``"bible"``, ``"hsk"``, ``"tatoeba"`` (default: all three).
        data_dir: read from here instead of the package (e.g. a fresh ``scripts/build_parallel_data.py`` output).
    """
    if split is not None and split not in SPLITS:
        raise DataError(f"Unknown split {split!r}; choose one of {SPLITS} (or None for all pairs).")
    unknown = sorted(set(sources) - set(SPLIT_PERMILLE))
    if unknown:
        raise DataError(f"Unknown sources {unknown}; choose from {sorted(SPLIT_PERMILLE)}.")
    path = (Path(data_dir) if data_dir else DATA_DIR) / PAIRS_FILE
    stamp = path.stat().st_mtime_ns if path.is_file() else None
    return [p for p, s in _pairs_with_splits(str(path), stamp)
            if p.source in sources and (split is None or s == split)]


@functools.lru_cache(maxsize=4)
def _pairs_with_splits(path: str, stamp: int | None) -> tuple[tuple[Pair, str], ...]:
    """Parsed pairs with their splits, cached per file (and modification time): parsing takes a second."""
    lines = _read_xz_lines(Path(path).name, Path(path).parent)
    pairs = (Pair(*line.split("\t")) for line in lines[1:] if line)
    return tuple((p, split_of(p)) for p in pairs)


def load_cuv_text(data_dir: str | Path | None = None) -> str:
    """The Chinese Union Version (1919, Simplified), one verse per line: ~1.05 M characters of Chinese text."""
    return "\n".join(line for line in _read_xz_lines(CUV_FILE, data_dir) if line) + "\n"


def load_zh_text(split: str = "train", data_dir: str | Path | None = None) -> str:
    """Chinese text for a Chinese language model: the Chinese side of every pair of ``split``, everyday
    sentences (HSK, Tatoeba; each distinct sentence once) first, then the Bible verses, one per line.

    Built from the pairs rather than the whole CUV so a model trained on ``"train"`` has seen no verse of a
    validation or test chapter (about 1.2 M characters for ``"train"``)."""
    everyday = dict.fromkeys(p.zh for p in load_parallel(split, sources=("hsk", "tatoeba"), data_dir=data_dir))
    bible = [p.zh for p in load_parallel(split, sources=("bible",), data_dir=data_dir)]
    return "\n".join([*everyday, *bible]) + "\n"


def load_attribution(data_dir: str | Path | None = None) -> dict[str, str]:
    """Pair id (``tatoeba:N``) → its Tatoeba credit (sentence numbers and contributors), as CC BY 2.0 FR asks."""
    lines = _read_xz_lines(ATTRIBUTION_FILE, data_dir)
    return dict(line.split("\t") for line in lines[1:] if line)


def load_dictionary(data_dir: str | Path | None = None) -> dict[str, str]:
    """English word (lower case) → one Chinese rendering, from CC-CEDICT (see ``scripts/build_parallel_data.py``)."""
    lines = _read_xz_lines(DICT_FILE, data_dir)
    return dict(line.split("\t") for line in lines[1:] if line)


# ---------------------------------------------------------------------------------------------- batches
class Seq2SeqPairs(ExampleDataset):
    """(source, target) pairs as Trainer batches for an encoder-decoder.

    A batch is ``{"tgt_ids": (B, T), "src_ids": (B, S), "src_mask": (B, S), "labels": (B, T)}``, the keywords of
    :meth:`Seq2SeqTransformer.forward <llmcore.models.seq2seq.Seq2SeqTransformer.forward>`. Source ids are
    ``encode(src) + [eos]``, right-padded to the batch's longest source (``src_mask`` is 1 on real tokens); the
    decoder input ``tgt_ids`` is ``[start] + encode(tgt)`` and the labels ``encode(tgt) + [eos]``
    (``IGNORE_INDEX`` on padding), where ``start`` is the target-language tag (``tgt_lang_tag``), so the same
    model could serve several target languages. Longer examples are cut (source at ``src_len`` tokens, target at
    ``tgt_len``) and counted in :attr:`truncated`. ``bucket`` > 1 draws training batches of similar length
    (see :class:`~llmcore.data.ExampleDataset`). ``vocab_size`` (default: the tokenizer's) is the model's
    vocabulary; every id is checked against it once, here.
    """

    def __init__(self, pairs: Sequence[tuple[str, str]], tokenizer: Any, src_len: int = 64, tgt_len: int = 64,
                 tgt_lang_tag: str = "<2zh>", bucket: int = 1, vocab_size: int | None = None) -> None:
        if tokenizer.eos_id is None or tokenizer.pad_id is None:
            raise TokenizerError("Seq2SeqPairs needs a tokenizer with eos and pad tokens.")
        if not pairs:
            raise DataError("Seq2SeqPairs got no pairs.")
        self.src_len, self.tgt_len, self.pad_id = src_len, tgt_len, tokenizer.pad_id
        self.start_id = language_tag_id(tokenizer, tgt_lang_tag)
        eos = tokenizer.eos_id
        srcs = tokenizer.encode([s for s, _ in pairs])
        tgts = tokenizer.encode([t for _, t in pairs])
        self.truncated = sum(len(s) + 1 > src_len or len(t) + 1 > tgt_len for s, t in zip(srcs, tgts))
        self.src = [(s + [eos])[:src_len] for s in srcs]
        self.tgt = [([self.start_id] + t + [eos])[:tgt_len + 1] for t in tgts]
        check_rows_in_vocab([*self.src, *self.tgt, [self.pad_id]],
                            vocab_size if vocab_size is not None else tokenizer.vocab_size, "the encoded pairs")
        self.bucket = bucket

    def example_length(self, i: int) -> int:
        # The source and the target are each padded to the batch's longest: both cost.
        return len(self.src[i]) + len(self.tgt[i])

    def __len__(self) -> int:
        return len(self.src)

    @property
    def num_tokens(self) -> int:
        """Target tokens in one pass (epochs are counted in these)."""
        return sum(len(t) - 1 for t in self.tgt)

    def collate(self, indices: Sequence[int], batch: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
        """``{"tgt_ids", "src_ids", "src_mask", "labels"}``; S and T are the longest source and target of
        ``batch`` (default: ``indices``), so rows built alone equal the same rows of the whole batch."""
        every = batch if batch is not None else indices
        S = max(len(self.src[i]) for i in every)
        T = max(len(self.tgt[i]) for i in every) - 1
        src = torch.full((len(indices), S), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(indices), S), dtype=torch.long)
        tgt = torch.full((len(indices), T), self.pad_id, dtype=torch.long)
        labels = torch.full((len(indices), T), IGNORE_INDEX, dtype=torch.long)
        for row, i in enumerate(indices):
            s, t = self.src[i], self.tgt[i]
            src[row, :len(s)] = torch.tensor(s)
            mask[row, :len(s)] = 1
            tgt[row, :len(t) - 1] = torch.tensor(t[:-1])
            labels[row, :len(t) - 1] = torch.tensor(t[1:])
        return {"tgt_ids": tgt, "src_ids": src, "src_mask": mask, "labels": labels}
