"""Data: read corpora, tokenize them once into memmap files, and draw training / evaluation batches.

- :mod:`~llmcore.data.corpora` — UTF-8 files (plain, gzip, xz, zstd; JSONL), globs and directories as text;
  the bundled Shakespeare.
- :mod:`~llmcore.data.shards` — :func:`prepare` (text -> token shards ``train-00000.bin``, ... + ``meta.json``,
  in parallel or on Dask, flat memory, the same files either way) and :func:`build_tokenizer` (``"char"``,
  ``"byte"``, ``"sp"`` or a directory); :mod:`~llmcore.data.parts` (the unit of work),
  :mod:`~llmcore.data.layout` (the index), :mod:`~llmcore.data.dask_prepare` (the Dask runner).
- :mod:`~llmcore.data.datasets` — :class:`TokenDataset` (random and sequential windows) and
  :class:`OnTheFlyTextDataset` (re-tokenized with subword sampling).
- :mod:`~llmcore.data.examples` — :class:`ExampleDataset` (the base of pair / classification / seq2seq
  datasets, with length bucketing) and :func:`collate_pad`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

if TYPE_CHECKING:  # the public names, imported on first use (llmcore.lazy): importing the package loads no torch
    from ..inputs import IGNORE_INDEX
    from .corpora import bundled_corpus_path, read_text, resolve_paths
    from .datasets import OnTheFlyTextDataset, TokenDataset
    from .examples import ExampleDataset, ImageTextDataset, collate_pad
    from .shards import build_tokenizer, choose_dtype, load_meta, prepare, split_files

__all__ = [
    "bundled_corpus_path",
    "read_text",
    "resolve_paths",
    "prepare",
    "build_tokenizer",
    "choose_dtype",
    "load_meta",
    "split_files",
    "TokenDataset",
    "OnTheFlyTextDataset",
    "ExampleDataset", "ImageTextDataset",
    "collate_pad",
    "IGNORE_INDEX",
]

__getattr__, __dir__ = lazy_exports(__name__, __file__)
