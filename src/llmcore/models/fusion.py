"""Multimodal fusion: features of another modality (images) brought into a decoder-only language model.

Two ways, both :class:`~llmcore.models.TransformerLM` subclasses, so every loader, strategy and decoding
function that takes a TransformerLM takes them:

* :class:`PrefixFusionLM` (ClipCap / LLaVA / nanoVLM): encoder → projector (linear or 2-layer MLP) → N
  vectors in front of the text's embeddings, ``[prefix ; embed(ids)]``. The modality enters once, at the
  input; the LM's blocks are unchanged. It costs N more positions of context in every layer.
* :class:`CrossAttentionFusionLM` (Flamingo): a gated cross-attention block
  (:class:`GatedCrossAttentionBlock`: ``x + tanh(a)·xattn(x, features)``, then ``x + tanh(b)·mlp(x)``, with
  ``a = b = 0`` at initialisation) before every ``cross_every``-th decoder block, attending to the projected
  features. With the gates at 0 the model *is* the text-only LM, bit for bit, so training starts from it. The
  text context is not lengthened; the encoder features are projected to keys/values once per generation and
  kept in the KV cache (:attr:`~llmcore.modules.KVCache.cross`).

The encoder is a :class:`~llmcore.multimodal.VisionEncoder` built from ``config.vision`` (a
:class:`~llmcore.multimodal.VisionConfig` as a dict), or :class:`~llmcore.multimodal.PrecomputedFeatures`
(``config.vision == {}``, features of ``config.feature_dim`` computed by any other encoder) — pass
``images=`` (B, C, H, W) floats in [0, 1] or ``features=`` (B, N, d_enc). Trainer batches are
``{"input_ids", "images" | "features", "labels"}``: the logits come back for the text positions only,
(B, T, V), aligned with ``input_ids``, so the loss is on text tokens only and the usual shifted labels apply.

Staged training is the fine-tuning strategies, not a new loop: stage 1 is
``Freeze(pretrained_parts(model))`` (LM and encoder frozen; the projector, or the projection and the
cross-attention blocks, train), stage 2 a second Trainer run with everything (or ``GradualUnfreeze``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..config import ModelConfig, check_field, is_int, is_number
from ..errors import ConfigError, DataError
from ..modules import KVCache, build_mlp, build_norm
from ..modules.attention import Attention
from ..registry import ARCHITECTURES
from .transformer import TransformerLM


def pretrained_parts(model: nn.Module, encoder: bool = True) -> list[str]:
    """Module names (patterns for :class:`~llmcore.finetune.Freeze`) of the parts a fusion model starts
    from: the language model's own (embeddings, blocks, final norm, an untied head) and, with ``encoder``, the
    modality encoder's (when it has parameters). ``Freeze(pretrained_parts(model))`` is stage 1: only the
    projector (prefix fusion) or the projection and gated cross-attention blocks (cross fusion) train."""
    names = {n.split(".", 1)[0] for n, _ in model.named_parameters()}  # tied weights appear once
    parts = ["tok_embeddings", "pos_embeddings", "blocks", "final_norm", "lm_head"] + (["encoder"] if encoder else [])
    return [p for p in parts if p in names]


@dataclass
class FusionConfig(ModelConfig):
    """The language model's :class:`ModelConfig` plus the modality side.

    ``vision``: :class:`~llmcore.multimodal.VisionConfig` fields (``{}``: precomputed features of
    ``feature_dim``); ``projector``: ``"linear"`` or ``"mlp"`` (prefix fusion: encoder width → d_model);
    ``cross_every``: a gated cross-attention block before every k-th decoder block (cross fusion: blocks 0,
    k, 2k, …); ``gate_init``: the value both gates of each such block start at (cross fusion). 0 (Flamingo)
    makes the initial model the text-only LM bit for bit, right for a *pretrained* encoder; with an encoder
    trained from scratch it is a saddle point: every gradient that reaches the cross-attention and the
    encoder is multiplied by ``tanh(gate) = 0``, and the gate's own gradient is noise from random features,
    so the gates random-walk near 0 and the image is never read. A small value (0.1) breaks the tie.
    """

    vision: dict[str, Any] = field(default_factory=dict)
    feature_dim: int = 0
    projector: str = "mlp"
    cross_every: int = 1
    gate_init: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_field(self, "vision", lambda v: isinstance(v, dict), "a dict of VisionConfig fields, or {}")
        check_field(self, "projector", lambda v: v in ("linear", "mlp"), "'linear' or 'mlp'")
        check_field(self, "cross_every", lambda v: is_int(v, 1) and v <= self.n_layers,
                    f"an int in [1, n_layers={self.n_layers}]")
        check_field(self, "gate_init", lambda v: is_number(v) and -3.0 <= v <= 3.0,
                    "a number in [-3, 3] (tanh saturates beyond)")
        if self.vision:
            from ..multimodal.encoders import VisionConfig

            VisionConfig.from_dict(self.vision)  # ConfigError naming the bad field
        else:
            check_field(self, "feature_dim", lambda v: is_int(v, 1),
                        "an int >= 1 (the width of precomputed features) when vision is {}")

    @property
    def encoder_dim(self) -> int:
        """d_enc, the width of the encoder's features."""
        return int(self.vision.get("d_model", 64)) if self.vision else self.feature_dim


def build_encoder(config: FusionConfig) -> nn.Module:
    """The config's encoder: a VisionEncoder, or PrecomputedFeatures when ``config.vision`` is empty."""
    from ..multimodal.encoders import PrecomputedFeatures, VisionConfig, VisionEncoder

    if config.vision:
        return VisionEncoder(VisionConfig.from_dict(config.vision))
    return PrecomputedFeatures(config.feature_dim)


class _Fusion:
    """What both fusion models share: the encoder, the one-of images/features rule, the init order."""

    config: FusionConfig
    encoder: nn.Module

    def encode(self, images: torch.Tensor | None = None, features: torch.Tensor | None = None) -> torch.Tensor:
        """Encoder features (B, N, d_enc) of ``images`` (B, C, H, W) or of precomputed ``features``."""
        from ..multimodal.encoders import PrecomputedFeatures

        precomputed = isinstance(self.encoder, PrecomputedFeatures)
        if (images is None) == (features is None):
            raise DataError(f"{type(self).__name__} needs exactly one of images or features, got "
                            f"{'both' if images is not None else 'neither'}.")
        if features is not None and not precomputed:
            raise DataError(f"{type(self).__name__} has a vision encoder: pass images (B, C, H, W), not features.")
        if images is not None and precomputed:
            raise DataError(f"{type(self).__name__} reads precomputed features (config.vision is empty): pass "
                            f"features (B, N, {self.config.feature_dim}), not images.")
        return self.encoder(images if images is not None else features)

    @property
    def image_shape(self) -> tuple[int, int, int] | None:
        """(channels, height, width) of the images the encoder takes; None when it reads precomputed features."""
        if not self.config.vision:
            return None
        from ..multimodal.encoders import VisionConfig

        v = VisionConfig.from_dict(self.config.vision)
        return v.channels, v.image_size, v.image_size

    def decoding_inputs(self, images: torch.Tensor | None = None,
                        features: torch.Tensor | None = None) -> dict[str, Any]:
        """The keyword arguments that condition :func:`~llmcore.generation.generate` / ``stream`` /
        ``beam_search`` (called as functions, on this model) on ``images`` or ``features``:
        ``{"inputs_embeds": prefix}`` for prefix fusion, ``{"model_kwargs": {"memory": ...}}`` for
        cross-attention fusion. ``model.generate(ids, images=...)`` does the same in one call."""
        raise NotImplementedError

    def _init_fusion(self) -> None:
        """After the LM's init (which walks every module): the encoder's own scheme, and the gates at
        ``config.gate_init``."""
        if hasattr(self.encoder, "init_weights"):
            self.encoder.init_weights()
        for m in self.modules():
            if isinstance(m, GatedCrossAttentionBlock):
                m.reset_gates()


@ARCHITECTURES.register("PrefixFusionLM")
class PrefixFusionLM(_Fusion, TransformerLM):
    """Prefix fusion: ``[projector(encoder(x)) ; embed(ids)]`` into an unchanged decoder-only LM."""

    config_cls = FusionConfig

    def __init__(self, config: FusionConfig) -> None:
        super().__init__(config)
        self.encoder = build_encoder(config)
        d_enc, d = config.encoder_dim, config.d_model
        self.projector = (nn.Linear(d_enc, d) if config.projector == "linear" else
                          nn.Sequential(nn.Linear(d_enc, d), nn.GELU(), nn.Linear(d, d)))
        self.init_weights()
        self._init_fusion()

    def prefix(self, images: torch.Tensor | None = None, features: torch.Tensor | None = None) -> torch.Tensor:
        """The N prefix embeddings (B, N, d_model), in the embedding's dtype."""
        return self.projector(self.encode(images, features)).to(self.tok_embeddings.weight.dtype)

    def decoding_inputs(self, images: torch.Tensor | None = None,
                        features: torch.Tensor | None = None) -> dict[str, Any]:
        return {"inputs_embeds": self.prefix(images, features)}

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                kv_cache: KVCache | None = None, position_ids: torch.Tensor | None = None,
                logits_to_keep: int = 0, inputs_embeds: torch.Tensor | None = None,
                images: torch.Tensor | None = None, features: torch.Tensor | None = None) -> torch.Tensor:
        """Without ``images`` / ``features``: :meth:`TransformerLM.forward` (decoding calls this way). With
        them: logits (B, T, V) of the text ``input_ids`` (B, T) after the prefix; ``attention_mask`` (B, T)
        covers the text (the prefix is always attended)."""
        if images is None and features is None:
            return super().forward(input_ids, attention_mask, kv_cache, position_ids, logits_to_keep, inputs_embeds)
        if input_ids is None or inputs_embeds is not None or kv_cache is not None:
            raise DataError("With images/features, pass the text as input_ids (B, T) and no kv_cache or "
                            "inputs_embeds; generate() handles the cache.")
        prefix = self.prefix(images, features)
        if prefix.shape[0] != input_ids.shape[0]:
            raise DataError(f"{prefix.shape[0]} images/features for {input_ids.shape[0]} texts; give one per text.")
        n = prefix.shape[1]
        x = torch.cat([prefix, self.tok_embeddings(input_ids)], dim=1)
        mask = None
        if attention_mask is not None:
            mask = torch.cat([attention_mask.new_ones(attention_mask.shape[0], n), attention_mask], dim=1)
        h = self.forward_hidden(None, mask, inputs_embeds=x)[:, n:]
        return self.lm_head(h[:, -logits_to_keep:] if logits_to_keep > 0 else h)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                 images: torch.Tensor | None = None, features: torch.Tensor | None = None,
                 **kwargs: Any) -> torch.Tensor:
        """Continue the text ``input_ids`` (B, T) (or start from nothing: None) after each image's prefix;
        returns the ids (B, T + n). ``attention_mask`` (B, T) covers the text, left-padded."""
        from ..generation import generate

        if images is None and features is None:
            return super().generate(input_ids, attention_mask, **kwargs)
        prefix = self.prefix(images, features)
        if attention_mask is not None:
            attention_mask = torch.cat([attention_mask.new_ones(prefix.shape[0], prefix.shape[1]), attention_mask], 1)
        return generate(self, input_ids, attention_mask, inputs_embeds=prefix, **kwargs)


class GatedCrossAttentionBlock(nn.Module):
    """Flamingo's GATED XATTN-DENSE: ``x += tanh(a)·xattn(norm(x), memory)``; ``x += tanh(b)·mlp(norm(x))``.

    ``a`` and ``b`` are scalars initialised at ``config.gate_init`` (default 0, so the block is the identity,
    exactly: ``x + 0·y == x``, until training opens the gates). Keys/values come from ``memory`` (B, S, d_model); with a KV cache they are
    computed on the first call and read from ``kv_cache.cross[layer_idx]`` after (layer_idx: the decoder
    block it precedes, whose self-attention uses other slots of the cache).
    """

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.cross_norm = build_norm(config)
        self.cross_attn = Attention(config, layer_idx, cross=True)
        self.mlp_norm = build_norm(config)
        self.mlp = build_mlp(config, layer_idx)
        self.gate_init = float(getattr(config, "gate_init", 0.0))
        self.attn_gate = nn.Parameter(torch.full((1,), self.gate_init))
        self.mlp_gate = nn.Parameter(torch.full((1,), self.gate_init))

    def reset_gates(self) -> None:
        with torch.no_grad():
            self.attn_gate.fill_(self.gate_init)
            self.mlp_gate.fill_(self.gate_init)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor | None = None,
                kv_cache: KVCache | None = None, attn_weights: list[torch.Tensor] | None = None) -> torch.Tensor:
        """(B, T, D) -> (B, T, D); ``memory_mask`` boolean (B, 1, 1, S), True = real feature."""
        y = self.cross_attn(self.cross_norm(x), mask=memory_mask, kv_cache=kv_cache, memory=memory,
                            attn_weights=attn_weights)
        x = x + torch.tanh(self.attn_gate) * y
        return x + torch.tanh(self.mlp_gate) * self.mlp(self.mlp_norm(x))


@ARCHITECTURES.register("CrossAttentionFusionLM")
class CrossAttentionFusionLM(_Fusion, TransformerLM):
    """Cross-attention fusion: gated cross-attention to the features before every ``cross_every``-th block."""

    config_cls = FusionConfig

    def __init__(self, config: FusionConfig) -> None:
        super().__init__(config)
        self.encoder = build_encoder(config)
        self.feature_proj = nn.Linear(config.encoder_dim, config.d_model)  # features into the LM's width
        self.cross_blocks = nn.ModuleDict({str(i): GatedCrossAttentionBlock(config, i)
                                           for i in range(0, config.n_layers, config.cross_every)})
        self.init_weights()
        self._init_fusion()

    def memory(self, images: torch.Tensor | None = None, features: torch.Tensor | None = None) -> torch.Tensor:
        """The features the cross-attention reads, (B, N, d_model)."""
        return self.feature_proj(self.encode(images, features)).to(self.tok_embeddings.weight.dtype)

    def decoding_inputs(self, images: torch.Tensor | None = None,
                        features: torch.Tensor | None = None) -> dict[str, Any]:
        return {"model_kwargs": {"memory": self.memory(images, features)}}

    def run_blocks(self, x: torch.Tensor, mask: torch.Tensor | None, rope: Any, kv_cache: KVCache | None,
                   attn_weights: list[torch.Tensor] | None, memory: torch.Tensor | None = None,
                   memory_mask: torch.Tensor | None = None) -> torch.Tensor:
        if memory is None:  # text only: the LM itself (the cross blocks need something to attend to)
            return super().run_blocks(x, mask, rope, kv_cache, attn_weights)
        if memory.shape[0] != x.shape[0]:
            raise DataError(f"{memory.shape[0]} images/features for {x.shape[0]} texts; give one per text.")
        cross_mask = None if memory_mask is None else memory_mask.bool()[:, None, None, :]
        for i, block in enumerate(self.blocks):
            if str(i) in self.cross_blocks:
                x = self.cross_blocks[str(i)](x, memory, cross_mask, kv_cache, attn_weights)
            x = block(x, mask=mask, is_causal=True, rope=rope, kv_cache=kv_cache, attn_weights=attn_weights)
        return x

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                kv_cache: KVCache | None = None, position_ids: torch.Tensor | None = None,
                logits_to_keep: int = 0, inputs_embeds: torch.Tensor | None = None,
                images: torch.Tensor | None = None, features: torch.Tensor | None = None,
                memory: torch.Tensor | None = None, memory_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, T, V) of the text, cross-attending to ``images`` / ``features`` (encoded here) or to an
        already projected ``memory`` (B, N, d_model) (what :meth:`generate` passes every step); none of them:
        the text-only LM."""
        if images is not None or features is not None:
            if memory is not None:
                raise DataError("Pass images/features or memory, not both.")
            memory = self.memory(images, features)
        h = self.forward_hidden(input_ids, attention_mask, kv_cache, position_ids, inputs_embeds=inputs_embeds,
                                memory=memory, memory_mask=memory_mask)
        return self.lm_head(h[:, -logits_to_keep:] if logits_to_keep > 0 else h)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                 images: torch.Tensor | None = None, features: torch.Tensor | None = None,
                 **kwargs: Any) -> torch.Tensor:
        """Continue ``input_ids`` (B, T) looking at each image; the encoder runs once, and the cross-attention
        keys/values are computed on the first step and cached. Returns (B, T + n)."""
        from ..generation import generate

        if images is None and features is None:
            return super().generate(input_ids, attention_mask, **kwargs)
        if "model_kwargs" in kwargs:
            raise ConfigError("CrossAttentionFusionLM.generate passes the image features itself; drop model_kwargs.")
        return generate(self, input_ids, attention_mask, **self.decoding_inputs(images, features), **kwargs)


__all__ = ["FusionConfig", "PrefixFusionLM", "CrossAttentionFusionLM", "GatedCrossAttentionBlock",
           "pretrained_parts", "build_encoder"]
