"""Llama family (llama, mistral, qwen2) <-> llmcore: config fields and tensor names.

All three share one layout: ``model.layers.{i}.self_attn.{q,k,v,o}_proj``, ``mlp.{gate,up,down}_proj``,
``input_layernorm`` / ``post_attention_layernorm`` (RMSNorm), ``model.norm`` and ``lm_head``. Separate
q/k/v projections are concatenated into our fused ``qkv_proj`` (rows [q; k; v]). HF checkpoints already
use the half-split RoPE layout that :mod:`llmcore.modules.positional` implements, so no permutation.

The families differ only in which linear layers carry a bias: Llama has ``attention_bias`` (q, k, v, o) and
``mlp_bias`` flags, Qwen2 biases q, k, v only, Mistral none. llmcore has one ``bias`` switch, so a bias one
side lacks becomes a zero bias on the other: the same function either way. Mistral's sliding window is
exact for sequences no longer than the window, so ``max_seq_len`` is capped there.

Not supported (CheckpointError): RoPE scaling (``rope_scaling`` / non-default ``rope_parameters``),
partial rotary, a ``head_dim`` other than hidden_size / num_attention_heads, activations other than SiLU.
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
    is_zero,
    layout_problems,
    llmcore_reader,
    number,
    provenance,
    require,
    zeros_like_rows,
)

MODEL_TYPES = ("llama", "mistral", "qwen2")
ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
IGNORED = (r"rotary_emb\.(original_)?inv_freq$",)
MLP = ("gate_proj", "up_proj", "down_proj")


def _bias_layout(model_type: str, cfg: Mapping[str, Any]) -> tuple[bool, bool, bool]:
    """Which HF linears have a bias: (q/k/v, o, mlp)."""
    if model_type == "qwen2":
        return True, False, False
    if model_type == "mistral":
        return False, False, False
    attn = bool(cfg.get("attention_bias", False))
    return attn, attn, bool(cfg.get("mlp_bias", False))


def _rope_theta(cfg: Mapping[str, Any], model_type: str) -> float:
    """rope_theta from a transformers 4.x (``rope_theta`` + ``rope_scaling``) or 5.x (``rope_parameters``) config."""
    params = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or {}
    for what, d in (("rope_parameters", params), ("rope_scaling", scaling)):
        if not isinstance(d, Mapping):
            raise CheckpointError(f"{model_type} config has {what}={d!r}; expected an object (or null).")
        kind = d.get("rope_type", d.get("type", "default"))
        if kind != "default":
            raise CheckpointError(
                f"{model_type} config has {what}={dict(d)}: RoPE scaling ({kind!r}) is not supported; llmcore "
                "implements plain RoPE only. Use a checkpoint without rope scaling.")
    partial = params.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0))
    if partial != 1.0:
        raise CheckpointError(f"{model_type} config has partial_rotary_factor={partial}; llmcore rotates whole heads.")
    return float(params.get("rope_theta", cfg.get("rope_theta", 10000.0)))


def config_from_hf(cfg: Mapping[str, Any]) -> ModelConfig:
    """ModelConfig for a HF Llama / Mistral / Qwen2 config dict."""
    mt = cfg["model_type"]
    act = cfg.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise CheckpointError(f"{mt} hidden_act={act!r} is not supported; llmcore's SwiGLU uses SiLU.")
    d, heads = require(cfg, "hidden_size", mt), require(cfg, "num_attention_heads", mt)
    head_dim = cfg.get("head_dim") or d // heads
    if d % heads or head_dim != d // heads:
        raise CheckpointError(f"{mt} config has head_dim={head_dim} with hidden_size={d} and {heads} heads; "
                              "llmcore needs head_dim == hidden_size / num_attention_heads.")
    max_pos = require(cfg, "max_position_embeddings", mt)
    window = cfg.get("sliding_window") if (mt == "mistral" or cfg.get("use_sliding_window")) else None
    capped = window is not None and window < max_pos  # full attention equals the window up to its length
    return ModelConfig(
        vocab_size=require(cfg, "vocab_size", mt),
        max_seq_len=window if capped else max_pos,
        d_model=d,
        n_layers=require(cfg, "num_hidden_layers", mt),
        n_heads=heads,
        n_kv_heads=cfg.get("num_key_value_heads") or heads,
        d_ff=require(cfg, "intermediate_size", mt),
        pos_encoding="rope",
        rope_theta=_rope_theta(cfg, mt),
        norm="rmsnorm",
        norm_eps=number(cfg, "rms_norm_eps", 1e-6, mt),
        activation="swiglu",
        bias=any(_bias_layout(mt, cfg)),
        tie_embeddings=cfg.get("tie_word_embeddings", False),
        init_std=cfg.get("initializer_range", 0.02),
        extra=provenance(cfg, mt, hf_sliding_window=window, hf_max_position_embeddings=max_pos if capped else None,
                         hf_dropout=cfg.get("attention_dropout") or None),
    )


def from_hf(cfg: Mapping[str, Any], hf_state: Mapping[str, torch.Tensor],
            out: MutableMapping[str, torch.Tensor] | None = None) -> tuple[ModelConfig, MutableMapping]:
    """(ModelConfig, llmcore state dict) for a Llama-family config dict and state dict; the tensors go into
    ``out`` when given (e.g. :class:`llmcore.io.IntoModel`), else into a new dict."""
    config = config_from_hf(cfg)
    qkv_bias, o_bias, mlp_bias = _bias_layout(cfg["model_type"], cfg)
    D, F, V, hd = config.d_model, config.d_ff, config.vocab_size, config.head_dim
    q_dim, kv_dim = config.n_heads * hd, config.n_kv_heads * hd
    p = "model." if any(k.startswith("model.") for k in hf_state) else ""
    ignore = list(IGNORED) + ([r"^lm_head\.weight$"] if config.tie_embeddings else [])
    r = StateReader(hf_state, f"Hugging Face {cfg['model_type']} checkpoint", ignore=ignore)

    def linear(ours: str, theirs: str, n_out: int, n_in: int, has_bias: bool) -> None:
        w = out[f"{ours}.weight"] = r.take(f"{theirs}.weight", n_out, n_in)
        if has_bias:
            out[f"{ours}.bias"] = r.take(f"{theirs}.bias", n_out)
        elif config.bias:
            out[f"{ours}.bias"] = zeros_like_rows(w)

    out = {} if out is None else out
    out["tok_embeddings.weight"] = r.take(f"{p}embed_tokens.weight", V, D)
    for i in range(config.n_layers):
        b, h = f"blocks.{i}.", f"{p}layers.{i}."
        out[f"{b}attn_norm.weight"] = r.take(f"{h}input_layernorm.weight", D)
        qkv = [r.take(f"{h}self_attn.{n}_proj.weight", rows, D) for n, rows in zip("qkv", (q_dim, kv_dim, kv_dim))]
        out[f"{b}attn.qkv_proj.weight"] = torch.cat(qkv)
        if qkv_bias:
            qkv = [r.take(f"{h}self_attn.{n}_proj.bias", rows) for n, rows in zip("qkv", (q_dim, kv_dim, kv_dim))]
            out[f"{b}attn.qkv_proj.bias"] = torch.cat(qkv)
        elif config.bias:
            out[f"{b}attn.qkv_proj.bias"] = zeros_like_rows(out[f"{b}attn.qkv_proj.weight"])
        linear(f"{b}attn.out_proj", f"{h}self_attn.o_proj", D, q_dim, o_bias)
        out[f"{b}mlp_norm.weight"] = r.take(f"{h}post_attention_layernorm.weight", D)
        for name, (n_out, n_in) in zip(MLP, ((F, D), (F, D), (D, F))):
            linear(f"{b}mlp.{name}", f"{h}mlp.{name}", n_out, n_in, mlp_bias)
    out["final_norm.weight"] = r.take(f"{p}norm.weight", D)
    if not config.tie_embeddings:
        out["lm_head.weight"] = r.take("lm_head.weight", V, D)
    r.finish("Check that config.json belongs to these weights (hidden_size, num_key_value_heads, "
             "intermediate_size, attention_bias / mlp_bias, tie_word_embeddings).")
    return config, out


def export_problems(config: ModelConfig) -> list[str]:
    """Why ``config`` cannot be written in the Llama layout (empty when it can)."""
    return layout_problems(config, "Llama", {"pos_encoding": "rope", "norm": "rmsnorm", "activation": "swiglu",
                                             "attention": "default"})


def _export_type(config: ModelConfig, state: Mapping[str, torch.Tensor]) -> str:
    """The family to write: the one the model came from when its biases fit it, else plain Llama."""
    wanted = config.extra.get("hf_model_type", "llama")
    if not config.bias or wanted == "llama":
        return wanted if wanted in MODEL_TYPES else "llama"
    dropped = [n for n in state if n.endswith(("out_proj.bias", "gate_proj.bias", "up_proj.bias", "down_proj.bias"))]
    if wanted == "mistral":
        dropped += [n for n in state if n.endswith("qkv_proj.bias")]
    fits = wanted in ("mistral", "qwen2") and all(is_zero(state[n]) for n in dropped)
    return wanted if fits else "llama"


def to_hf(config: ModelConfig, state: Mapping[str, torch.Tensor]) -> tuple[dict[str, Any], dict]:
    """(HF config dict, HF state dict) for a Llama-shaped llmcore model."""
    mt = _export_type(config, state)
    qkv_bias, o_bias, mlp_bias = _bias_layout(mt, {"attention_bias": config.bias, "mlp_bias": config.bias})
    D, F, V, hd = config.d_model, config.d_ff, config.vocab_size, config.head_dim
    q_dim, kv_dim = config.n_heads * hd, config.n_kv_heads * hd
    r = llmcore_reader(config, state)

    def bias(name: str, weight: torch.Tensor, keep: bool) -> torch.Tensor | None:
        """Our bias if the target has one (zeros when we have none); None (and unread) when it has none."""
        if not keep:
            if config.bias:
                r.used.add(name)  # a zero bias the target family lacks (checked by _export_type)
            return None
        return r.take(name, weight.shape[0]) if config.bias else zeros_like_rows(weight)

    out: dict[str, torch.Tensor] = {"model.embed_tokens.weight": r.take("tok_embeddings.weight", V, D)}

    def put(name: str, weight: torch.Tensor, b: torch.Tensor | None) -> None:
        out[f"{name}.weight"] = weight
        if b is not None:
            out[f"{name}.bias"] = b

    for i in range(config.n_layers):
        b, h = f"blocks.{i}.", f"model.layers.{i}."
        out[f"{h}input_layernorm.weight"] = r.take(f"{b}attn_norm.weight", D)
        w = r.take(f"{b}attn.qkv_proj.weight", q_dim + 2 * kv_dim, D)
        qkv_b = bias(f"{b}attn.qkv_proj.bias", w, qkv_bias)
        for n, wn, bn in zip("qkv", w.split([q_dim, kv_dim, kv_dim]),
                             qkv_b.split([q_dim, kv_dim, kv_dim]) if qkv_b is not None else (None,) * 3):
            # clone: views of one fused tensor share storage, which safetensors refuses to save
            put(f"{h}self_attn.{n}_proj", wn.clone(), None if bn is None else bn.clone())
        w = r.take(f"{b}attn.out_proj.weight", D, q_dim)
        put(f"{h}self_attn.o_proj", w, bias(f"{b}attn.out_proj.bias", w, o_bias))
        out[f"{h}post_attention_layernorm.weight"] = r.take(f"{b}mlp_norm.weight", D)
        for name, shape in zip(MLP, ((F, D), (F, D), (D, F))):
            w = r.take(f"{b}mlp.{name}.weight", *shape)
            put(f"{h}mlp.{name}", w, bias(f"{b}mlp.{name}.bias", w, mlp_bias))
    out["model.norm.weight"] = r.take("final_norm.weight", D)
    if not config.tie_embeddings:
        out["lm_head.weight"] = r.take("lm_head.weight", V, D)
    r.finish("The state dict does not belong to this config.")

    hf = export_common(config, out, mt, ARCHITECTURES[mt])
    max_pos, window = config.max_seq_len, config.extra.get("hf_sliding_window")
    if mt == "mistral" and window == max_pos and "hf_max_position_embeddings" in config.extra:
        max_pos = config.extra["hf_max_position_embeddings"]  # undo the cap applied on import
    hf.update({
        "hidden_size": D, "intermediate_size": F, "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads, "num_key_value_heads": config.n_kv_heads, "head_dim": hd,
        "hidden_act": "silu", "max_position_embeddings": max_pos, "rms_norm_eps": config.norm_eps,
        # transformers 4.x reads rope_theta / rope_scaling, 5.x rope_parameters
        "rope_theta": config.rope_theta, "rope_scaling": None,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "attention_dropout": export_dropout(config),
    })
    if mt == "llama":
        hf.update(attention_bias=config.bias, mlp_bias=config.bias)
    elif mt == "mistral":
        hf["sliding_window"] = window
    return hf, out
