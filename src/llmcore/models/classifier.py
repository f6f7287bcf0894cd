"""SequenceClassifier: a pretrained TransformerLM body with a linear head over a pooled hidden state.

Transfer learning for classification (ULMFiT, GPT-1): keep the body, drop the vocabulary head, pool the
final hidden states of each sequence into one vector and map it to class logits. Pooling ``"last"`` takes
the last real token (under causal attention the only position that has seen the whole text); ``"mean"``
averages over real tokens.

The mask comes from the batch (``attention_mask``, 1 on real tokens), never guessed from a pad id:
:class:`llmcore.finetune.ClassificationDataset` batches carry it, and the Trainer passes it as a keyword.

With LoRA the new head must train in full: ``LoRA(rank=8, modules_to_save=("head",))``. Fine-tuning
strategies see the head in the top layer group (with the body's final norm), see
:func:`llmcore.finetune.layer_groups`.

The classifier settings (``num_classes``, ``pooling``, ``classifier_dropout``) extend the body's config in
:class:`ClassifierConfig`, so ``save_pretrained`` / ``from_pretrained`` are the shared :class:`PreTrainedMixin`
ones. The data side (:class:`~llmcore.finetune.ClassificationDataset`, ``classification_loss``, ``evaluate``)
lives in :mod:`llmcore.finetune.classification`: models import nothing above them.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..config import ModelConfig, check_field, is_int, is_number
from ..errors import ConfigError
from .pretrained import PreTrainedMixin
from .transformer import TransformerLM

POOLINGS = ("last", "mean")


@dataclass
class ClassifierConfig(ModelConfig):
    """A body :class:`ModelConfig` plus the classifier head's settings."""

    num_classes: int = 2
    pooling: str = "last"
    classifier_dropout: float = 0.0  # on the pooled vector, before the head

    def __post_init__(self) -> None:
        super().__post_init__()
        check_field(self, "num_classes", lambda v: is_int(v, 2), "an integer >= 2")
        check_field(self, "pooling", lambda v: v in POOLINGS, f"one of {', '.join(POOLINGS)}")
        check_field(self, "classifier_dropout", lambda v: is_number(v) and 0.0 <= v < 1.0, "in [0, 1)")

    def body_config(self) -> ModelConfig:
        """The plain :class:`ModelConfig` of the body (without the head's fields)."""
        names = {f.name for f in dataclasses.fields(ModelConfig)}
        return ModelConfig.from_dict({k: v for k, v in self.to_dict().items() if k in names})


class SequenceClassifier(PreTrainedMixin, nn.Module):
    """``forward(input_ids (B, T), attention_mask=None) -> logits (B, num_classes)``.

    Args:
        body: a :class:`TransformerLM` (used in place; its ``lm_head`` is replaced by ``nn.Identity`` since a
            classifier never computes vocabulary logits; a tied head's matrix stays as the embedding), a
            :class:`ModelConfig` for a fresh, randomly initialised body (training from scratch), or a
            :class:`ClassifierConfig` (what ``from_pretrained`` passes; the other arguments then come from it).
        num_classes: number of classes (>= 2).
        pooling: ``"last"`` (last real token) or ``"mean"`` (mean over real tokens).
        dropout: dropout on the pooled vector before the head.
    """

    config_cls = ClassifierConfig

    def __init__(self, body: TransformerLM | ModelConfig, num_classes: int | None = None, pooling: str | None = None,
                 dropout: float | None = None) -> None:
        super().__init__()
        given = body if isinstance(body, ClassifierConfig) else None
        base = body.config if isinstance(body, nn.Module) else body
        if given is not None and (num_classes, pooling, dropout) != (None, None, None):
            raise ConfigError("SequenceClassifier(ClassifierConfig, ...) takes its settings from the config; "
                              "pass num_classes / pooling / dropout either there or here, not both.")
        if given is None:
            if num_classes is None:
                raise ConfigError("SequenceClassifier needs num_classes (an integer >= 2).")
            fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(ModelConfig)}
            given = ClassifierConfig(**fields, num_classes=num_classes, pooling=pooling or "last",
                                     classifier_dropout=dropout or 0.0)
        if not isinstance(body, nn.Module):
            body = TransformerLM(given.body_config())
        self.config = given
        self.num_classes, self.pooling = given.num_classes, given.pooling
        body.lm_head = nn.Identity()
        self.body = body
        self.dropout = nn.Dropout(given.classifier_dropout)
        self.head = nn.Linear(given.d_model, given.num_classes)
        nn.init.normal_(self.head.weight, std=given.init_std)
        nn.init.zeros_(self.head.bias)

    @classmethod
    def from_lm(cls, lm: TransformerLM, num_classes: int, pooling: str = "last", dropout: float = 0.0,
                copy_body: bool = True) -> SequenceClassifier:
        """A classifier on a pretrained LM; the LM is deep-copied unless ``copy_body=False``."""
        return cls(copy.deepcopy(lm) if copy_body else lm, num_classes, pooling, dropout)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Class logits (B, num_classes); ``attention_mask`` (B, T) is 1 on real tokens (None = no padding).

        No host sync: the mask is used as given (every row needs at least one real token; the dataset checks).
        """
        h = self.body.forward_hidden(input_ids, attention_mask)  # (B, T, D)
        B, T, _ = h.shape
        if attention_mask is None:
            pooled = h[:, -1] if self.pooling == "last" else h.mean(1)
        else:
            m = attention_mask.to(h.dtype)  # (B, T)
            if self.pooling == "last":  # works for left and right padding alike
                # In integers: bf16 counts exactly only to 256, so positions past it would tie and argmax
                # would pick an earlier token.
                pos = torch.arange(1, T + 1, device=h.device)  # (T,)
                last = (attention_mask.ne(0).long() * pos).argmax(1)  # (B,)
                pooled = h[torch.arange(B, device=h.device), last]
            else:
                pooled = (h * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp(min=1)
        return self.head(self.dropout(pooled))  # (B, num_classes)

    @classmethod
    def config_from_meta(cls, meta: dict[str, Any]) -> ClassifierConfig:
        """Also reads directories saved before :class:`ClassifierConfig`: the body config plus a
        ``"classifier"`` section (``num_classes``, ``pooling``, ``dropout``) beside it in ``config.json``."""
        legacy = meta.get("classifier")
        if legacy is None:
            return super().config_from_meta(meta)
        return ClassifierConfig.from_dict({**meta["config"], "num_classes": legacy["num_classes"],
                                           "pooling": legacy.get("pooling", "last"),
                                           "classifier_dropout": legacy.get("dropout", 0.0)})


__all__ = ["ClassifierConfig", "SequenceClassifier", "POOLINGS"]
