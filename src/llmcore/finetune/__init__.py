"""Fine-tuning: strategies the Trainer calls (freezing, gradual unfreezing, discriminative and slanted
triangular learning rates, LoRA) and prompt-masked pair data for supervised fine-tuning.

    from llmcore.finetune import Freeze, GradualUnfreeze, DiscriminativeLR, LoRA, ulmfit
    Trainer(model, config, data, strategies=[Freeze(first_n_blocks=2, embeddings=True)]).fit()
    Trainer(model, config, data, strategies=ulmfit(every_n_steps=50)).fit()
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

if TYPE_CHECKING:  # the public names, imported on first use (llmcore.lazy): importing the package loads no torch
    from .classification import ClassificationDataset, classification_loss
    from .lora import (
        LoRA,
        LoRALinear,
        adapter_state_dict,
        is_adapter_dir,
        load_adapter,
        load_adapter_model,
        lora_modules,
        merge_adapter,
        merge_and_unload,
        merge_lora,
        save_adapter,
        unmerge_lora,
    )
    from .pairs import TEMPLATES, PairDataset, read_pairs
    from .strategies import (
        DiscriminativeLR,
        Freeze,
        Full,
        GradualUnfreeze,
        SlantedTriangular,
        Strategy,
        as_strategies,
        count_parameters,
        layer_groups,
        set_trainable,
        slanted_triangular,
        ulmfit,
    )

__all__ = [
    "ClassificationDataset",
    "classification_loss",
    "Strategy",
    "Full",
    "Freeze",
    "GradualUnfreeze",
    "DiscriminativeLR",
    "SlantedTriangular",
    "ulmfit",
    "slanted_triangular",
    "set_trainable",
    "layer_groups",
    "count_parameters",
    "as_strategies",
    "LoRA",
    "LoRALinear",
    "lora_modules",
    "merge_lora",
    "unmerge_lora",
    "merge_and_unload",
    "adapter_state_dict",
    "save_adapter",
    "load_adapter",
    "is_adapter_dir",
    "load_adapter_model",
    "merge_adapter",
    "PairDataset",
    "read_pairs",
    "TEMPLATES",
]

__getattr__, __dir__ = lazy_exports(__name__, __file__)
