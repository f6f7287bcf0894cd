"""Models: decoder-only TransformerLM, encoder-decoder Seq2SeqTransformer, the LSTMLM baseline and a
SequenceClassifier head for transfer to classification."""

from .classifier import SequenceClassifier
from .lstm import LSTMLM, LSTMState
from .pretrained import PreTrainedMixin
from .seq2seq import Seq2SeqCache, Seq2SeqConfig, Seq2SeqTransformer, shift_targets
from .transformer import TransformerLM

__all__ = [
    "PreTrainedMixin", "TransformerLM", "Seq2SeqTransformer", "Seq2SeqConfig", "Seq2SeqCache",
    "shift_targets", "LSTMLM", "LSTMState", "SequenceClassifier",
]
