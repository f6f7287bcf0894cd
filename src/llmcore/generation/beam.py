"""Beam search, vectorised over rows and beams, with Hugging Face's scoring and stopping rules.

Each row keeps ``num_beams`` running hypotheses and up to ``num_beams`` finished ones. At every step:

1. log-probabilities of the next token for every running beam (after the logits processors) are added to
   the beam's running score, and the best ``2 · num_beams`` (more with several EOS ids) of the
   ``num_beams · V`` continuations become candidates — enough that ``num_beams`` unfinished ones remain even
   if the best all end in EOS;
2. candidates that end (EOS, a stop string, or the length limit) are set aside; the best ``num_beams`` of
   the others continue, and the KV cache rows are reordered to follow them (``cache.reorder``);
3. ending candidates among the best ``num_beams`` compete for the finished slots with score
   ``sum_logprobs / generated_len ** length_penalty``, where ``generated_len`` counts the new tokens
   (prompt excluded), as current ``transformers`` (≥ 4.38) does for decoder-only models too.

A row stops improving when its best running beam, scored as if it finished now (``early_stopping=False``)
or at the longest length (``"never"`` with a positive length penalty), cannot beat its worst finished one;
with ``early_stopping=True`` it stops once ``num_beams`` hypotheses finished. Decoding ends when no row can
improve, or every candidate ended. This reproduces ``transformers``' ``_beam_search`` decisions step for step
(the parity tests compare the outputs).

Reference: HF ``generation/utils.py`` (``_beam_search`` and helpers).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..modules import eval_mode
from .config import GenerationConfig
from .processors import Processor, apply_processors, build_processors, nonfinite_error, nonfinite_rows
from .runner import ModelRunner, grow, hits_stop_string, prepare, resolve_config, room

_NEG = -1.0e9  # "impossible" score; finite so sums and comparisons stay well defined


@torch.no_grad()
def beam_search(model: torch.nn.Module, input_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, config: GenerationConfig | None = None,
                tokenizer: Any = None, logits_processors: Sequence[Processor] | None = None,
                model_kwargs: dict[str, Any] | None = None, return_scores: bool = False,
                inputs_embeds: torch.Tensor | None = None,
                **overrides: Any) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Beam search over ``config.num_beams`` beams per row (same arguments as :func:`generate`).

    ``inputs_embeds`` (B, P, D) is a prefix in front of ``input_ids`` (or the whole prompt); all beams of a row
    share it, and the returned hypotheses hold ids only, as :func:`generate`'s do.

    Returns:
        LongTensor (B · num_return_sequences, T + n): per row the best ``num_return_sequences`` finished
        hypotheses (prompt ids, then new tokens), best first; shorter ones are padded with ``pad_token_id``.
        With ``return_scores`` also their length-normalised scores (B · num_return_sequences,).
    """
    cfg = resolve_config(config, overrides)
    K = cfg.num_beams
    req = prepare(model, input_ids, attention_mask, cfg, tokenizer, model_kwargs, expand=K,
                  inputs_embeds=inputs_embeds)
    B = req.input_ids.shape[0] // K
    with eval_mode(model):
        seqs, scores = _search(model, req, B, K, tokenizer, logits_processors)
    return (seqs, scores) if return_scores else seqs


def _search(model: torch.nn.Module, req: Any, B: int, K: int, tokenizer: Any,
            logits_processors: Sequence[Processor] | None) -> tuple[torch.Tensor, torch.Tensor]:
    cfg = req.config
    T = req.input_ids.shape[1]
    P = req.prefix_len  # prefix positions: in the mask and the model's positions, not in the id buffers
    L = T + cfg.max_new_tokens  # the length limit (of the ids)
    R = cfg.num_return_sequences
    device = req.input_ids.device
    if cfg.max_new_tokens == 0:
        return req.input_ids.view(B, K, T)[:, :R].reshape(B * R, T), torch.zeros(B * R, device=device)

    # Buffers hold room(T, max_new_tokens) positions and grow as the beams lengthen (never T + a huge max).
    running = torch.full((B, K, room(T, cfg.max_new_tokens)), req.pad_id, dtype=torch.long, device=device)
    running[:, :, :T] = req.input_ids.view(B, K, T)
    run_scores = torch.zeros(B, K, device=device)
    run_scores[:, 1:] = _NEG  # all beams start identical: only the first may expand at step one
    fin_seqs = running.clone()
    fin_scores = torch.full((B, K), _NEG, device=device)
    fin_done = torch.zeros(B, K, dtype=torch.bool, device=device)
    fin_len = torch.zeros(B, K, dtype=torch.long, device=device)  # generated tokens of each finished hypothesis
    improvable = torch.ones(B, 1, dtype=torch.bool, device=device)

    n_cand = max(2, 1 + len(req.eos_ids)) * K
    top_k_mask = torch.arange(n_cand, device=device) < K  # only the best K candidates may finish
    eos = torch.tensor(req.eos_ids, dtype=torch.long, device=device) if req.eos_ids else None
    row_offset = torch.arange(B, device=device)[:, None] * K  # beam b of row r is flat row r*K + b
    mask = None
    if req.mask is not None:  # beams of a row share its prompt mask; new positions are real tokens
        mask = torch.ones(B * K, P + running.shape[-1], dtype=req.mask.dtype, device=device)  # (B*K, P + ids)
        mask[:, :P + T] = req.mask
    procs = build_processors(cfg, T, req.eos_ids, req.pad_lengths, logits_processors)
    window = req.max_seq_len if cfg.sliding_window else None
    runner = ModelRunner(model, B * K, P + L, cfg.use_cache, window, req.model_kwargs, req.prefix)

    cur = T
    while True:
        if cur >= running.shape[-1]:  # the next token does not fit: widen every per-position buffer
            running = grow(running, cur + 1, L, req.pad_id)
            fin_seqs = grow(fin_seqs, cur + 1, L, req.pad_id)
            mask = grow(mask, P + cur + 1, P + L, 1) if mask is not None else None
        flat = running.view(B * K, running.shape[-1])
        logits = runner.logits(flat, cur, mask)  # (B*K, V)
        if bool(nonfinite_rows(logits).any()):  # beam search syncs every step anyway: one more scalar read
            raise nonfinite_error(cur - T)
        logp = torch.log_softmax(logits, dim=-1)
        if procs:
            logp = apply_processors(procs, flat[:, :cur], logp)
        V = logp.shape[-1]
        total = (logp.view(B, K, V) + run_scores[:, :, None]).view(B, K * V)

        # 1. candidates: the best n_cand continuations over all beams of a row
        cand_scores, cand_idx = torch.topk(total, n_cand, dim=-1)  # (B, n_cand), sorted
        cand_beam, cand_tok = cand_idx // V, cand_idx % V
        cand_seqs = torch.take_along_dim(running, cand_beam[:, :, None], dim=1)  # (B, n_cand, L)
        cand_seqs[:, :, cur] = cand_tok
        ended = _ended(cand_seqs, cand_tok, cur, L, T, eos, req.stops, tokenizer)  # (B, n_cand)

        # 2. the best K unfinished candidates keep running
        cont_scores = cand_scores + ended.to(torch.float32) * _NEG
        keep = torch.topk(cont_scores, K, dim=-1).indices  # (B, K)
        running = torch.take_along_dim(cand_seqs, keep[:, :, None], dim=1)
        run_scores = torch.take_along_dim(cont_scores, keep, dim=1)
        origin = (torch.take_along_dim(cand_beam, keep, dim=1) + row_offset).view(-1)

        # 3. ending candidates among the best K compete for the finished slots
        gen_len = cur + 1 - T
        just_done = ended & top_k_mask[None, :]
        norm = cand_scores / (gen_len ** cfg.length_penalty)
        rows_full = fin_done.all(dim=-1, keepdim=True) & (cfg.early_stopping is True)
        norm = norm + rows_full.to(torch.float32) * _NEG
        norm = norm + (~improvable).to(torch.float32) * _NEG
        norm = norm + (~just_done).to(torch.float32) * _NEG
        best = torch.topk(torch.cat([fin_scores, norm], dim=1), K, dim=-1).indices  # (B, K)
        fin_seqs = torch.take_along_dim(torch.cat([fin_seqs, cand_seqs], dim=1), best[:, :, None], dim=1)
        fin_scores = torch.take_along_dim(torch.cat([fin_scores, norm], dim=1), best, dim=1)
        fin_done = torch.take_along_dim(torch.cat([fin_done, just_done], dim=1), best, dim=1)
        fin_len = torch.take_along_dim(torch.cat([fin_len, torch.full_like(cand_tok, gen_len)], dim=1), best, dim=1)

        runner.reorder(origin)
        cur += 1
        improvable = improvable & _can_improve(run_scores, fin_scores, fin_done, cur - T, L - T, cfg)
        rows_open = not (bool(fin_done.all()) and cfg.early_stopping is True)
        if not (bool(improvable.any()) and rows_open and not bool(ended.all())):
            break

    out_len = T + int(fin_len[:, :R].max())
    return fin_seqs[:, :R, :out_len].reshape(B * R, out_len), fin_scores[:, :R].reshape(B * R)


def _ended(cand_seqs: torch.Tensor, cand_tok: torch.Tensor, cur: int, L: int, T: int, eos: torch.Tensor | None,
           stops: list[str], tokenizer: Any) -> torch.Tensor:
    """(B, n_cand) bool: the candidate ends here (EOS, a completed stop string, or the length limit)."""
    if cur + 1 >= L:
        return torch.ones_like(cand_tok, dtype=torch.bool)
    ended = torch.isin(cand_tok, eos) if eos is not None else torch.zeros_like(cand_tok, dtype=torch.bool)
    if stops:
        gen = cand_seqs[:, :, T:cur + 1].tolist()
        hits = [[hits_stop_string(tokenizer, ids, stops) for ids in row] for row in gen]
        ended = ended | torch.tensor(hits, dtype=torch.bool, device=cand_tok.device)
    return ended


def _can_improve(run_scores: torch.Tensor, fin_scores: torch.Tensor, fin_done: torch.Tensor, cur_gen: int,
                 max_gen: int, cfg: GenerationConfig) -> torch.Tensor:
    """(B, 1): could the best running beam still beat the worst finished hypothesis of its row?"""
    best_len = max_gen if (cfg.early_stopping == "never" and cfg.length_penalty > 0.0) else cur_gen
    best_running = run_scores[:, :1] / (best_len ** cfg.length_penalty)
    worst_finished = torch.where(fin_done, fin_scores.min(dim=1, keepdim=True).values, _NEG)
    return (best_running > worst_finished).any(dim=-1, keepdim=True)
