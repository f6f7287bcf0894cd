"""SequenceClassifier: a pretrained TransformerLM body with a linear head over a pooled hidden state.

Transfer learning for classification (ULMFiT, GPT-1): keep the body, drop the vocabulary head, pool the
final hidden states of each sequence into one vector and map it to class logits. Pooling ``"last"`` takes
the last real token (under causal attention the only position that has seen the whole text); ``"mean"``
averages over real tokens.

The Trainer calls ``model(x)`` with no mask, so the classifier derives one from ``pad_id`` (``x != pad_id``).
Its tokenizer must therefore never produce ``pad_id`` inside a text (llmcore tokenizers never do: specials
are not produced from plain text). Pass ``attention_mask`` explicitly to override.

With LoRA the new head must train in full: ``LoRA(rank=8, modules_to_save=("head",))``. Fine-tuning
strategies see the head in the top layer group (with the body's final norm), see
:func:`llmcore.finetune.layer_groups`.

Also here: :class:`ClassificationDataset` (texts + labels → padded batches for the Trainer),
:func:`classification_loss` (the Trainer's ``loss_fn``) and :func:`evaluate` (loss and accuracy).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..data.datasets import ExampleDataset
from ..errors import CheckpointError, ConfigError, DataError
from .pretrained import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    atomic_write_json,
    load_state_dict_checked,
    read_json,
    read_state_dict,
    save_safetensors,
    tied_duplicates,
)
from .transformer import TransformerLM

POOLINGS = ("last", "mean")


class SequenceClassifier(nn.Module):
    """``forward(input_ids (B, T), attention_mask=None) -> logits (B, num_classes)``.

    Args:
        body: a :class:`TransformerLM` (used in place; its ``lm_head`` is replaced by ``nn.Identity`` since a
            classifier never computes vocabulary logits; a tied head's matrix stays as the embedding), or a
            :class:`ModelConfig` for a fresh, randomly initialised body (training from scratch).
        num_classes: number of classes (>= 2).
        pooling: ``"last"`` (last real token) or ``"mean"`` (mean over real tokens).
        pad_id: the padding id the mask is derived from when no ``attention_mask`` is given; None = no padding.
        dropout: dropout on the pooled vector before the head.
    """

    def __init__(self, body: TransformerLM | ModelConfig, num_classes: int, pooling: str = "last",
                 pad_id: int | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        if isinstance(body, ModelConfig):
            body = TransformerLM(body)
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ConfigError(f"SequenceClassifier(num_classes={num_classes!r}) must be an integer >= 2.")
        if pooling not in POOLINGS:
            raise ConfigError(f"SequenceClassifier(pooling={pooling!r}) is unknown; allowed: {', '.join(POOLINGS)}.")
        self.config = body.config
        self.num_classes, self.pooling, self.pad_id = num_classes, pooling, pad_id
        body.lm_head = nn.Identity()
        self.body = body
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(body.config.d_model, num_classes)
        nn.init.normal_(self.head.weight, std=body.config.init_std)
        nn.init.zeros_(self.head.bias)

    @classmethod
    def from_lm(cls, lm: TransformerLM, num_classes: int, pooling: str = "last", pad_id: int | None = None,
                dropout: float = 0.0, copy_body: bool = True) -> SequenceClassifier:
        """A classifier on a pretrained LM; the LM is deep-copied unless ``copy_body=False``."""
        return cls(copy.deepcopy(lm) if copy_body else lm, num_classes, pooling, pad_id, dropout)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Class logits (B, num_classes); ``attention_mask`` (B, T) is 1 on real tokens (default: ids != pad_id)."""
        if attention_mask is None and self.pad_id is not None:
            attention_mask = (input_ids != self.pad_id).long()
        if attention_mask is not None and bool(attention_mask.all()):
            attention_mask = None  # no padding: the fused causal path, nothing materialised
        h = self.body.forward_hidden(input_ids, attention_mask)  # (B, T, D)
        B, T, _ = h.shape
        if attention_mask is None:
            pooled = h[:, -1] if self.pooling == "last" else h.mean(1)
        else:
            m = attention_mask.to(h.dtype)  # (B, T)
            if bool((m.sum(1) == 0).any()):
                raise DataError("A sequence in the batch is all padding; every text needs at least one token.")
            if self.pooling == "last":  # works for left and right padding alike
                last = (m * torch.arange(1, T + 1, device=h.device, dtype=h.dtype)).argmax(1)  # (B,)
                pooled = h[torch.arange(B, device=h.device), last]
            else:
                pooled = (h * m[..., None]).sum(1) / m.sum(1, keepdim=True)
        return self.head(self.dropout(pooled))  # (B, num_classes)

    # ------------------------------------------------------------------ save / load
    def save_pretrained(self, directory: str | Path, tokenizer: Any = None) -> Path:
        """``config.json`` (body config + classifier settings) and ``model.safetensors``."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        dups = tied_duplicates(self)
        state = {k: v for k, v in self.state_dict().items() if k not in dups}
        save_safetensors(state, d / WEIGHTS_NAME, metadata={"format": "pt"})
        atomic_write_json(d / CONFIG_NAME, {
            "format": "llmcore", "architecture": type(self).__name__, "config": self.config.to_dict(),
            "classifier": {"num_classes": self.num_classes, "pooling": self.pooling, "pad_id": self.pad_id,
                           "dropout": self.dropout.p}})
        if tokenizer is not None:
            tokenizer.save(d / "tokenizer")
        return d

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> SequenceClassifier:
        d = Path(directory)
        meta = read_json(d / CONFIG_NAME)
        if meta.get("architecture") != cls.__name__ or "classifier" not in meta:
            raise CheckpointError(f"{d} holds a {meta.get('architecture')!r}, not a {cls.__name__}; for a language "
                                  f"model use SequenceClassifier.from_lm(TransformerLM.from_pretrained(dir), n).")
        model = cls(ModelConfig.from_dict(meta["config"]), **meta["classifier"])
        load_state_dict_checked(model, read_state_dict(d), source=str(d / WEIGHTS_NAME))
        return model.to(device)


# ---------------------------------------------------------------------------------------------- data
class ClassificationDataset(ExampleDataset):
    """Texts and class labels as right-padded batches: ``(x (B, T), y (B,))``.

    Args:
        texts: the inputs.
        labels: class ids (ints in ``[0, num_classes)``) or class names (mapped to ids in sorted order unless
            ``label_names`` fixes the order).
        tokenizer: encodes each text (with ``<bos>`` when ``add_bos`` and the tokenizer has one).
        max_len: longer texts keep their first ``max_len`` tokens (documented truncation, not an error).
        label_names: the class names in id order.
    """

    def __init__(self, texts: Sequence[str], labels: Sequence[int | str], tokenizer: Any, max_len: int = 128,
                 label_names: Sequence[str] | None = None, add_bos: bool = True) -> None:
        if len(texts) != len(labels):
            raise DataError(f"{len(texts)} texts but {len(labels)} labels; give one label per text.")
        if not texts:
            raise DataError("ClassificationDataset got no texts.")
        if isinstance(labels[0], str) or label_names is not None:
            names = list(label_names) if label_names is not None else sorted(set(map(str, labels)))
            unknown = sorted(set(map(str, labels)) - set(names))
            if unknown:
                raise DataError(f"Labels {unknown[:5]} are not in label_names {names}.")
            self.label_names = names
            self.y = [names.index(str(lb)) for lb in labels]
        else:
            self.y = [int(lb) for lb in labels]
            self.label_names = [str(i) for i in range(max(self.y) + 1)]
            if min(self.y) < 0:
                raise DataError(f"Class id {min(self.y)} is negative; class ids are 0 .. num_classes-1.")
        pad = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id
        if pad is None:
            raise DataError("The tokenizer has neither <pad> nor <eos>; classification batches need a pad id.")
        self.pad_id = int(pad)
        bos = [tokenizer.bos_id] if add_bos and tokenizer.bos_id is not None else []
        self.ids = [(bos + list(tokenizer.encode(t)))[:max_len] for t in texts]
        empty = next((i for i, s in enumerate(self.ids) if not s), None)
        if empty is not None:
            raise DataError(f"Text {empty} encodes to no tokens; remove empty texts.")

    @property
    def num_tokens(self) -> int:
        """Real tokens in the set: the Trainer counts epochs in tokens (padding makes them come a bit early)."""
        return sum(map(len, self.ids))

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def __len__(self) -> int:
        return len(self.ids)

    def example_length(self, i: int) -> int:
        return len(self.ids[i])

    def collate(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        from ..data.datasets import collate_pad  # models do not import data at module level

        x, _ = collate_pad([self.ids[i] for i in indices], self.pad_id, "right")  # (B, T), right-padded
        return x, torch.tensor([self.y[i] for i in indices], dtype=torch.long)  # (B, T), (B,)

def classification_loss(logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of class logits (B, C) against class ids (B,): the Trainer's ``loss_fn`` for classifiers.

    ``reduction="sum"`` (what the Trainer asks for) returns the sum over examples; the Trainer divides by the
    number of labels in the global batch, i.e. the batch size, since class ids are never -100.
    """
    if reduction not in ("mean", "sum"):
        raise ConfigError(f"classification_loss reduction={reduction!r} is unknown; use 'mean' or 'sum'.")
    if logits.dim() != 2 or y.dim() != 1:
        raise DataError(f"classification_loss expects logits (B, C) and labels (B,); got {tuple(logits.shape)} "
                        f"and {tuple(y.shape)}. For language modelling use training.lm_loss.")
    return F.cross_entropy(logits.float(), y, reduction=reduction)


@torch.no_grad()
def evaluate(model: nn.Module, data: Any, batch_size: int = 32, max_batches: int | None = None) -> dict[str, float]:
    """``{"loss", "accuracy", "n"}`` of a classifier over ``data.iter_eval`` (example-weighted)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    loss_sum, correct, n = 0.0, 0, 0
    for x, y in data.iter_eval(batch_size, max_batches):
        x, y = x.to(device), y.to(device)
        logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").item()
        correct += int((logits.argmax(-1) == y).sum())
        n += len(y)
    model.train(was_training)
    if n == 0:
        raise DataError("evaluate() got no examples.")
    return {"loss": loss_sum / n, "accuracy": correct / n, "n": float(n)}
