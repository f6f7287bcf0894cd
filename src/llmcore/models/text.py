"""``generate_text``: text in, text out, for scripts and notebooks.

It joins the three steps a caller would otherwise write (``tokenizer.encode`` → :func:`llmcore.generation.
generate` → ``tokenizer.decode``) and loads a model directory when given a path. It lives in ``models`` (not
``generation``) because loading a directory needs :func:`~llmcore.models.load_model`, and ``generation`` never
imports ``models`` (docs/architecture.md).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import GenerationError
from ..generation.config import GenerationConfig


def _tokenizer_for(directory: Path) -> Any:
    from ..tokenizer import load_tokenizer

    return load_tokenizer(directory)  # DIR/tokenizer or DIR itself, as ``llmcore generate`` looks


def generate_text(model_or_dir: nn.Module | str | os.PathLike, prompt: str | list[str], tokenizer: Any = None,
                  *, add_bos: bool = False, device: str | torch.device | None = None,
                  **generation_kwargs: Any) -> str | list[str] | list[list[str]]:
    """Continue ``prompt`` and return the generated text (the continuation only, without the prompt).

    Args:
        model_or_dir: a model (any module with the :mod:`llmcore.generation` protocol) or a model directory,
            loaded with :func:`~llmcore.models.load_model` (its tokenizer from ``DIR/tokenizer`` or ``DIR``).
        prompt: one string, or a list of strings decoded as one left-padded batch (each row gets the text
            it would get alone).
        tokenizer: anything with ``encode(text, add_bos=...)`` / ``decode(ids)``; required with a model object,
            optional with a directory (it overrides the saved one).
        add_bos: prepend the tokenizer's BOS id to each prompt.
        device: where to load a model directory (default: cpu); a model object stays where it is.
        generation_kwargs: :class:`~llmcore.generation.GenerationConfig` fields (``max_new_tokens=50``,
            ``do_sample=True, temperature=0.8``, ``stop_strings="\\n"``, ...) or ``config=``.

    Returns:
        ``str`` for a string prompt, ``list[str]`` (one per prompt) for a list; with
        ``num_return_sequences=R > 1`` each of those becomes a list of R strings. Each text is the decoded
        new tokens up to and including the one that finished the row (EOS tokens are not rendered).
    """
    from ..generation import generate
    from ..generation.runner import continuations

    if isinstance(model_or_dir, (str, os.PathLike)):
        from ..bundled import resolve_model_dir
        from .pretrained import load_model

        directory = resolve_model_dir(model_or_dir)  # a bundled name ("zh-lm") or a directory
        model = load_model(directory, device=device or "cpu")
        tokenizer = tokenizer if tokenizer is not None else _tokenizer_for(directory)
    else:
        model = model_or_dir
        if tokenizer is None:
            raise GenerationError("generate_text() got a model object but no tokenizer; pass tokenizer=... "
                                  "(or a model directory, whose saved tokenizer is loaded).")
    single = isinstance(prompt, str)
    prompts = [prompt] if single else list(prompt)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise GenerationError("generate_text() needs a prompt string or a non-empty list of strings, got "
                              f"{prompt!r}.")
    rows = [tokenizer.encode(p, add_bos=add_bos) for p in prompts]
    T = max(len(r) for r in rows)
    pad = getattr(tokenizer, "pad_id", None)
    pad = 0 if pad is None else pad  # any id: padded positions are masked out
    param = next(iter(model.parameters()), None)
    dev = param.device if param is not None else torch.device("cpu")
    ids = torch.tensor([[pad] * (T - len(r)) + r for r in rows], dtype=torch.long, device=dev)
    mask = None
    if any(len(r) < T for r in rows):
        mask = torch.tensor([[0] * (T - len(r)) + [1] * len(r) for r in rows], dtype=torch.long, device=dev)
    seq = generate(model, ids, mask, tokenizer=tokenizer, **generation_kwargs)
    width = max(T, 1)  # an empty prompt became the BOS token
    fields = {f.name for f in dataclasses.fields(GenerationConfig)}  # what also decides where a row ended
    options = {k: v for k, v in generation_kwargs.items() if k in fields}
    ends = continuations(model, seq, width, generation_kwargs.get("config"), tokenizer, **options)
    texts = [tokenizer.decode(new) for new in ends]
    per = len(texts) // len(prompts)  # num_return_sequences
    grouped: list[Any] = texts if per == 1 else [texts[i * per:(i + 1) * per] for i in range(len(prompts))]
    return grouped[0] if single else grouped
