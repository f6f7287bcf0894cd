"""LSTMLM: a multi-layer LSTM language model, the recurrent baseline the Transformer is compared against.

token ids → embedding → dropout → L × LSTM (hidden size d_model) → dropout → linear head → logits

It reads the same :class:`~llmcore.config.ModelConfig` as :class:`~llmcore.models.TransformerLM`
(``vocab_size``, ``d_model``, ``n_layers``, ``dropout``, ``tie_embeddings``, ``init_std``; attention fields
are ignored) and has the same interface, so the Trainer and :mod:`llmcore.generation` work unchanged:
an LSTM's recurrent state *is* its cache. :meth:`LSTMLM.make_cache` returns an :class:`LSTMState` holding
(h, c) with ``length`` and ``reorder(index)`` for beam search.

``max_seq_len`` is not a hard limit for a recurrent model (there is no position table); it only sizes the
training windows chosen by the caller. Tying the head to the embedding follows Press & Wolf (2017) and
Inan et al. (2017); the dropout placement follows Zaremba et al. (2014).
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from ..inputs import check_token_ids
from ..modules import Linear, check_mask_length, num_parameters
from ..registry import ARCHITECTURES
from .pretrained import PreTrainedMixin


class LSTMState:
    """Recurrent state (h, c), each (n_layers, B, H), plus how many positions it has consumed.

    The same duck type as :class:`~llmcore.modules.KVCache` for the parts generation uses: ``length``,
    ``batch_size``, ``max_len`` and ``reorder(index)``.
    """

    def __init__(self, n_layers: int, batch_size: int, hidden: int, max_len: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> None:
        self.h = torch.zeros(n_layers, batch_size, hidden, dtype=dtype, device=device)
        self.c = torch.zeros(n_layers, batch_size, hidden, dtype=dtype, device=device)
        self.max_len = max_len
        self.length = 0

    @property
    def batch_size(self) -> int:
        return self.h.shape[1]

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows ``index`` (e.g. surviving beams)."""
        self.h = self.h.index_select(1, index)
        self.c = self.c.index_select(1, index)

    def advance(self, n: int) -> None:
        self.length += n


@ARCHITECTURES.register("LSTMLM")
class LSTMLM(PreTrainedMixin, nn.Module):
    """Multi-layer LSTM LM. ``forward(input_ids, attention_mask=None, kv_cache=None) -> logits (B, T, V)``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        D = config.d_model
        self.tok_embeddings = nn.Embedding(config.vocab_size, D)
        self.drop = nn.Dropout(config.dropout)
        # nn.LSTM applies its dropout between layers only; the input and output dropouts are ours.
        self.lstm = nn.LSTM(D, D, num_layers=config.n_layers, batch_first=True,
                            dropout=config.dropout if config.n_layers > 1 else 0.0)
        self.lm_head = Linear(D, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.tok_embeddings.weight
        self.init_weights()

    def init_weights(self) -> None:
        """Embedding U(-0.1, 0.1), untied head N(0, init_std); LSTM weights U(-1/√H, 1/√H) with forget bias 1.

        The embedding init of Zaremba et al. (2014) is 3x wider than the Transformer's N(0, 0.02): an LSTM has
        no norm to rescale its input, and with 0.02 a char-level LSTM stays near the unigram loss for its first
        hundred steps (Shakespeare, 2×224: loss 2.86 vs 2.34 after 150 steps). A forget-gate bias of 1
        (Jozefowicz et al., 2015) keeps early gradients flowing through time.
        """
        nn.init.uniform_(self.tok_embeddings.weight, -0.1, 0.1)
        if not self.config.tie_embeddings:
            nn.init.normal_(self.lm_head.weight, 0.0, self.config.init_std)
        self.lstm.reset_parameters()
        H = self.config.d_model
        for name, p in self.lstm.named_parameters():
            if name.startswith("bias_ih"):  # gate order i, f, g, o; only one of the two biases gets the +1
                with torch.no_grad():
                    p[H:2 * H].fill_(1.0)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                kv_cache: LSTMState | None = None) -> torch.Tensor:
        """Next-token logits.

        Args:
            input_ids: (B, T) token ids.
            attention_mask: (B, past + T), 1 for real tokens and 0 for padding. Padding positions leave the
                state unchanged, so left-padded batches give the same logits at real positions as unpadded
                sequences (their own outputs are meaningless and ignored). With a mask the layers step
                through time (the fused kernel cannot skip positions); generation passes a mask only when
                a row is padded, and training batches need none.
            kv_cache: an :class:`LSTMState` to start from; it is updated in place.

        Returns:
            logits (B, T, vocab_size).
        """
        # Shape only: no context limit for an LSTM, and the vocabulary range would need a host sync (ids are
        # checked where they enter: datasets, generation, the CLI).
        check_token_ids(input_ids, self.config, check_length=False, check_vocab=False)
        B, T = input_ids.shape
        past = kv_cache.length if kv_cache is not None else 0
        check_mask_length(attention_mask, past, T)
        state = (kv_cache.h, kv_cache.c) if kv_cache is not None else None
        x = self.drop(self.tok_embeddings(input_ids))  # (B, T, D)
        new = attention_mask[:, past:] if attention_mask is not None else None
        if new is None:
            y, state = self.lstm(x, state)  # fused over the whole sequence
        else:
            y, state = self._masked_steps(x, new.bool(), state)
        if kv_cache is not None:
            kv_cache.h, kv_cache.c = state
            kv_cache.advance(T)
        return self.lm_head(self.drop(y))

    def _masked_steps(self, x: torch.Tensor, mask: torch.Tensor,
                      state: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Step through time, carrying the state over padding positions unchanged. x (B, T, D), mask (B, T)."""
        B, T, _ = x.shape
        if state is None:
            zeros = x.new_zeros(self.config.n_layers, B, self.config.d_model)
            state = (zeros, zeros.clone())
        outs = []
        for t in range(T):
            y, (h, c) = self.lstm(x[:, t:t + 1], state)
            keep = mask[:, t].view(1, B, 1)
            state = (torch.where(keep, h, state[0]), torch.where(keep, c, state[1]))
            outs.append(y)
        return torch.cat(outs, dim=1), state

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Parameter count; a tied head counts once."""
        return num_parameters(self, trainable_only)

    def make_cache(self, batch_size: int, max_len: int | None = None) -> LSTMState:
        """A zero :class:`LSTMState` for ``batch_size`` sequences (``max_len`` is recorded, never enforced)."""
        p = next(self.parameters())
        return LSTMState(self.config.n_layers, batch_size, self.config.d_model, max_len or self.config.max_seq_len,
                         dtype=p.dtype, device=p.device)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, **kwargs: object) -> torch.Tensor:
        """Continue ``input_ids`` (B, T); see :func:`llmcore.generation.generate`."""
        from ..generation import generate

        return generate(self, input_ids, **kwargs)
