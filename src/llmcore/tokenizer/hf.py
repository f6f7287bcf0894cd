"""Hugging Face tokenizer directories: the sentencepiece ``tokenizer.model`` Llama-family checkpoints ship.

:func:`load_tokenizer` comes here for a directory with a ``tokenizer.model`` and no llmcore settings file;
the special tokens named by the directory's ``special_tokens_map.json`` / ``tokenizer_config.json`` are
checked against the model (bos / eos must agree; a pad the model lacks is taken from the config).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import TokenizerError
from ..io import read_json

HF_CONFIG_FILES = ("special_tokens_map.json", "tokenizer_config.json")  # read in this order, later ones win
SPM_MODEL_FILE = "tokenizer.model"


def _token_text(value: Any) -> str | None:
    """A special token as Hugging Face stores it: a string, or an AddedToken dict with ``content``."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def hf_sentencepiece(path: Path, spm: Any) -> Any:
    """The sentencepiece ``tokenizer.model`` of a Hugging Face directory (``spm``: the tokenizer class that
    reads it), its special tokens checked.

    bos / eos named by ``special_tokens_map.json`` / ``tokenizer_config.json`` must be the model's own bos / eos
    pieces; a named pad token is used when the model has none (Llama-style models often pad with ``<unk>`` or
    ``</s>``), and must match when it has one.
    """
    named: dict[str, str] = {}
    for name in HF_CONFIG_FILES:
        if (path / name).is_file():
            cfg = read_json(path / name, "Hugging Face tokenizer config", TokenizerError)
            for role in ("bos", "eos", "pad"):
                token = _token_text(cfg.get(f"{role}_token"))
                if token is not None:
                    named[role] = token
    tok = spm._from_dir(path / SPM_MODEL_FILE, {})
    if "pad" in named and tok.pad_id is None:
        tok = spm._from_dir(path / SPM_MODEL_FILE, {"pad_token": named["pad"]})
    for role, token in named.items():
        try:
            want = tok.token_to_id(token)
        except TokenizerError:
            want = None
        have = getattr(tok, f"{role}_id")
        if want is None or want != have:
            raise TokenizerError(
                f"{path}: the Hugging Face config names {role}_token {token!r} (id {want}), but "
                f"{SPM_MODEL_FILE}'s {role} id is {have}. llmcore takes the special tokens from the sentencepiece "
                "model and loads only directories where the two agree; fix the config or use the model's tokens.")
    return tok
