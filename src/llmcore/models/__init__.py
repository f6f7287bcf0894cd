"""Models: decoder-only TransformerLM, encoder-decoder Seq2SeqTransformer, the LSTMLM baseline and a
SequenceClassifier head for transfer to classification, and the multimodal fusion models (PrefixFusionLM,
CrossAttentionFusionLM: image features into a TransformerLM; :mod:`.fusion`).

Every built-in class is registered in ``llmcore.registry.ARCHITECTURES`` under its class name; register your
own with :func:`register_architecture` and load any saved model with :func:`load_model`::

    @register_architecture
    class ParallelLM(TransformerLM):
        block_cls = ParallelBlock

    model = load_model("runs/parallel")  # a ParallelLM, in eval mode
"""

from ..registry import ARCHITECTURES
from .classifier import SequenceClassifier
from .fusion import CrossAttentionFusionLM, FusionConfig, PrefixFusionLM
from .lstm import LSTMLM, LSTMState
from .pretrained import PreTrainedMixin, architecture_name, load_model, register_architecture
from .seq2seq import Seq2SeqCache, Seq2SeqConfig, Seq2SeqTransformer, shift_targets
from .transformer import TransformerLM

ARCHITECTURES.register("SequenceClassifier", SequenceClassifier)  # defined with the finetuning heads

__all__ = [
    "PreTrainedMixin", "TransformerLM", "Seq2SeqTransformer", "Seq2SeqConfig", "Seq2SeqCache",
    "shift_targets", "LSTMLM", "LSTMState", "SequenceClassifier",
    "FusionConfig", "PrefixFusionLM", "CrossAttentionFusionLM",
    "ARCHITECTURES", "register_architecture", "architecture_name", "load_model",
]
