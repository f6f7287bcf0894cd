"""Multimodal parts: encoders that turn another modality into features, and offline image-text data.

- :mod:`.encoders` — :class:`ModalityEncoder` (the protocol: ``encoder(inputs) -> (B, N, d_enc)`` with
  ``feature_dim`` and ``num_features``), :class:`VisionEncoder` (a small ViT from llmcore's encoder blocks,
  configured by :class:`VisionConfig`), :class:`PrecomputedFeatures` (features from any other encoder,
  computed offline), :func:`images_to_tensor` (uint8 (B, H, W, C) → float (B, C, H, W) in [0, 1]) and
  :func:`check_images`.
- :mod:`.images` — :func:`load_image` (``.npy``; PNG / JPEG with the optional ``vision`` extra, Pillow) and
  :func:`load_features` (``.npy`` / ``.safetensors``).
- :mod:`.shapes` — a deterministic generator of coloured-shape images with captions and questions
  (:func:`make_shapes_dataset`), colour-shape pairs held out of training (:data:`HELD_OUT`), the caption
  parser and the metrics: :func:`caption_exact_match`, :func:`attribute_accuracy`, :func:`qa_accuracy`, and
  the majority-answer baseline (:func:`majority_answers`).

The fusion models that put these features into a language model (prefix, gated cross-attention) are in
:mod:`llmcore.models.fusion`; ``docs/concepts/multimodal.md`` compares them, and
``examples/multimodal_shapes.py`` trains both on the shapes data.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

if TYPE_CHECKING:  # the public names, imported on first use (llmcore.lazy): importing the package loads no torch
    from .encoders import (
        ModalityEncoder,
        PrecomputedFeatures,
        VisionConfig,
        VisionEncoder,
        check_images,
        images_to_tensor,
    )
    from .images import load_features, load_image
    from .shapes import (
        COLOURS,
        HELD_OUT,
        POSITIONS,
        QA,
        QUESTION_KINDS,
        SHAPES,
        SIZES,
        ShapeExample,
        ShapeObject,
        all_questions,
        attribute_accuracy,
        caption_exact_match,
        caption_of,
        draw_scene,
        majority_answers,
        majority_predictions,
        make_shapes_dataset,
        parse_caption,
        qa_accuracy,
        split_of,
    )

__all__ = [
    "ModalityEncoder", "VisionConfig", "VisionEncoder", "PrecomputedFeatures", "images_to_tensor", "check_images",
    "load_image", "load_features",
    "make_shapes_dataset", "ShapeExample", "ShapeObject", "QA", "draw_scene", "caption_of", "parse_caption",
    "split_of", "COLOURS", "SHAPES", "SIZES", "POSITIONS", "HELD_OUT", "QUESTION_KINDS",
    "caption_exact_match", "attribute_accuracy", "qa_accuracy", "all_questions", "majority_answers",
    "majority_predictions",
]

__getattr__, __dir__ = lazy_exports(__name__, __file__)
