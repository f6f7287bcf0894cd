"""Datasets of separate, variable-length examples: the shared batching, and padding them into one batch.

- :class:`ExampleDataset` — the base of the pair, classification and seq2seq datasets: ``sample_batch``
  (random, reproducible, optionally bucketed by length) and ``iter_eval`` over a subclass's ``collate``.
- :func:`collate_pad` — lists of id lists -> padded ``input_ids``, ``attention_mask`` (and labels).
- :func:`check_rows_in_vocab` — the vocabulary check of encoded examples, where they enter.

The token-stream datasets (windows of one long sequence, no padding) are in :mod:`llmcore.data.datasets`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Literal

import torch

from ..errors import DataError
from ..inputs import IGNORE_INDEX
from .datasets import Batch, check_ids_in_vocab


def check_rows_in_vocab(rows: Iterable[Sequence[int]], vocab_size: int | None, what: str) -> None:
    """:func:`~llmcore.data.datasets.check_ids_in_vocab` over lists of ids (no check when vocab_size is None)."""
    ids = [i for row in rows for i in row]
    if ids:
        check_ids_in_vocab(max(ids), min(ids), vocab_size, what)


class ExampleDataset:
    """Batches over a list of examples for the Trainer: subclasses define ``__len__`` and
    ``collate(indices, batch=None)``, which builds the dict batch of examples ``indices`` padded as the batch
    of examples ``batch`` (default: ``indices`` themselves) would be, so a subset of rows equals those rows of
    the whole batch.

    ``sample_batch`` draws examples with replacement from ``generator`` (reproducible); ``iter_eval`` visits
    every example once, in order. Pair, classification and seq2seq datasets share this.

    Length bucketing (``bucket = k > 1``, for subclasses that define ``example_length(i)``, the tokens of
    example ``i``): draw ``k·B`` examples, sort them by length, cut them into ``k`` slices of ``B`` and return
    one slice, chosen with probability proportional to the tokens it holds. A batch then holds examples of similar length and pads
    far less, and the expected gradient is still the per-token mean over the drawn examples, the quantity the
    Trainer's per-token loss estimates with plain random batches. (Choosing the slice uniformly instead, as
    a length-grouped sampler does, gives the few tokens of a short-sentence batch a whole optimizer step and
    so over-weights short examples.) Batches are correlated by length, so keep ``k`` modest (4-16).
    """

    _bucket: int = 1

    @property
    def bucket(self) -> int:
        """Length-bucketing factor ``k`` of :meth:`sample_batch` (1 = plain random batches)."""
        return self._bucket

    @bucket.setter
    def bucket(self, k: int) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise DataError(f"bucket={k!r} must be an integer >= 1 (1 turns length bucketing off).")
        if k > 1 and not callable(getattr(self, "example_length", None)):
            raise DataError(f"{type(self).__name__} defines no example_length, so it cannot bucket by length; "
                            "use bucket=1.")
        self._bucket = k

    def sample_batch(self, batch_size: int, generator: torch.Generator | None = None,
                     rows: torch.Tensor | None = None) -> Batch:
        """A random batch (with replacement), drawn with ``generator`` for reproducibility.

        ``rows`` (row indices into the ``batch_size`` drawn) builds only those rows, padded to the width of the
        whole batch, so they equal the same rows of the full batch; the generator advances as for all rows.
        """
        k = self.bucket
        indices = torch.randint(len(self), (batch_size * k,), generator=generator).tolist()
        if k > 1:  # only then draw the slice, so bucket=1 consumes the generator exactly as before
            indices.sort(key=self.example_length)
            tokens = torch.tensor([self.example_length(i) for i in indices], dtype=torch.float64)
            mass = tokens.view(k, batch_size).sum(1)  # (k,) tokens per slice
            j = int(torch.multinomial(mass, 1, generator=generator))
            indices = indices[j * batch_size:(j + 1) * batch_size]
        if rows is None:
            return self.collate(indices)
        return self.collate([indices[r] for r in rows.tolist()], batch=indices)

    def iter_eval(self, batch_size: int, max_batches: int | None = None) -> Iterator[Batch]:
        """Every example once, in order (the last batch may be smaller), up to ``max_batches`` batches."""
        n = len(self)
        for b, start in enumerate(range(0, n, batch_size)):
            if max_batches is not None and b >= max_batches:
                return
            yield self.collate(range(start, min(start + batch_size, n)))


def collate_pad(
    sequences: Sequence[Sequence[int]],
    pad_id: int | None,
    padding_side: Literal["left", "right"] = "right",
    label_pad: int = IGNORE_INDEX,
    labels: bool | Sequence[Sequence[int]] = False,
    width: int | None = None,
) -> tuple[torch.Tensor, ...]:
    """Pad id lists to one (B, T) batch, T = the longest sequence (or ``width``, if that is larger).

    Args:
        sequences: B lists (or 1-D tensors) of ids.
        pad_id: the id written into padding (may be None only if no padding is needed).
        padding_side: ``"right"`` for training, ``"left"`` for batched generation.
        label_pad: the label of padding positions (``IGNORE_INDEX``, -100, is ignored by the loss).
        labels: ``True`` returns labels = ``input_ids`` with padding set to ``label_pad``; a list of B label
            lists (each as long as its sequence) returns those padded with ``label_pad``. Labels are aligned
            with ``input_ids`` (not shifted); the loss does the shift.
        width: pad to at least this many columns (rows of a larger batch padded as that batch is).

    Returns:
        ``(input_ids, attention_mask)`` or ``(input_ids, attention_mask, labels)``, all LongTensors (B, T);
        the mask is 1 on real tokens and 0 on padding.
    """
    if padding_side not in ("left", "right"):
        raise DataError(f"padding_side={padding_side!r} is not one of 'left', 'right'")
    seqs = [s.tolist() if hasattr(s, "tolist") else list(s) for s in sequences]
    if not seqs:
        raise DataError("collate_pad() got no sequences; pass at least one list of ids")
    lengths = [len(s) for s in seqs]
    width = max(max(lengths), width or 0)
    if pad_id is None and min(lengths) < width:
        raise DataError("sequences of different lengths need a pad_id; use a tokenizer with a pad token "
                        "or pass pad_id explicitly")
    label_rows: list[list[int]] | None = None
    if labels is True:
        label_rows = seqs
    elif labels is not False:
        label_rows = [s.tolist() if hasattr(s, "tolist") else list(s) for s in labels]
        bad = [i for i, (a, b) in enumerate(zip(seqs, label_rows)) if len(a) != len(b)]
        if len(label_rows) != len(seqs) or bad:
            raise DataError(f"labels must match the sequences one to one in length; mismatch at rows {bad[:5]} "
                            f"({len(label_rows)} label rows for {len(seqs)} sequences)")

    def pad(rows: list[list[int]], value: int) -> torch.Tensor:
        out = torch.full((len(rows), width), value, dtype=torch.long)  # (B, T)
        for i, row in enumerate(rows):
            if row:
                sl = slice(0, len(row)) if padding_side == "right" else slice(width - len(row), width)
                out[i, sl] = torch.tensor(row, dtype=torch.long)
        return out

    input_ids = pad(seqs, pad_id if pad_id is not None else 0)
    mask = pad([[1] * n for n in lengths], 0)
    if label_rows is None:
        return input_ids, mask
    return input_ids, mask, pad(label_rows, label_pad)


__all__ = ["ExampleDataset", "collate_pad", "check_rows_in_vocab"]


class ImageTextDataset(ExampleDataset):
    """(image, text) examples for a fusion model (:mod:`llmcore.models.fusion`): the text is what the model
    learns to produce (a caption, or a question followed by its answer).

    A batch is ``{"input_ids": (B, T), "attention_mask": (B, T), key: (B, ...), "labels": (B, T)}`` with the
    texts right-padded (T = the longest text - 1) and ``labels`` the already-shifted next tokens, as every
    llmcore dataset gives them to :func:`~llmcore.training.lm_loss`: ``labels[:, t]`` is the text's token
    ``t + 1``, or ``IGNORE_INDEX`` where that token is padding or one of the first ``prompt_lengths[i]``
    tokens (a question is read, not predicted; its tokens are still inputs). So with ``[bos] + question +
    answer + [eos]`` and ``prompt_lengths[i] = 1 + len(question)``, only the answer and ``eos`` are targets.

    Args:
        inputs: (N, C, H, W) float images in [0, 1], or (N, S, d) precomputed features.
        texts: the texts, lists of token ids (e.g. ``[bos] + encode(caption) + [eos]``), at least 2 each.
        pad_id: the id written into padding.
        prompt_lengths: per text, the leading tokens that get no loss (default 0 for all).
        key: the batch key of ``inputs``, ``"images"`` or ``"features"`` (the fusion models' keywords).
        input_index: per text, the row of ``inputs`` it belongs to, so many texts (a caption and questions)
            share one stored image; default: text ``i`` belongs to ``inputs[i]`` (then N = len(texts)).
    """

    def __init__(self, inputs: torch.Tensor, texts: Sequence[Sequence[int]], pad_id: int,
                 prompt_lengths: Sequence[int] | None = None, key: str = "images",
                 input_index: Sequence[int] | None = None) -> None:
        if not texts or (input_index is None and len(inputs) != len(texts)):
            raise DataError(f"ImageTextDataset got {len(inputs)} inputs and {len(texts)} texts; give one "
                            "text per image (and at least one), or input_index= naming each text's image.")
        if key not in ("images", "features"):
            raise DataError(f"key={key!r} must be 'images' or 'features'.")
        self.inputs, self.texts, self.pad_id, self.key = inputs, [list(t) for t in texts], pad_id, key
        short = next((i for i, t in enumerate(self.texts) if len(t) < 2), None)
        if short is not None:
            raise DataError(f"text {short} has {len(self.texts[short])} token(s); each text needs at least 2 (an "
                            "input and the next token to predict), e.g. [bos] + ids.")
        self.input_index = list(range(len(texts))) if input_index is None else [int(i) for i in input_index]
        if len(self.input_index) != len(texts) or any(not 0 <= i < len(inputs) for i in self.input_index):
            raise DataError(f"input_index needs one row of inputs (0..{len(inputs) - 1}) per text; got "
                            f"{len(self.input_index)} entries for {len(texts)} texts.")
        self.prompt_lengths = list(prompt_lengths) if prompt_lengths is not None else [0] * len(texts)
        if len(self.prompt_lengths) != len(texts):
            raise DataError(f"{len(self.prompt_lengths)} prompt_lengths for {len(texts)} texts.")

    def __len__(self) -> int:
        return len(self.texts)

    def example_length(self, i: int) -> int:
        return len(self.texts[i])

    def collate(self, indices: Sequence[int], batch: Sequence[int] | None = None) -> Batch:
        every = batch if batch is not None else indices
        width = max(len(self.texts[i]) for i in every)
        labels = [[IGNORE_INDEX] * self.prompt_lengths[i] + self.texts[i][self.prompt_lengths[i]:] for i in indices]
        ids, mask, labels = collate_pad([self.texts[i] for i in indices], self.pad_id, labels=labels, width=width)
        rows = self.inputs[[self.input_index[i] for i in indices]]
        # Inputs are tokens 0..T-2, targets tokens 1..T-1 (the loss does not shift).
        return {"input_ids": ids[:, :-1], "attention_mask": mask[:, :-1], self.key: rows, "labels": labels[:, 1:]}
