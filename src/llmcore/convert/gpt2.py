"""GPT-2 <-> llmcore: config fields and tensor names of Hugging Face ``GPT2LMHeadModel``.

GPT-2 stores its linear layers as ``Conv1D`` with weights shaped (in, out), the transpose of ``nn.Linear``,
so every projection is transposed on the way in and out (nanoGPT ``model.py`` ``from_pretrained`` does the
same). The fused ``c_attn`` holds [q; k; v] in the same order as our ``qkv_proj``. The causal-mask buffers
``attn.bias`` / ``attn.masked_bias`` of older checkpoints carry no information and are skipped.

Exporting accepts a GPT-2-shaped llmcore config (learned positions, LayerNorm, GELU/ReLU, full multi-head
attention). A config without biases is written with zero biases, which computes the same function.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Any

import torch

from ..config import ModelConfig
from ..errors import CheckpointError
from .common import (
    StateReader,
    export_common,
    export_dropout,
    layout_problems,
    llmcore_reader,
    number,
    provenance,
    require,
    zeros_like_rows,
)

MODEL_TYPES = ("gpt2",)
IGNORED = (r"\.attn\.bias$", r"\.attn\.masked_bias$")
ACT_FROM_HF = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}
ACT_TO_HF = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}
# Per layer: (our name, HF Conv1D name) for the four projections; the HF weight is the transpose of ours.
PROJECTIONS = (("attn.qkv_proj", "attn.c_attn"), ("attn.out_proj", "attn.c_proj"),
               ("mlp.up_proj", "mlp.c_fc"), ("mlp.down_proj", "mlp.c_proj"))
NORMS = (("attn_norm", "ln_1"), ("mlp_norm", "ln_2"))


def config_from_hf(cfg: Mapping[str, Any]) -> ModelConfig:
    """ModelConfig for a HF GPT-2 config dict."""
    unsupported = {"scale_attn_by_inverse_layer_idx": True, "scale_attn_weights": False, "add_cross_attention": True}
    for key, bad in unsupported.items():
        if cfg.get(key, not bad) == bad:
            raise CheckpointError(f"GPT-2 config has {key}={bad}, which llmcore does not implement; "
                                  "only the standard GPT-2 attention converts exactly.")
    act = cfg.get("activation_function", "gelu_new")
    if act not in ACT_FROM_HF:
        raise CheckpointError(f"GPT-2 activation_function={act!r} is not supported; "
                              f"llmcore converts {sorted(ACT_FROM_HF)}.")
    d = require(cfg, "n_embd", "gpt2")
    return ModelConfig(
        vocab_size=require(cfg, "vocab_size", "gpt2"),
        max_seq_len=require(cfg, "n_positions", "gpt2"),
        d_model=d,
        n_layers=require(cfg, "n_layer", "gpt2"),
        n_heads=require(cfg, "n_head", "gpt2"),
        d_ff=cfg.get("n_inner") or 4 * d,
        pos_encoding="learned",
        norm="layernorm",
        norm_eps=number(cfg, "layer_norm_epsilon", 1e-5, "gpt2"),
        activation=ACT_FROM_HF[act],
        bias=True,
        tie_embeddings=cfg.get("tie_word_embeddings", True),
        init_std=cfg.get("initializer_range", 0.02),
        extra=provenance(cfg, "gpt2", hf_dropout=cfg.get("resid_pdrop", 0.1)),
    )


def from_hf(cfg: Mapping[str, Any], hf_state: Mapping[str, torch.Tensor],
            out: MutableMapping[str, torch.Tensor] | None = None) -> tuple[ModelConfig, MutableMapping]:
    """(ModelConfig, llmcore state dict) for a GPT-2 config dict and state dict (with or without ``transformer.``);
    the tensors go into ``out`` when given (e.g. :class:`llmcore.io.IntoModel`), else into a new dict."""
    config = config_from_hf(cfg)
    D, F, V = config.d_model, config.d_ff, config.vocab_size
    p = "transformer." if any(k.startswith("transformer.") for k in hf_state) else ""
    ignore = list(IGNORED) + ([r"^lm_head\.weight$"] if config.tie_embeddings else [])  # HF re-ties it
    r = StateReader(hf_state, "Hugging Face gpt2 checkpoint", ignore=ignore)
    shapes = {"attn.qkv_proj": (D, 3 * D), "attn.out_proj": (D, D), "mlp.up_proj": (D, F), "mlp.down_proj": (F, D)}
    out = {} if out is None else out
    out["tok_embeddings.weight"] = r.take(f"{p}wte.weight", V, D)
    out["pos_embeddings.weight"] = r.take(f"{p}wpe.weight", config.max_seq_len, D)
    for i in range(config.n_layers):
        h = f"{p}h.{i}."
        for ours, theirs in NORMS:
            out[f"blocks.{i}.{ours}.weight"] = r.take(f"{h}{theirs}.weight", D)
            out[f"blocks.{i}.{ours}.bias"] = r.take(f"{h}{theirs}.bias", D)
        for ours, theirs in PROJECTIONS:
            n_in, n_out = shapes[ours]
            out[f"blocks.{i}.{ours}.weight"] = r.take(f"{h}{theirs}.weight", n_in, n_out).t().contiguous()
            out[f"blocks.{i}.{ours}.bias"] = r.take(f"{h}{theirs}.bias", n_out)
    out["final_norm.weight"] = r.take(f"{p}ln_f.weight", D)
    out["final_norm.bias"] = r.take(f"{p}ln_f.bias", D)
    if not config.tie_embeddings:
        out["lm_head.weight"] = r.take("lm_head.weight", V, D)
    r.finish("Check that config.json belongs to these weights (n_embd, n_layer, n_inner, vocab_size).")
    return config, out


def export_problems(config: ModelConfig) -> list[str]:
    """Why ``config`` cannot be written as GPT-2 (empty when it can)."""
    problems = layout_problems(config, "GPT-2", {"pos_encoding": "learned", "norm": "layernorm",
                                                 "activation": sorted(ACT_TO_HF), "attention": "default"})
    if config.n_kv_heads != config.n_heads:
        problems.append(f"n_kv_heads={config.n_kv_heads} != n_heads={config.n_heads} (GPT-2 has no GQA)")
    return problems


def to_hf(config: ModelConfig, state: Mapping[str, torch.Tensor]) -> tuple[dict[str, Any], dict]:
    """(HF GPT-2 config dict, HF state dict) for a GPT-2-shaped llmcore model."""
    D, F, V = config.d_model, config.d_ff, config.vocab_size
    r = llmcore_reader(config, state)
    shapes = {"attn.qkv_proj": (3 * D, D), "attn.out_proj": (D, D), "mlp.up_proj": (F, D), "mlp.down_proj": (D, F)}

    def bias(name: str, weight: torch.Tensor) -> torch.Tensor:  # GPT-2 always has biases: zeros if we have none
        return r.take(name, weight.shape[0]) if config.bias else zeros_like_rows(weight)

    out = {"transformer.wte.weight": r.take("tok_embeddings.weight", V, D),
           "transformer.wpe.weight": r.take("pos_embeddings.weight", config.max_seq_len, D)}
    for i in range(config.n_layers):
        h, b = f"transformer.h.{i}.", f"blocks.{i}."
        for ours, theirs in NORMS:
            w = r.take(f"{b}{ours}.weight", D)
            out[f"{h}{theirs}.weight"], out[f"{h}{theirs}.bias"] = w, bias(f"{b}{ours}.bias", w)
        for ours, theirs in PROJECTIONS:
            w = r.take(f"{b}{ours}.weight", *shapes[ours])
            out[f"{h}{theirs}.weight"] = w.t().contiguous()  # Linear (out, in) -> Conv1D (in, out)
            out[f"{h}{theirs}.bias"] = bias(f"{b}{ours}.bias", w)
    w = r.take("final_norm.weight", D)
    out["transformer.ln_f.weight"], out["transformer.ln_f.bias"] = w, bias("final_norm.bias", w)
    if not config.tie_embeddings:
        out["lm_head.weight"] = r.take("lm_head.weight", V, D)
    r.finish("The state dict does not belong to this config.")
    hf = export_common(config, out, "gpt2", "GPT2LMHeadModel")
    hf.update({
        "n_positions": config.max_seq_len, "n_embd": D, "n_layer": config.n_layers, "n_head": config.n_heads,
        "n_inner": F, "activation_function": ACT_TO_HF[config.activation], "layer_norm_epsilon": config.norm_eps,
    })
    hf.update(dict.fromkeys(("resid_pdrop", "embd_pdrop", "attn_pdrop"), export_dropout(config)))
    return hf, out
