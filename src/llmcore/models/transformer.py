"""TransformerLM: a decoder-only Transformer language model (GPT-2 and Llama families).

token ids → embeddings (+ absolute positions) → N × DecoderBlock → final norm → LM head → logits.

The model returns logits and nothing else: the loss lives in :func:`llmcore.training.lm_loss` and decoding in
:mod:`llmcore.generation`. To build a new architecture, subclass and swap a part::

    class ParallelBlock(DecoderBlock): ...
    class MyLM(TransformerLM):
        block_cls = ParallelBlock

References: Radford et al. 2019 (GPT-2), Touvron et al. 2023 (Llama), Karpathy's nanoGPT ``model.py``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..config import ModelConfig
from ..errors import DataError
from ..inputs import check_token_ids
from ..modules import (
    POSITIONAL,
    DecoderBlock,
    KVCache,
    RotaryEmbedding,
    build_norm,
    dropout,
    make_attention_mask,
)
from .pretrained import PreTrainedMixin


class TransformerLM(PreTrainedMixin, nn.Module):
    """Decoder-only Transformer. ``forward(input_ids) -> logits (B, T, vocab_size)``."""

    block_cls: type[nn.Module] = DecoderBlock

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.d_model)
        pos_cls = POSITIONAL[config.pos_encoding]
        self.pos_embeddings = pos_cls(config) if pos_cls is not None else None
        self.rotary = RotaryEmbedding(config) if config.pos_encoding == "rope" else None
        self.drop = dropout(config.dropout)
        self.blocks = nn.ModuleList(self.block_cls(config, i) for i in range(config.n_layers))
        self.final_norm = build_norm(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.tok_embeddings.weight  # one matrix, stored once on disk
        self.init_weights()

    # ------------------------------------------------------------------ init
    def init_weights(self) -> None:
        """nanoGPT / GPT-2 init: N(0, init_std) everywhere, residual output projections scaled by 1/√(2L).

        The scaling keeps the residual stream's variance from growing with depth: each of the 2L residual
        branches adds a term, so each is shrunk by √(2L). Override in a subclass for other schemes.
        """
        std = self.config.init_std
        resid_std = std / math.sqrt(2 * self.config.n_layers)
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear):
                residual = name.endswith(("out_proj", "down_proj"))
                nn.init.normal_(m.weight, mean=0.0, std=resid_std if residual else std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, mean=0.0, std=std)
            elif hasattr(m, "weight") and isinstance(getattr(m, "weight", None), nn.Parameter) and "norm" in name:
                nn.init.ones_(m.weight)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)

    # ------------------------------------------------------------------ forward
    def embed(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """Token (+ absolute position) embeddings: (B, T) -> (B, T, D). Override for new embedding schemes."""
        x = self.tok_embeddings(input_ids)
        if self.pos_embeddings is not None:
            x = x + self.pos_embeddings(position_ids)
        return self.drop(x)

    def forward_hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                       kv_cache: KVCache | None = None, position_ids: torch.Tensor | None = None,
                       return_weights: bool = False) -> torch.Tensor:
        """Final-normed hidden states (B, T, D); see :meth:`forward` for the arguments."""
        past = kv_cache.length if kv_cache is not None else 0
        check_token_ids(input_ids, self.config, past, check_vocab=not (past and input_ids.shape[-1] == 1))
        B, T = input_ids.shape
        if attention_mask is not None and attention_mask.shape[-1] != past + T:
            raise DataError(f"attention_mask covers {attention_mask.shape[-1]} positions but the cache holds {past} "
                            f"and the input adds {T}; pass the mask of all {past + T} positions.")
        if position_ids is None:
            if attention_mask is not None:  # left padding: real tokens count positions from 0
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past:]
            else:
                position_ids = torch.arange(past, past + T, device=input_ids.device).expand(B, T)
        if attention_mask is None and (past == 0 or T == 1):
            mask, is_causal = None, T > 1  # the fused kernel's own causal mask, nothing materialised
        else:
            mask, is_causal = make_attention_mask(attention_mask, T, past, causal=True), False
        rope = self.rotary(position_ids) if self.rotary is not None else None
        x = self.embed(input_ids, position_ids)
        for block in self.blocks:
            x = block(x, mask=mask, is_causal=is_causal, rope=rope, kv_cache=kv_cache, return_weights=return_weights)
        if kv_cache is not None:
            kv_cache.advance(T)
        return self.final_norm(x)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                kv_cache: KVCache | None = None, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Next-token logits.

        Args:
            input_ids: (B, T) token ids in [0, vocab_size).
            attention_mask: (B, past + T), 1 for real tokens, 0 for padding (left padding for generation).
            kv_cache: a :class:`KVCache`; past keys/values are reused and the new ones appended.
            position_ids: (B, T); derived from ``attention_mask`` (or the cache length) when omitted.

        Returns:
            logits (B, T, vocab_size).
        """
        return self.lm_head(self.forward_hidden(input_ids, attention_mask, kv_cache, position_ids))

    # ------------------------------------------------------------------ utilities
    def num_parameters(self, trainable_only: bool = False, exclude_embeddings: bool = False) -> int:
        """Parameter count; tied weights count once."""
        params = [p for p in self.parameters() if p.requires_grad or not trainable_only]
        n = sum(p.numel() for p in params)
        if exclude_embeddings:
            n -= self.tok_embeddings.weight.numel()
            if isinstance(self.pos_embeddings, nn.Embedding):
                n -= self.pos_embeddings.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward): 6·N + 12·L·d·T (Kaplan et al. 2020; PaLM App. B)."""
        T = seq_len or self.config.max_seq_len
        n = self.num_parameters(exclude_embeddings=True)
        if self.config.tie_embeddings:  # the tied head shares storage with the embedding but is still a matmul
            n += self.lm_head.weight.numel()
        return 6 * n + 12 * self.config.n_layers * self.config.d_model * T

    def make_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        """A :class:`KVCache` for this model."""
        return KVCache.for_model(self, batch_size, max_len)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """Continue ``input_ids`` (B, T); returns (B, T + new). See :func:`llmcore.generation.generate`."""
        from ..generation import generate  # the model does not depend on generation at import time

        return generate(self, input_ids, **kwargs)
