"""Weight conversion between llmcore and Hugging Face checkpoints (GPT-2, Llama, Mistral, Qwen2).

Pure state-dict mappings (:func:`hf_to_llmcore`, :func:`llmcore_to_hf`) plus directory helpers. This package
never imports ``transformers``: it reads and writes ``config.json`` and safetensors files directly.

    model = from_hf(hf_model.config.to_dict(), hf_model.state_dict())   # an HF model already in memory
    model = TransformerLM.from_pretrained("path/to/hf_dir")             # an HF directory (uses load_hf)
    model.save_pretrained("out", format="hf")                           # loadable by transformers
"""

from .hf import SUPPORTED_MODEL_TYPES, from_hf, hf_to_llmcore, llmcore_to_hf, load_hf, save_hf

__all__ = ["SUPPORTED_MODEL_TYPES", "from_hf", "hf_to_llmcore", "llmcore_to_hf", "load_hf", "save_hf"]
