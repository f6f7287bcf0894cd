"""ALiBi attention + parallel residual blocks: a new architecture in ~40 lines that every llmcore command runs.

ALiBi (Press et al. 2022, "Train Short, Test Long", https://arxiv.org/abs/2108.12409) has no position
embeddings: head h adds −m_h·(i − j) to the score of query i on key j, a penalty linear in the distance, with
slopes m_h = 2^(−8h/H) for h = 1..H (H a power of 2; the paper's rule for other H is implemented too). The
parallel residual block (GPT-J; PaLM, Chowdhery et al. 2022) feeds one normalised input to both branches,
x + attn(norm(x)) + mlp(norm(x)), so it has one norm where the sequential block has two.

What is written here is only what differs: ``Attention.attend`` with the bias added to the mask it is given,
a block with one norm slot, and the model naming that block. Embeddings, the KV cache, left padding, causal
alignment, both attention paths (SDPA and the reference one), saving, generation, the Trainer and DDP are all
inherited. Cached decoding needs nothing special: the bias depends only on i − j, which a constant offset
(cache position, left padding) leaves unchanged.

Importing this file registers the architecture ``ALiBiParallelLM`` and the positional-encoding name ``alibi``,
so the commands build it and load its run directory (``--import`` on every command that loads a model)::

    llmcore train --import examples/alibi_parallel.py --arch ALiBiParallelLM --preset debug \\
        --set pos_encoding=alibi --max-steps 400 --eval-interval 100 --out runs/alibi
    llmcore train --import examples/alibi_parallel.py --arch ALiBiParallelLM --preset debug \\
        --set pos_encoding=alibi --max-steps 400 --eval-interval 100 --out runs/alibi --resume
    llmcore eval --import examples/alibi_parallel.py --model runs/alibi
    llmcore generate --import examples/alibi_parallel.py --model runs/alibi --prompt "ROMEO:" --max-new-tokens 40
    OMP_NUM_THREADS=1 torchrun --standalone --nproc-per-node 2 -m llmcore train --import examples/alibi_parallel.py \\
        --arch ALiBiParallelLM --preset debug --set pos_encoding=alibi --device cpu --max-steps 400 \\
        --out runs/alibi-ddp

(``--resume`` continues the newest checkpoint of the run exactly, e.g. after an interruption. With a larger
``--max-steps`` it extends a finished run; that equals one longer run when the schedule does not depend on
``--max-steps``, e.g. ``--set schedule=constant``: the default cosine stretches to the new length.)

    python examples/alibi_parallel.py     # a demo of a few seconds: build, forward, cached = uncached decoding

The tests are ``tests/test_alibi_parallel.py``; the walk-through is ``docs/guides/new-architecture.md``.
"""

from __future__ import annotations

import math

import torch

from llmcore import ConfigError, ModelConfig
from llmcore.models import TransformerLM, register_architecture
from llmcore.modules import Attention, DecoderBlock, KVCache, combine_masks
from llmcore.registry import POS_ENCODINGS

# ALiBi adds nothing to the embeddings (its positions live in the attention scores), so "alibi" builds what
# "none" builds. Registering that same function makes a second import of this file a no-op for the registry.
POS_ENCODINGS.register("alibi", POS_ENCODINGS.get("none"))


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """(H,) slopes: 2^(−8h/n) for h = 1..n, n the largest power of 2 ≤ H; the other H − n heads take the
    odd-h slopes of 2n heads, 2^(−4h/n) (the paper's rule, so slopes stay spread out geometrically)."""
    n = 2 ** math.floor(math.log2(n_heads))
    slopes = [2 ** (-8 * h / n) for h in range(1, n + 1)]
    slopes += [2 ** (-4 * h / n) for h in range(1, 2 * n, 2)][: n_heads - n]
    return torch.tensor(slopes)


def alibi_bias(slopes: torch.Tensor, q_len: int, k_len: int) -> torch.Tensor:
    """(H, T, S) additive bias −m_h·(i − j); the T queries are the last T of the S keys (as with a KV cache).

    Keys after a query (j > i) get a positive value here: the causal mask, combined later, removes them."""
    q_pos = torch.arange(k_len - q_len, k_len, device=slopes.device)  # (T,) absolute query positions
    distance = q_pos[:, None] - torch.arange(k_len, device=slopes.device)  # (T, S): i − j
    return -slopes[:, None, None] * distance


class ALiBiAttention(Attention):
    """Attention whose scores get the ALiBi bias; SDPA / reference dispatch, GQA and causality are inherited."""

    def __init__(self, config: ModelConfig, layer_idx: int = 0, cross: bool = False) -> None:
        super().__init__(config, layer_idx, cross)
        # A pure function of n_heads, like the RoPE tables: not a parameter and not saved (persistent=False).
        self.register_buffer("slopes", alibi_slopes(config.n_heads), persistent=False)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
               is_causal: bool, attn_weights: list[torch.Tensor] | None = None) -> torch.Tensor:
        """q (B, H, T, hd), k/v (B, Hkv, S, hd) -> (B, H, T, hd); ``mask`` (padding) gets the bias added."""
        bias = alibi_bias(self.slopes, q.shape[-2], k.shape[-2]).to(q.dtype)  # (H, T, S), SDPA wants q's dtype
        return super().attend(q, k, v, combine_masks(mask, bias), is_causal, attn_weights)


class ParallelBlock(DecoderBlock):
    """x -> x + attn(norm(x)) + mlp(norm(x)), (B, T, D) -> (B, T, D), with ALiBi attention."""

    attention_cls = ALiBiAttention
    norm_slots = ("attn_norm",)  # no mlp_norm: a parameter that never gets a gradient makes DDP fail

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, is_causal: bool = True,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None, kv_cache: KVCache | None = None,
                attn_weights: list[torch.Tensor] | None = None) -> torch.Tensor:
        h = self.attn_norm(x)  # one norm feeds both branches
        attn = self.attn(h, mask=mask, is_causal=is_causal, rope=rope, kv_cache=kv_cache, attn_weights=attn_weights)
        return x + attn + self.mlp(h)


@register_architecture
class ALiBiParallelLM(TransformerLM):
    """Decoder-only LM of :class:`ParallelBlock` s; ``forward(input_ids (B, T)) -> logits (B, T, V)``."""

    block_cls = ParallelBlock

    def __init__(self, config: ModelConfig) -> None:
        if config.pos_encoding != "alibi":  # RoPE or learned positions on top of ALiBi would be another model
            raise ConfigError(f"ALiBiParallelLM needs pos_encoding='alibi', got {config.pos_encoding!r}; "
                              "pass --set pos_encoding=alibi (or ModelConfig(..., pos_encoding='alibi')).")
        super().__init__(config)


if __name__ == "__main__":
    torch.manual_seed(0)
    config = ModelConfig.from_preset("debug", pos_encoding="alibi")  # 2 layers, 4 heads (2 kv heads), d 32
    model = ALiBiParallelLM(config).eval()
    assert model.blocks[0].mlp_norm is None and model.pos_embeddings is None and model.rotary is None
    prompts = torch.randint(0, config.vocab_size, (2, 8))
    print(f"{type(model).__name__}: {model.num_parameters():,} parameters; logits {tuple(model(prompts).shape)}")
    print("slopes of 4 heads:", alibi_slopes(4).tolist())
    cached = model.generate(prompts, max_new_tokens=24)  # prefill, then one token per step from the KV cache
    uncached = model.generate(prompts, max_new_tokens=24, use_cache=False)  # the whole sequence every step
    assert torch.equal(cached, uncached), "cached decoding differs from uncached decoding"
    print("greedy, cached == uncached:", cached[0, 8:].tolist())
