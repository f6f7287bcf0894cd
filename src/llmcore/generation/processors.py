"""Logits processors: small pure functions that reshape next-token scores before a token is picked.

Every processor, once its options are bound (``functools.partial``), has the signature

    processor(input_ids (B, T), logits (B, V)) -> logits (B, V)

where ``input_ids`` is everything so far (prompt + generated) and ``logits`` the scores of the next token.
Processors never modify their inputs in place. Removed tokens get ``-inf``. :func:`build_processors` turns a
:class:`GenerationConfig` into the list applied at every step, in this order (Hugging Face's order, so a
seeded sampling run can match ``transformers`` token for token):

1. ``repetition_penalty``    — always (greedy, sampling, beams)
2. ``no_repeat_ngram``       — always
3. ``suppress_eos`` until ``min_new_tokens`` tokens were generated — always
4. ``openai_penalties`` (``presence_penalty`` / ``frequency_penalty``) — always (HF has no such processor;
   as vLLM, they count the generated tokens only)
5. ``add_logit_bias``        — always (after the penalties, so a bias of -100 or 100 has the last word)
6. user callables (``logits_processors=[fn, ...]``), in the order given
7. ``apply_temperature``     — sampling only
8. ``top_k_filter``          — sampling only (commutes with 7: scaling keeps the ranking, so this is also
   litgpt's documented top_k → temperature → top_p)
9. ``top_p_filter``          — sampling only, on the temperature-scaled distribution
10. ``min_p_filter``         — sampling only, after temperature (as llama.cpp and HF do)

Beam search applies the same list to log-probabilities (log_softmax of the logits), as HF does.

References: Keskar et al. 2019 (CTRL repetition penalty), Holtzman et al. 2020 (nucleus sampling),
Nguyen et al. 2024 (min-p sampling); HF ``logits_process.py`` for the exact tie and boundary rules.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch

from ..errors import GenerationError
from .config import GenerationConfig

Processor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
NEG_INF = float("-inf")


# ---------------------------------------------------------------------- always-on processors
def repetition_penalty(input_ids: torch.Tensor, logits: torch.Tensor, penalty: float,
                       ignore_before: torch.Tensor | None = None) -> torch.Tensor:
    """Penalise tokens already in ``input_ids`` once each: positive logits / penalty, negative × penalty.

    ``ignore_before`` (B,) skips the first positions of each row (left padding is not "seen" text).
    """
    V = logits.shape[-1]
    ids = input_ids
    if ignore_before is not None:  # send padding positions to an extra, discarded column V
        pos = torch.arange(ids.shape[1], device=ids.device)
        ids = ids.masked_fill(pos[None, :] < ignore_before[:, None], V)
    seen = torch.zeros(logits.shape[0], V + 1, dtype=torch.bool, device=logits.device)
    seen.scatter_(1, ids, True)
    penalised = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(seen[:, :V], penalised, logits)


def no_repeat_ngram(input_ids: torch.Tensor, logits: torch.Tensor, n: int,
                    ignore_before: torch.Tensor | None = None) -> torch.Tensor:
    """Forbid every token that would complete an n-gram already present in the row.

    The last n-1 tokens are compared with every earlier window (vectorised, no Python loop over rows);
    windows starting before ``ignore_before`` (B,) (left padding) are ignored.
    """
    B, T = input_ids.shape
    V = logits.shape[-1]
    if T < n:
        return logits
    if n == 1:  # every token seen so far is banned
        windows_last = input_ids
        match = torch.ones_like(input_ids, dtype=torch.bool)
        starts = torch.arange(T, device=input_ids.device)
    else:
        windows = input_ids.unfold(1, n, 1)  # (B, T-n+1, n)
        prefix = input_ids[:, T - n + 1:]  # (B, n-1): the tokens the next one would extend
        match = (windows[:, :, :-1] == prefix[:, None, :]).all(-1)  # (B, W)
        windows_last = windows[:, :, -1]
        starts = torch.arange(windows.shape[1], device=input_ids.device)
    if ignore_before is not None:
        match = match & (starts[None, :] >= ignore_before[:, None])
    banned = torch.zeros(B, V + 1, dtype=torch.bool, device=logits.device)
    banned.scatter_(1, windows_last.masked_fill(~match, V), True)
    return logits.masked_fill(banned[:, :V], NEG_INF)


def suppress_eos(input_ids: torch.Tensor, logits: torch.Tensor, eos_ids: Sequence[int], prompt_len: int,
                 min_new_tokens: int) -> torch.Tensor:
    """Forbid EOS while fewer than ``min_new_tokens`` tokens follow the ``prompt_len``-token prompt."""
    if input_ids.shape[1] - prompt_len >= min_new_tokens:
        return logits
    out = logits.clone()
    out[:, list(eos_ids)] = NEG_INF
    return out


# ---------------------------------------------------------------------- sampling warpers
def openai_penalties(input_ids: torch.Tensor, logits: torch.Tensor, presence: float, frequency: float,
                     prompt_len: int) -> torch.Tensor:
    """OpenAI's penalties: ``logit[j] - frequency * count[j] - presence * (count[j] > 0)``, where ``count[j]``
    is how often token j occurs in each row's generated part (``input_ids[:, prompt_len:]``)."""
    generated = input_ids[:, prompt_len:]
    counts = torch.zeros(logits.shape, dtype=logits.dtype, device=logits.device)
    counts.scatter_add_(1, generated, torch.ones(generated.shape, dtype=logits.dtype, device=logits.device))
    return logits - frequency * counts - presence * (counts > 0).to(logits.dtype)


def add_logit_bias(input_ids: torch.Tensor, logits: torch.Tensor, bias: dict[int, float]) -> torch.Tensor:
    """``logits`` plus ``bias[j]`` for each token id j in ``bias`` (ids beyond the vocabulary are an error)."""
    ids = torch.tensor(list(bias), dtype=torch.long, device=logits.device)
    if ids.numel() and int(ids.max()) >= logits.shape[-1]:
        raise GenerationError(f"logit_bias names token id {int(ids.max())}, outside the vocabulary of "
                              f"{logits.shape[-1]}; use ids the tokenizer produces.")
    values = torch.tensor(list(bias.values()), dtype=logits.dtype, device=logits.device)
    return logits.index_add(1, ids, values.expand(logits.shape[0], -1))


def apply_temperature(input_ids: torch.Tensor, logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """logits / temperature (> 1 flattens the distribution, < 1 sharpens it)."""
    return logits / temperature


def top_k_filter(input_ids: torch.Tensor, logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k highest logits per row (tokens tied with the k-th are kept too, as in HF)."""
    k = min(k, logits.shape[-1])
    kth = torch.topk(logits, k, dim=-1).values[:, -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, NEG_INF)


def top_p_filter(input_ids: torch.Tensor, logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter: keep the smallest set of most likely tokens whose total probability reaches ``p``.

    Sorted ascending, a token is dropped when the mass of it and everything less likely is ≤ 1 - p;
    the most likely token is always kept.
    """
    sorted_logits, order = torch.sort(logits, descending=False)
    cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    drop_sorted = cum <= (1 - p)
    drop_sorted[:, -1] = False
    drop = drop_sorted.scatter(1, order, drop_sorted)
    return logits.masked_fill(drop, NEG_INF)


def min_p_filter(input_ids: torch.Tensor, logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """Drop tokens whose probability is below ``min_p`` × the most likely token's probability."""
    probs = logits.softmax(dim=-1)
    threshold = min_p * probs.amax(dim=-1, keepdim=True)
    drop = probs < threshold
    drop.scatter_(1, probs.argmax(dim=-1, keepdim=True), False)  # the top token always survives
    return logits.masked_fill(drop, NEG_INF)


# ---------------------------------------------------------------------- composition
def build_processors(config: GenerationConfig, prompt_len: int, eos_ids: Sequence[int] = (),
                     pad_lengths: torch.Tensor | None = None,
                     extra: Sequence[Processor] | None = None) -> list[Processor]:
    """The processors a config asks for, in the documented order (see the module docstring).

    Args:
        prompt_len: T of the (padded) prompt; ``min_new_tokens`` counts from there.
        eos_ids: resolved EOS ids (``min_new_tokens`` suppresses them).
        pad_lengths: (B,) left-padding length of each row; padding does not count as seen text.
        extra: user processors, run after the built-in ones and before the sampling warpers.
    """
    procs: list[Processor] = []
    if config.repetition_penalty != 1.0:
        procs.append(partial(repetition_penalty, penalty=config.repetition_penalty, ignore_before=pad_lengths))
    if config.no_repeat_ngram_size > 0:
        procs.append(partial(no_repeat_ngram, n=config.no_repeat_ngram_size, ignore_before=pad_lengths))
    if config.min_new_tokens > 0 and eos_ids:
        procs.append(partial(suppress_eos, eos_ids=list(eos_ids), prompt_len=prompt_len,
                             min_new_tokens=config.min_new_tokens))
    if config.presence_penalty or config.frequency_penalty:
        procs.append(partial(openai_penalties, presence=config.presence_penalty, frequency=config.frequency_penalty,
                             prompt_len=prompt_len))
    if config.logit_bias:
        procs.append(partial(add_logit_bias, bias=dict(config.logit_bias)))
    procs.extend(extra or ())
    if config.is_sampling:
        if config.temperature != 1.0:
            procs.append(partial(apply_temperature, temperature=config.temperature))
        if config.top_k:
            procs.append(partial(top_k_filter, k=config.top_k))
        if config.top_p < 1.0:
            procs.append(partial(top_p_filter, p=config.top_p))
        if config.min_p:
            procs.append(partial(min_p_filter, min_p=config.min_p))
    return procs


def apply_processors(processors: Sequence[Processor], input_ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Run ``processors`` left to right."""
    for proc in processors:
        logits = proc(input_ids, logits)
    return logits


def sample_next(logits: torch.Tensor, sample: bool, generator: torch.Generator | None = None,
                step: int | None = None) -> torch.Tensor:
    """Pick one token per row from processed logits (B, V) -> (B,): argmax, or a draw from softmax(logits).

    When sampling, probabilities that are not finite (NaN or inf logits from the model) raise
    :class:`GenerationError` naming ``step`` (one ``isfinite`` check per step; the greedy path adds no host
    sync here: the decode loop checks its logits with :func:`nonfinite_rows` at the points it syncs anyway).
    """
    if not sample:
        return logits.argmax(dim=-1)
    probs = logits.softmax(dim=-1)
    if not bool(torch.isfinite(probs).all()):
        raise nonfinite_error(step)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)


def nonfinite_rows(logits: torch.Tensor) -> torch.Tensor:
    """(B,) bool on the logits' device, True where a row holds NaN or +inf (no host sync).

    One pass over (B, V): the row maximum is NaN when any entry is (amax propagates NaN) and +inf when any
    entry is, and neither compares below +inf."""
    return ~(logits.amax(dim=-1) < float("inf"))


def nonfinite_error(step: int | None) -> GenerationError:
    at = f" at generation step {step}" if step is not None else ""
    return GenerationError(f"The model produced non-finite logits (NaN or inf){at}: its weights are NaN/inf or it "
                           "diverged; check the checkpoint (re-save or re-train it) or use a lower learning rate.")
