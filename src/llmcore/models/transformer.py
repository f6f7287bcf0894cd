"""TransformerLM: a decoder-only Transformer language model (GPT-2 and Llama families).

token ids → embeddings (+ absolute positions) → N × DecoderBlock → final norm → LM head → logits.

``inputs_embeds`` (B, T, d_model) may replace the token ids: the vectors take the place of the embedding
lookup and go through the rest of :meth:`TransformerLM.embed` (absolute positions, dropout), so
``model(inputs_embeds=model.get_input_embeddings()(ids))`` equals ``model(ids)`` bit for bit. This is how
another modality enters (an image's features projected to d_model and put in front of the text).

The model returns logits and nothing else: the loss lives in :func:`llmcore.training.lm_loss` and decoding in
:mod:`llmcore.generation`. To build a new architecture, subclass and swap a part::

    class ParallelBlock(DecoderBlock): ...
    class MyLM(TransformerLM):
        block_cls = ParallelBlock

References: Radford et al. 2019 (GPT-2), Touvron et al. 2023 (Llama), Karpathy's nanoGPT ``model.py``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..config import ModelConfig
from ..errors import ConfigError, DataError
from ..inputs import check_inputs_embeds, check_token_ids
from ..modules import (
    DecoderBlock,
    KVCache,
    Linear,
    RotaryPositions,
    attention_inputs,
    build_norm,
    build_positions,
    dropout,
    init_weights,
    num_parameters,
)
from ..registry import ARCHITECTURES
from .pretrained import PreTrainedMixin


@ARCHITECTURES.register("TransformerLM")
class TransformerLM(PreTrainedMixin, nn.Module):
    """Decoder-only Transformer. ``forward(input_ids) -> logits (B, T, vocab_size)``; or ``forward(inputs_embeds=...)``."""

    block_cls: type[nn.Module] = DecoderBlock

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.d_model)
        pos = build_positions(config)  # None, absolute (added to the embeddings) or rotary (applied to q, k)
        rotary = isinstance(pos, RotaryPositions)
        self.pos_embeddings = None if rotary else pos
        self.rotary = pos if rotary else None
        self.drop = dropout(config.dropout)
        self.blocks = nn.ModuleList(self.block_cls(config, i) for i in range(config.n_layers))
        self.final_norm = build_norm(config)
        self.lm_head = Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.tok_embeddings.weight  # one matrix, stored once on disk
        self.init_weights()

    # ------------------------------------------------------------------ init
    def init_weights(self) -> None:
        """nanoGPT / GPT-2 init (:func:`llmcore.modules.init_weights`): N(0, init_std), norms at identity,
        residual output projections scaled by 1/√(2L). Override in a subclass for other schemes."""
        init_weights(self, self.config.init_std, [self.blocks])

    # ------------------------------------------------------------------ embeddings
    def get_input_embeddings(self) -> nn.Module:
        """The token embedding table (an ``nn.Embedding`` (vocab_size, d_model)), as in ``transformers``.

        ``get_input_embeddings()(ids)`` (B, T) -> (B, T, d_model) is what ``inputs_embeds`` replaces.
        """
        return self.tok_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        """Replace the token embedding table; a tied LM head is re-tied to the new matrix.

        ``value`` must be an ``nn.Embedding(vocab_size, d_model)``: the config (and so the checks on ids and the
        saved ``config.json``) describes that shape; build a model from a new config to change the vocabulary.
        """
        cfg = self.config
        if not isinstance(value, nn.Embedding) or tuple(value.weight.shape) != (cfg.vocab_size, cfg.d_model):
            got = tuple(value.weight.shape) if isinstance(value, nn.Embedding) else type(value).__name__
            raise ConfigError(f"set_input_embeddings needs nn.Embedding({cfg.vocab_size}, {cfg.d_model}) "
                              f"(vocab_size, d_model), got {got}; build a model from a new ModelConfig to change "
                              "the vocabulary or width.")
        self.tok_embeddings = value
        if cfg.tie_embeddings:  # keep the head and the embedding one matrix, as __init__ made them
            self.lm_head.weight = value.weight

    # ------------------------------------------------------------------ forward
    def embed(self, input_ids: torch.Tensor | None, position_ids: torch.Tensor,
              inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """Token (+ absolute position) embeddings: (B, T) -> (B, T, D). Override for new embedding schemes.

        With ``inputs_embeds`` (B, T, D) the vectors replace the token lookup (``input_ids`` is then None) and
        everything after it (positions, dropout) is applied the same way, so both inputs share one path.
        """
        x = self.tok_embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        if self.pos_embeddings is not None:
            x = x + self.pos_embeddings(position_ids)
        return self.drop(x)

    def _input_shape(self, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None,
                     past: int) -> tuple[int, int, torch.device]:
        """(B, T, device) of whichever input was given, after checking that exactly one was (shapes only)."""
        if (input_ids is None) == (inputs_embeds is None):
            fix = ("to put embeddings in front of ids, concatenate them: "
                   "torch.cat([prefix, model.get_input_embeddings()(ids)], dim=1)" if input_ids is not None
                   else "pass model(ids) or model(inputs_embeds=vectors)")
            raise DataError(f"{type(self).__name__} needs exactly one of input_ids (B, T) or inputs_embeds "
                            f"(B, T, {self.config.d_model}), got {'both' if input_ids is not None else 'neither'}; "
                            f"{fix}.")
        if inputs_embeds is not None:
            check_inputs_embeds(inputs_embeds, self.config.d_model, self.tok_embeddings.weight.dtype,
                                self.config.max_seq_len, past)
            return inputs_embeds.shape[0], inputs_embeds.shape[1], inputs_embeds.device
        # Shape and length only: the vocabulary range needs the ids' values on the host (a sync and a
        # compile graph break), so ids are checked where they enter (datasets, generation, the CLI).
        check_token_ids(input_ids, self.config, past, check_vocab=False)
        return input_ids.shape[0], input_ids.shape[1], input_ids.device

    def forward_hidden(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                       kv_cache: KVCache | None = None, position_ids: torch.Tensor | None = None,
                       attn_weights: list[torch.Tensor] | None = None,
                       inputs_embeds: torch.Tensor | None = None, **block_kwargs: Any) -> torch.Tensor:
        """Final-normed hidden states (B, T, D); see :meth:`forward` for the arguments.

        ``attn_weights``: when a list, every layer's attention weights (B, H, T, S) are appended in order.
        ``block_kwargs``: extra inputs of a subclass's :meth:`run_blocks` (none for this class).
        """
        past = kv_cache.length if kv_cache is not None else 0
        B, T, device = self._input_shape(input_ids, inputs_embeds, past)
        position_ids, mask = attention_inputs(attention_mask, B, T, past, device, position_ids)
        rope = self.rotary(position_ids) if self.rotary is not None else None
        if inputs_embeds is None:  # the two-argument call, so a subclass's embed(ids, pos) keeps working
            x = self.embed(input_ids, position_ids)
        else:
            x = self.embed(None, position_ids, inputs_embeds=inputs_embeds)
        x = self.run_blocks(x, mask=mask, rope=rope, kv_cache=kv_cache, attn_weights=attn_weights, **block_kwargs)
        if kv_cache is not None:
            kv_cache.advance(T)
        return self.final_norm(x)

    def run_blocks(self, x: torch.Tensor, mask: torch.Tensor | None, rope: Any, kv_cache: KVCache | None,
                   attn_weights: list[torch.Tensor] | None) -> torch.Tensor:
        """The block stack: (B, T, D) -> (B, T, D). A subclass that inserts layers between blocks (e.g.
        :class:`~llmcore.models.fusion.CrossAttentionFusionLM`) overrides this and takes its extra inputs as
        keywords, which :meth:`forward_hidden` passes through (``block_kwargs``); this one takes none."""
        for block in self.blocks:
            x = block(x, mask=mask, is_causal=True, rope=rope, kv_cache=kv_cache, attn_weights=attn_weights)
        return x

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                kv_cache: KVCache | None = None, position_ids: torch.Tensor | None = None,
                logits_to_keep: int = 0, inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """Next-token logits.

        Args:
            input_ids: (B, T) token ids in [0, vocab_size) (not range-checked here; see
                :func:`llmcore.inputs.check_token_ids`). Give this or ``inputs_embeds``, not both.
            attention_mask: (B, past + T), 1 for real positions, 0 for padding (left padding for generation).
                Padding may also sit between a left-padded prefix and left-padded text: positions count real
                entries only, so each row sees the positions it would see alone.
            kv_cache: a :class:`KVCache`; past keys/values are reused and the new ones appended.
            position_ids: (B, T); derived from ``attention_mask`` (or the cache length) when omitted.
            logits_to_keep: k > 0 runs the LM head on the last k positions only (generation uses 1, which
                saves the (B, T, V) logits at prefill); 0 keeps all.
            inputs_embeds: (B, T, d_model) vectors in place of the token lookup, in the embedding's dtype;
                absolute positions and dropout are applied to them as to looked-up tokens. A prefix of other
                embeddings followed by ids is ``torch.cat([prefix, model.get_input_embeddings()(ids)], 1)``.

        Returns:
            logits (B, T, vocab_size), or (B, k, vocab_size) with ``logits_to_keep=k``.

        Raises:
            DataError: neither or both of ``input_ids`` / ``inputs_embeds``; a wrong shape or dtype; past + T
                beyond ``max_seq_len``.
        """
        h = self.forward_hidden(input_ids, attention_mask, kv_cache, position_ids, inputs_embeds=inputs_embeds)
        if logits_to_keep > 0:
            h = h[:, -logits_to_keep:]
        return self.lm_head(h)

    # ------------------------------------------------------------------ utilities
    def num_parameters(self, trainable_only: bool = False, exclude_embeddings: bool = False) -> int:
        """Parameter count; tied weights count once. ``exclude_embeddings``: the non-embedding count of
        scaling laws (token and absolute-position tables left out)."""
        exclude = (self.tok_embeddings, self.pos_embeddings) if exclude_embeddings else ()
        return num_parameters(self, trainable_only, exclude=tuple(m for m in exclude if m is not None))

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
    def generate(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                 **kwargs: Any) -> torch.Tensor:
        """Continue ``input_ids`` (B, T) and / or ``inputs_embeds=`` (B, P, D) (a prefix in front of the ids).

        ``attention_mask`` (B, P + T) covers the whole prompt (see :func:`llmcore.generation.generate`).
        Returns (B, T + new): the ids given, then the new tokens; embedding positions are never in the output,
        so ``generate(inputs_embeds=...)`` alone returns only the new tokens. See
        :func:`llmcore.generation.generate`.
        """
        from ..generation import generate  # the model does not depend on generation at import time

        return generate(self, input_ids, attention_mask, **kwargs)
