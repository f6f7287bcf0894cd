"""Torch-facing datasets of token streams: windows of prepared token files, and of re-tokenized raw text.

- :class:`TokenDataset` — nanoGPT's ``get_batch`` as an object: random ``block_size`` windows from a flat id
  file (``np.memmap``) for training, and sequential non-overlapping windows for evaluation. A split prepared
  as several shards reads as their concatenation (:class:`ShardedIds`, each shard memory-mapped), so the
  batches a seed draws depend on the ids only, never on how many shards hold them.
- :class:`OnTheFlyTextDataset` — the same ``sample_batch`` interface over raw text, re-tokenized at every draw
  with subword sampling (``tokenizer.encode(span, sample=True)``), so each epoch sees new segmentations
  (subword regularisation, Kudo 2018, arXiv:1804.10959; BPE-dropout, arXiv:1910.13267).

Every dataset gives the Trainer dict batches (``{"input_ids": (B, T), "labels": (B, T)}`` here): ``labels`` is
what the loss reads and every other entry is a keyword of the model call. ``sample_batch(n, generator,
rows=None)`` builds only the rows ``rows`` of the ``n``-row batch the generator draws, consuming the generator
exactly as for the whole batch, so each data-parallel rank builds only its own rows. Token ids are checked
once, where they enter (construction), against ``vocab_size``: models do not check them in ``forward``.

Datasets of separate, variable-length examples (padding, bucketing) are in :mod:`llmcore.data.examples`; the
pairs for fine-tuning (source -> target with masked prompt labels) live with the fine-tuning code.
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError, TokenizerError
from ..inputs import IGNORE_INDEX
from .layout import load_meta, split_files

Batch = dict[str, torch.Tensor]
_CHUNK = 1 << 24  # ids scanned at a time when checking a token file's range


def check_ids_in_vocab(max_id: int, min_id: int, vocab_size: int | None, what: str) -> None:
    """Raise :class:`DataError` unless every id lies in ``[0, vocab_size)`` (no check when vocab_size is None)."""
    if vocab_size is None:
        return
    if min_id < 0 or max_id >= vocab_size:
        bad = max_id if max_id >= vocab_size else min_id
        raise DataError(f"Token id {bad} in {what} is outside the vocabulary [0, {vocab_size}); the data was "
                        "tokenized with another tokenizer than the model's: re-tokenize it (`llmcore prepare`) "
                        "with the model's tokenizer, or pass the matching vocab_size.")


def _id_dtype(dtype: Any) -> np.dtype:
    """``dtype`` as a numpy integer dtype for token ids (DataError for floats, bools, unknown names)."""
    try:
        np_dtype = np.dtype(dtype)
    except TypeError as e:
        raise DataError(f"dtype={dtype!r} is not a numpy dtype; token files are uint16 or uint32") from e
    if np_dtype.kind not in "iu":
        raise DataError(f"dtype={np_dtype.name} cannot hold token ids; token files are uint16 or uint32")
    return np_dtype


def _pick(t: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    return t if rows is None else t[rows]


def _to_device(t: torch.Tensor, device: str | torch.device | None) -> torch.Tensor:
    if device is None:
        return t
    device = torch.device(device)
    if device.type == "cuda":  # pinned memory lets the copy overlap with compute (nanoGPT get_batch)
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


class ShardedIds:
    """Several id files read as one 1-D array, their concatenation; each is memory-mapped when read.

    Supports what :class:`TokenDataset` reads: ``len``, contiguous slices (``ids[a:b]``) and integer index
    arrays of any shape (``ids[starts[:, None] + arange]``); a window may span two shards. A fresh memmap per
    read, as for a single file, so pages do not pile up as resident memory.
    """

    def __init__(self, files: Sequence[Path], counts: Sequence[int], dtype: np.dtype) -> None:
        self.files, self.dtype = list(files), np.dtype(dtype)
        self.offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])  # shard k: [offsets[k], offsets[k+1])
        self.shape = (int(self.offsets[-1]),)

    def __len__(self) -> int:
        return self.shape[0]

    def _shard(self, k: int) -> np.ndarray:
        return np.memmap(self.files[k], dtype=self.dtype, mode="r")

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                raise IndexError("ShardedIds slices take step 1")
            pieces = [np.empty(0, self.dtype)]
            first = int(np.searchsorted(self.offsets, start, side="right")) - 1
            for k in range(max(first, 0), len(self.files)):
                lo, hi = self.offsets[k], self.offsets[k + 1]
                if lo >= stop:
                    break
                pieces.append(self._shard(k)[max(start, lo) - lo:min(stop, hi) - lo])
            return np.concatenate(pieces)
        idx = np.asarray(key, dtype=np.int64)
        flat = idx.ravel()
        if flat.size and (flat.min() < 0 or flat.max() >= len(self)):
            raise IndexError(f"index out of range for {len(self)} ids")
        which = np.searchsorted(self.offsets, flat, side="right") - 1  # the shard of each index
        out = np.empty(flat.shape, dtype=self.dtype)
        for k in np.unique(which):
            sel = which == k
            out[sel] = self._shard(int(k))[flat[sel] - self.offsets[k]]
        return out.reshape(idx.shape)


class TokenDataset(torch.utils.data.Dataset):
    """Windows of ``block_size`` tokens from one split of a prepared corpus.

    Args:
        path_or_array: a directory written by :func:`llmcore.data.prepare` (reads the split's shards, in
            the order and with the dtype ``meta.json`` gives; an earlier llmcore's ``{split}.bin`` too), one
            ``.bin`` file (dtype from ``meta.json`` beside it, or ``dtype``), or the ids themselves (numpy
            array, 1-D tensor or list).
        block_size: tokens per window; each window needs ``block_size + 1`` tokens (inputs plus next-token
            targets).
        split: ``"train"`` or ``"val"`` when ``path_or_array`` is a directory.
        dtype: dtype of a bare ``.bin`` file without ``meta.json``.
        rank, world_size: for distributed evaluation, :meth:`iter_eval` yields only every
            ``world_size``-th window starting at ``rank``. :meth:`sample_batch` ignores them (the Trainer
            passes ``rows=`` instead).
        vocab_size: the model's vocabulary size; every id is checked to lie in ``[0, vocab_size)`` once, here
            (a file is scanned in chunks). None = no check.

    ``len(ds)`` and ``ds[i]`` are the full non-overlapping windows (``{"input_ids", "labels"}`` of shape
    (block_size,)), so the dataset also works with a ``DataLoader`` and ``DistributedSampler``.
    """

    def __init__(
        self,
        path_or_array: str | os.PathLike | np.ndarray | torch.Tensor | Sequence[int],
        block_size: int,
        split: str = "train",
        dtype: str | np.dtype | None = None,
        rank: int = 0,
        world_size: int = 1,
        vocab_size: int | None = None,
    ) -> None:
        if not isinstance(block_size, int) or block_size < 1:
            raise DataError(f"block_size={block_size!r} must be a positive integer")
        if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
            raise DataError(f"rank={rank} and world_size={world_size}: need world_size >= 1 and 0 <= rank < world_size")
        self.block_size, self.split, self.rank, self.world_size = block_size, split, rank, world_size
        self.path: Path | None = None  # the file, or the directory of a split in several shards
        self.array: np.ndarray | None = None
        self.shards: list[tuple[Path, int]] = []
        if isinstance(path_or_array, (str, os.PathLike)):
            self.path, self.dtype, self.shards = self._locate(Path(path_or_array), split, dtype)
            self.num_tokens = sum(n for _, n in self.shards)
        else:
            if isinstance(path_or_array, torch.Tensor):
                path_or_array = path_or_array.detach().cpu().numpy()
            self.array = np.asarray(path_or_array)
            if self.array.ndim != 1 or self.array.dtype.kind not in "iu":
                raise DataError(f"token ids must be a 1-D integer array, got shape {self.array.shape} "
                                f"and dtype {self.array.dtype}")
            self.dtype, self.num_tokens = self.array.dtype, len(self.array)
        if self.num_tokens < block_size + 1:
            where = self.path or "the given ids"
            raise DataError(
                f"{split} split ({where}) has {self.num_tokens} tokens, but block_size={block_size} needs at least "
                f"{block_size + 1}; use max_seq_len <= {max(self.num_tokens - 1, 0)} (the model's context, "
                "which sets block_size) or give more data "
                "(for val: a larger val_fraction)"
            )
        if vocab_size is not None:
            data = self.data()
            lo, hi = 0, 0
            for i in range(0, self.num_tokens, _CHUNK):
                chunk = data[i:i + _CHUNK]
                lo, hi = min(lo, int(chunk.min())), max(hi, int(chunk.max()))
            check_ids_in_vocab(hi, lo, vocab_size, f"{self.path or 'the given ids'}")

    @staticmethod
    def _file_tokens(file: Path, np_dtype: np.dtype, expected: int | None, meta_file: Path | None) -> int:
        if not file.is_file():
            where = f"; run `llmcore prepare --out {file.parent}` again" if meta_file else ""
            raise DataError(f"{file} does not exist{where}")
        size = file.stat().st_size
        if expected is not None and size != expected * np_dtype.itemsize:
            raise DataError(f"{file} has {size} bytes, but {meta_file} says it holds {expected} {np_dtype.name} ids "
                            f"({expected * np_dtype.itemsize} bytes); the files do not belong together: run "
                            f"`llmcore prepare --out {file.parent}` again")
        if size % np_dtype.itemsize:
            raise DataError(f"{file} has {size} bytes, not a whole number of {np_dtype.name} ids; "
                            "it is truncated or the dtype is wrong; run `llmcore prepare` again")
        return size // np_dtype.itemsize

    @classmethod
    def _locate(cls, path: Path, split: str, dtype: Any) -> tuple[Path, np.dtype, list[tuple[Path, int]]]:
        """(what messages name, dtype, [(token file, ids)]) of a prepared directory's split or one .bin file."""
        if path.is_dir():
            meta = load_meta(path)
            files = split_files(path, split, meta)
            np_dtype = _id_dtype(dtype or meta["dtype"])
            shards = [(f, cls._file_tokens(f, np_dtype, n, path / "meta.json")) for f, n in files]
            where = shards[0][0] if len(shards) == 1 else path / f"{split}-*.bin"
            return where, np_dtype, shards
        if not path.is_file():
            raise DataError(f"{path} does not exist; pass a directory written by `llmcore prepare` or a .bin file")
        if dtype is None:
            if not (path.parent / "meta.json").is_file():
                raise DataError(f"{path} has no meta.json beside it; pass dtype='uint16' or 'uint32'")
            dtype = load_meta(path.parent)["dtype"]
        np_dtype = _id_dtype(dtype)
        return path, np_dtype, [(path, cls._file_tokens(path, np_dtype, None, None))]

    def data(self) -> np.ndarray | ShardedIds:
        """The ids as a 1-D array (a fresh read-only memmap for one file, :class:`ShardedIds` for several)."""
        if self.array is not None:
            return self.array
        if len(self.shards) != 1:
            return ShardedIds([f for f, _ in self.shards], [n for _, n in self.shards], self.dtype)
        # a new memmap per call, as nanoGPT does: a long-lived one lets its pages pile up as resident memory
        return np.memmap(self.shards[0][0], dtype=self.dtype, mode="r")

    def _windows(self, data: np.ndarray, starts: torch.Tensor | np.ndarray, length: int) -> torch.Tensor:
        idx = np.asarray(starts, dtype=np.int64)[:, None] + np.arange(length)  # (B, length)
        return torch.from_numpy(data[idx].astype(np.int64))

    def sample_batch(self, batch_size: int, generator: torch.Generator | None = None,
                     rows: torch.Tensor | None = None, device: str | torch.device | None = None) -> Batch:
        """Random training windows: ``input_ids`` (B, block_size) and ``labels`` = them shifted left by one.

        Start indices are ``torch.randint(len(data) - block_size, (B,), generator=generator)``, as nanoGPT's
        ``get_batch``, so the same generator state gives the same batch. ``rows`` (row indices into those B)
        reads only these windows; the generator advances as for all B.
        """
        data = self.data()
        ix = _pick(torch.randint(self.num_tokens - self.block_size, (batch_size,), generator=generator), rows)
        w = self._windows(data, ix.numpy(), self.block_size + 1)  # (b, T+1)
        x, y = w[:, :-1].contiguous(), w[:, 1:].contiguous()  # (b, T), (b, T)
        return {"input_ids": _to_device(x, device), "labels": _to_device(y, device)}

    @property
    def num_full_windows(self) -> int:
        return (self.num_tokens - 1) // self.block_size

    def __len__(self) -> int:
        return self.num_full_windows

    def __getitem__(self, i: int) -> Batch:
        if not -len(self) <= i < len(self):
            raise IndexError(f"window {i} out of range for {len(self)} windows")
        start = (i % len(self)) * self.block_size
        w = torch.from_numpy(self.data()[start:start + self.block_size + 1].astype(np.int64))
        return {"input_ids": w[:-1], "labels": w[1:]}

    def iter_eval(self, batch_size: int, max_batches: int | None = None, pad_last: bool = False,
                  device: str | torch.device | None = None) -> Iterator[Batch]:
        """Sequential non-overlapping windows for evaluation, the same on every call.

        Window ``k`` covers tokens ``[k*T, (k+1)*T]``; this rank gets windows ``rank, rank + world_size, ...``
        in batches of ``batch_size`` (the last batch may be smaller, and ranks may get one batch fewer than
        others, so reduce loss sums and token counts once after the loop). The final ``< T`` targets are
        dropped unless ``pad_last``, which adds them as one more window with labels ``IGNORE_INDEX`` (ignored by the loss)
        and ``x = 0`` beyond the data, so that every target token is scored exactly once. With
        ``max_batches`` smaller than the split, the windows are spread evenly over the whole split.
        """
        T, n = self.block_size, self.num_tokens
        data = self.data()
        starts = np.arange(self.num_full_windows, dtype=np.int64) * T
        tail = (n - 1) - self.num_full_windows * T  # targets left after the full windows
        if pad_last and tail > 0:
            starts = np.append(starts, self.num_full_windows * T)
        wanted = None if max_batches is None else max_batches * batch_size * self.world_size
        if wanted is not None and wanted < len(starts):
            # A capped evaluation spreads its windows evenly over the whole split instead of scoring only
            # its beginning, so a quick periodic val loss estimates the full-split loss without bias.
            pick = np.unique(np.linspace(0, self.num_full_windows - 1, num=wanted).round().astype(np.int64))
            starts = pick * T
        starts = starts[self.rank::self.world_size]
        for b, i in enumerate(range(0, len(starts), batch_size)):
            if max_batches is not None and b >= max_batches:
                return
            chunk = starts[i:i + batch_size]
            full = chunk[chunk + T + 1 <= n]
            w = self._windows(data, full, T + 1)  # (b, T+1)
            x, y = w[:, :-1], w[:, 1:]
            if len(full) < len(chunk):  # the padded tail window
                s = int(chunk[-1])
                xt = torch.zeros(1, T, dtype=torch.long)
                yt = torch.full((1, T), IGNORE_INDEX, dtype=torch.long)
                xt[0, :tail] = torch.from_numpy(data[s:s + tail].astype(np.int64))
                yt[0, :tail] = torch.from_numpy(data[s + 1:s + 1 + tail].astype(np.int64))
                x, y = torch.cat([x, xt]), torch.cat([y, yt])
            yield {"input_ids": _to_device(x.contiguous(), device), "labels": _to_device(y.contiguous(), device)}

    def num_eval_batches(self, batch_size: int, pad_last: bool = False) -> int:
        """How many batches :meth:`iter_eval` yields on this rank."""
        n = self.num_full_windows + int(pad_last and (self.num_tokens - 1) % self.block_size > 0)
        mine = len(range(self.rank, n, self.world_size))
        return math.ceil(mine / batch_size)


class OnTheFlyTextDataset:
    """Random text spans tokenized at draw time, so sampling tokenizers give new segmentations every time.

    Each row takes a random span of characters, encodes it with ``tokenizer.encode(span, sample=sample)``,
    drops the first token (the span may start mid-word) and keeps the next ``block_size + 1``. The span
    positions follow ``generator``; the segmentation under ``sample=True`` comes from sentencepiece's own
    random state, so batches are not bit-reproducible from the generator alone.

    Args:
        text: the training text (``llmcore.data.corpora.read_text`` reads files).
        tokenizer: a tokenizer whose ``encode`` takes ``sample=`` (sentencepiece) when ``sample=True``.
        block_size: tokens per window.
        sample: encode with subword sampling; False gives deterministic encoding (any tokenizer).
        span_chars: characters per span; by default estimated from the text so a span holds the tokens.
        vocab_size: the model's vocabulary size; the tokenizer's ids must fit it (checked once, here).
    """

    def __init__(self, text: str, tokenizer: Any, block_size: int, sample: bool = True,
                 span_chars: int | None = None, vocab_size: int | None = None) -> None:
        if not isinstance(block_size, int) or block_size < 1:
            raise DataError(f"block_size={block_size!r} must be a positive integer")
        if not isinstance(text, str) or not text:
            raise DataError("OnTheFlyTextDataset needs non-empty text; read files with corpora.read_text()")
        takes_sample = "sample" in inspect.signature(tokenizer.encode).parameters
        if sample and not takes_sample:
            raise TokenizerError(f"{type(tokenizer).__name__}.encode has no sample= option; subword sampling needs "
                                 "a SentencePieceTokenizer, or pass sample=False")
        check_ids_in_vocab(tokenizer.vocab_size - 1, 0, vocab_size, f"the tokenizer ({tokenizer.vocab_size} ids)")
        self.text, self.tokenizer, self.block_size = text, tokenizer, block_size
        self.kwargs = {"sample": sample} if takes_sample else {}
        head = text[:100_000]
        n_head = max(len(tokenizer.encode(head, **({"sample": False} if takes_sample else {}))), 1)
        chars_per_token = len(head) / n_head
        if len(text) / chars_per_token < block_size + 2:
            raise DataError(f"the text has about {int(len(text) / chars_per_token)} tokens, but block_size="
                            f"{block_size} needs at least {block_size + 2}; use a smaller block_size or more text")
        # 25% headroom plus a few characters, so a retry with a longer span is rare
        self.span_chars = span_chars or math.ceil((block_size + 2) * chars_per_token * 1.25) + 16

    def _encode(self, spans: list[str]) -> list[list[int]]:
        # One call per span, not one batched call: sentencepiece's batch encoder starts fresh threads whose
        # random generators all restart from the global seed, so batched sampling repeats itself call after call.
        return [self.tokenizer.encode(span, **self.kwargs) for span in spans]

    def sample_batch(self, batch_size: int, generator: torch.Generator | None = None,
                     rows: torch.Tensor | None = None, device: str | torch.device | None = None) -> Batch:
        """``input_ids`` (B, block_size) and ``labels`` = them shifted by one, from freshly tokenized random spans.

        ``rows`` tokenizes only those rows of the ``batch_size`` drawn (the generator advances as for all).
        """
        need, text = self.block_size + 2, self.text
        span = min(self.span_chars, len(text))
        starts = _pick(torch.randint(len(text) - span + 1, (batch_size,), generator=generator), rows).tolist()
        encoded = self._encode([text[s:s + span] for s in starts])
        for r, s in enumerate(starts):
            length = span
            while len(encoded[r]) < need:  # an unusually token-dense span: take more text
                if length >= len(text):
                    raise DataError(f"the text gives only {len(encoded[r])} tokens, but block_size={self.block_size}"
                                    f" needs {need}; use a smaller block_size or more text")
                length = min(2 * length, len(text))
                s = min(s, len(text) - length)
                encoded[r] = self._encode([text[s:s + length]])[0]
        w = torch.tensor([row[1:need] for row in encoded], dtype=torch.long)  # (B, T+1)
        x, y = w[:, :-1].contiguous(), w[:, 1:].contiguous()
        return {"input_ids": _to_device(x, device), "labels": _to_device(y, device)}


__all__ = ["OnTheFlyTextDataset", "ShardedIds", "TokenDataset", "check_ids_in_vocab"]
