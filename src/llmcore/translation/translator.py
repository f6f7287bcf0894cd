"""Translator: batched text → text translation with a saved encoder-decoder or a decoder-only model.

Two kinds of model translate here, told apart by the ``architecture`` in ``config.json``:

* :class:`~llmcore.models.seq2seq.Seq2SeqTransformer` — the source ``encode(src) + [eos]`` goes to the
  encoder; decoding starts from the target-language tag (e.g. ``<2zh>``) and stops at ``<eos>``.
* :class:`~llmcore.models.TransformerLM` fine-tuned on pairs (:class:`llmcore.finetune.PairDataset`) — the
  prompt is ``[<bos>] [src tag] template(src) [tgt tag]`` exactly as PairDataset builds it, and the model
  continues it up to ``<eos>``.

The tags and template come from ``model.config.extra["translation"]`` (written by the training scripts,
checked by :func:`saved_settings`) with defaults ``<2en>`` / ``<2zh>`` / ``"{src}"``. The target tag must be
a single token of the tokenizer, otherwise :class:`~llmcore.errors.TokenizerError`: such a model was not
trained to translate.

A model trained on memory-augmented sources (``config.extra["translation"]["memory"] == "shipped-train"``, see
:mod:`llmcore.translation.fuzzy`) gets each input as ``"{src} <fmK> {match}"``, the match found in the
translation memory of the shipped training split (built on first use, a few seconds; or pass ``memory=``).

Sources longer than the model's context are cut at the end with a warning (``too_long="truncate"``, the
default) or refused with :class:`~llmcore.errors.DataError` (``too_long="error"``); empty sources are refused.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, ConfigError, DataError
from ..finetune.pairs import check_template
from ..generation import generate
from ..io import CONFIG_NAME
from ..modules import eval_mode
from ..tokenizer import language_tag_id
from .fuzzy import augment_sources

# memory: None, or "shipped-train" for a model trained on memory-augmented sources (llmcore.translation.fuzzy)
DEFAULTS = {"src_lang_tag": "<2en>", "tgt_lang_tag": "<2zh>", "template": "{src}", "memory": None}


def load_translation_model(directory: str | Path, device: str = "cpu") -> torch.nn.Module:
    """The translator model in ``directory``: a Seq2SeqTransformer, or a decoder-only LM (any registered
    architecture, e.g. a TransformerLM or LSTMLM fine-tuned on translation pairs)."""
    from ..bundled import missing_hint, resolve_model_dir
    from ..finetune.lora import is_adapter_dir, load_adapter_model
    from ..models import load_model
    from ..models.classifier import SequenceClassifier

    d = resolve_model_dir(directory)
    if is_adapter_dir(d) and not (d / CONFIG_NAME).is_file():  # a LoRA fine-tune: its base plus the adapter
        model = load_adapter_model(d, device=device)
    elif not (d / CONFIG_NAME).is_file():
        raise CheckpointError(f"{d} has no {CONFIG_NAME}; pass a model directory written by save_pretrained."
                              + missing_hint())
    else:
        model = load_model(d, device=device)
    if isinstance(model, SequenceClassifier):
        raise CheckpointError(f"{d} holds a SequenceClassifier; translation needs a Seq2SeqTransformer, or a "
                              "decoder-only LM fine-tuned on translation pairs.")
    return model


def saved_settings(config: Any) -> dict[str, str | None]:
    """``config.extra["translation"]``, checked: only the keys of :data:`DEFAULTS`, each a string or None."""
    saved = getattr(config, "extra", {}).get("translation", {})
    if not isinstance(saved, dict):
        raise ConfigError(f"config.extra['translation'] is {saved!r}, not a dict.")
    problems = [f"unknown key {k!r}" for k in sorted(set(saved) - set(DEFAULTS))]
    problems += [f"{k}={v!r} is not a string" for k, v in saved.items()
                 if k in DEFAULTS and v is not None and not isinstance(v, str)]
    if problems:
        raise ConfigError(f"config.extra['translation']: {'; '.join(problems)}. It holds string values for "
                          f"{', '.join(DEFAULTS)}.")
    return saved


class Translator:
    """Translate lists of sentences with ``model`` and ``tokenizer``; see the module docstring."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, src_lang_tag: str | None = None,
                 tgt_lang_tag: str | None = None, template: str | None = None, memory: Any = None) -> None:
        from ..models.seq2seq import Seq2SeqTransformer
        from .fuzzy import FUZZY_TAGS, SHIPPED_MEMORY

        settings = {**DEFAULTS, **saved_settings(model.config)}
        for key, value in (("src_lang_tag", src_lang_tag), ("tgt_lang_tag", tgt_lang_tag), ("template", template)):
            if value is not None:
                settings[key] = value
        settings["template"] = check_template(settings["template"], "Translation template")  # may come from config.json
        self.model, self.tokenizer, self.settings = model, tokenizer, settings
        self.seq2seq = isinstance(model, Seq2SeqTransformer)
        self.tgt_id = language_tag_id(tokenizer, settings["tgt_lang_tag"], "target-language tag")
        self.src_id = None
        if not self.seq2seq and settings["src_lang_tag"]:
            self.src_id = language_tag_id(tokenizer, settings["src_lang_tag"], "source-language tag")
        if tokenizer.eos_id is None:
            raise DataError("The tokenizer has no <eos>; a translation model needs it to end its output.")
        if settings["memory"] not in (None, SHIPPED_MEMORY):
            raise ConfigError(f"config.extra['translation']['memory'] is {settings['memory']!r}; the only memory "
                              f"a saved model can name is {SHIPPED_MEMORY!r} (or null for none).")
        if settings["memory"] is not None:
            for tag in FUZZY_TAGS:
                language_tag_id(tokenizer, tag, "memory-match tag")
        self._memory = memory  # a TranslationMemory; the shipped one is built on first use
        self.max_len = model.config.max_seq_len
        self.device = next(model.parameters()).device

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str = "cpu", **kwargs: Any) -> Translator:
        """Load model and tokenizer (``DIR/tokenizer``) from a saved directory."""
        from ..tokenizer import load_tokenizer

        # a bundled name ("en-zh") or a directory: both loaders resolve it (llmcore.bundled)
        return cls(load_translation_model(directory, device), load_tokenizer(directory), **kwargs)

    @property
    def memory(self) -> Any:
        """The translation memory a memory-augmented model reads its matches from (None for other models)."""
        if self._memory is None and self.settings["memory"] is not None:
            from .fuzzy import shipped_memory

            self._memory = shipped_memory()
        return self._memory

    def _source_ids(self, text: str, index: int, budget: int, too_long: str, match: str = "") -> list[int]:
        """Token ids of one source (prompt, for a decoder-only model), cut to ``budget`` tokens if allowed.
        ``match``: the memory's `` <fmK> {zh}`` suffix of a memory-augmented model, cut silently to fit (as in
        training); only the sentence itself is held to the budget."""
        def encode(s: str) -> list[int]:
            return list(self.tokenizer.encode(s if self.seq2seq else self.settings["template"].format(src=s)))

        ids = encode(text)
        if len(ids) > budget:
            if too_long == "error":
                raise DataError(f"Input {index + 1} has {len(ids)} tokens but the model's source context holds "
                                f"{budget}; shorten it, split it into sentences, or allow truncation.")
            warnings.warn(f"Input {index + 1} has {len(ids)} tokens; only the first {budget} are translated "
                          f"(the model's context is {self.max_len}).", stacklevel=3)
        if match:
            ids = encode(text + match)
        ids = ids[:budget]
        if self.seq2seq:
            return ids + [self.tokenizer.eos_id]
        bos = [self.tokenizer.bos_id] if self.tokenizer.bos_id is not None else []
        return bos + ([self.src_id] if self.src_id is not None else []) + ids + [self.tgt_id]

    def translate(self, texts: str | Sequence[str], num_beams: int = 1, max_new_tokens: int | None = None,
                  batch_size: int = 32, too_long: str = "truncate", **generate_kwargs: Any) -> list[str]:
        """Translate each text; returns one string per input, in order.

        Args:
            num_beams: 1 for greedy decoding, more for beam search.
            max_new_tokens: output budget per sentence; default 2 × source tokens + 10, within the context.
            batch_size: sentences decoded together (sorted by length to waste little padding).
            too_long: ``"truncate"`` (warn and cut) or ``"error"`` for sources beyond the context.
            generate_kwargs: other :func:`llmcore.generation.generate` options (e.g. ``length_penalty``).
        """
        if too_long not in ("truncate", "error"):
            raise DataError(f"too_long={too_long!r} must be 'truncate' or 'error'.")
        texts = [texts] if isinstance(texts, str) else list(texts)
        for i, text in enumerate(texts):
            if not text.strip():
                raise DataError(f"Input {i + 1} is empty; give one non-empty sentence per line.")
        matches = [""] * len(texts)
        if self.settings["memory"] is not None:  # "{src} <fmK> {zh}": keep the suffix apart from the sentence
            matches = [a[len(t):] for a, t in zip(augment_sources(self.memory, texts), texts)]
        # Encoder-decoder: the source may use the whole context (minus eos). Decoder-only: prompt and output
        # share it, so keep at least half for the output.
        budget = self.max_len - 1 if self.seq2seq else self.max_len // 2 - 3
        ids = [self._source_ids(t, i, budget, too_long, m) for i, (t, m) in enumerate(zip(texts, matches))]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out: list[str] = [""] * len(ids)
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            for i, text in zip(chunk, self._translate_batch([ids[i] for i in chunk], num_beams, max_new_tokens,
                                                            generate_kwargs)):
                out[i] = text
        return out

    @torch.no_grad()
    def _translate_batch(self, batch: list[list[int]], num_beams: int, max_new_tokens: int | None,
                         generate_kwargs: dict[str, Any]) -> list[str]:
        tok, B, L = self.tokenizer, len(batch), max(len(s) for s in batch)
        pad = tok.fill_id
        ids = torch.full((B, L), pad, dtype=torch.long)
        mask = torch.zeros((B, L), dtype=torch.long)
        for r, s in enumerate(batch):  # right padding for the encoder, left padding for a decoder prompt
            cols = slice(0, len(s)) if self.seq2seq else slice(L - len(s), L)
            ids[r, cols], mask[r, cols] = torch.tensor(s), 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        room = self.max_len - 1 if self.seq2seq else self.max_len - L
        n = min(max_new_tokens or 2 * L + 10, room)
        opts = dict(max_new_tokens=n, num_beams=num_beams, eos_token_id=tok.eos_id, pad_token_id=pad)
        opts.update(generate_kwargs)
        with eval_mode(self.model):  # the encoder pass too: dropout off, the caller's mode kept
            if self.seq2seq:
                seqs = self.model.generate(ids, mask, decoder_start_ids=self.tgt_id, **opts)[:, 1:]
            else:
                seqs = generate(self.model, ids, mask, **opts)[:, L:]
        texts = []
        for row in seqs.tolist():
            row = row[:row.index(tok.eos_id)] if tok.eos_id in row else row
            texts.append(tok.decode(row).strip())
        return texts
