"""Models: decoder-only TransformerLM, encoder-decoder Seq2SeqTransformer, the LSTMLM baseline and a
SequenceClassifier head for transfer to classification."""

from .classifier import SequenceClassifier
from .lstm import LSTMLM
from .pretrained import PreTrainedMixin
from .seq2seq import Seq2SeqTransformer
from .transformer import TransformerLM

__all__ = ["PreTrainedMixin", "TransformerLM", "Seq2SeqTransformer", "LSTMLM", "SequenceClassifier"]
