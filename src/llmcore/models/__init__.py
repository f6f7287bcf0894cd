"""Models: decoder-only TransformerLM (more architectures join here)."""

from .pretrained import PreTrainedMixin
from .transformer import TransformerLM

__all__ = ["PreTrainedMixin", "TransformerLM"]
