"""Hugging Face tokenizer directories: reading their configs, their sentencepiece ``tokenizer.model``, and
writing the files ``transformers.AutoTokenizer`` reads.

Which file of a Hugging Face directory :func:`~llmcore.tokenizer.load_tokenizer` reads (when the directory
has no llmcore ``llmcore_tokenizer.json`` and no ``tokenizer/`` subdirectory):

1. ``tokenizer.json`` (the `tokenizers` library's file: GPT-2 byte-level BPE, Llama, ...) when `tokenizers`
   is installed (``pip install 'llmcore[hf]'``), as an :class:`~llmcore.tokenizer.HFTokenizer`; this is the
   file ``AutoTokenizer`` itself uses, so the ids are the same;
2. else ``tokenizer.model`` (sentencepiece, Llama / Mistral), as a ``SentencePieceTokenizer`` (this file);
3. else GPT-2's ``vocab.json`` + ``merges.txt`` (needs `tokenizers` too);
4. else a TokenizerError saying what was found, naming ``pip install 'llmcore[hf]'`` when that would help.

Special tokens come from ``special_tokens_map.json`` then ``tokenizer_config.json`` (later wins); see
:func:`named_special_tokens`.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from ..errors import TokenizerError
from ..io import atomic_write_bytes, read_json

HF_CONFIG_FILES = ("special_tokens_map.json", "tokenizer_config.json")  # read in this order, later ones win
SPM_MODEL_FILE = "tokenizer.model"
HF_TOKENIZER_FILE = "tokenizer.json"
GPT2_FILES = ("vocab.json", "merges.txt")
ROLES = ("bos", "eos", "pad", "unk")
INSTALL_HINT = "pip install 'llmcore[hf]'"


def tokenizers_available() -> bool:
    """True when the optional `tokenizers` library can be imported (checked without importing it)."""
    return importlib.util.find_spec("tokenizers") is not None


def require_tokenizers(what: str) -> Any:
    """The `tokenizers` module, imported on first use; TokenizerError naming the install command if missing."""
    try:
        import tokenizers
    except ImportError:
        raise TokenizerError(f"{what} needs the Hugging Face `tokenizers` library, which is not installed; "
                             f"run {INSTALL_HINT}") from None
    return tokenizers


def named_special_tokens(path: Path) -> dict[str, str | None]:
    """Role ("bos", "eos", "pad", "unk") -> token string, as the directory's HF configs name them.

    A role a config sets to ``null`` maps to None (explicitly absent); a role no config mentions is left out.
    """
    named: dict[str, str | None] = {}
    for name in HF_CONFIG_FILES:
        if (path / name).is_file():
            cfg = read_json(path / name, "Hugging Face tokenizer config", TokenizerError)
            for role in ROLES:
                if f"{role}_token" in cfg:
                    named[role] = _token_text(cfg[f"{role}_token"])
    return named


def read_tokenizer_config(path: Path) -> dict[str, Any]:
    """The directory's ``tokenizer_config.json`` ({} when absent), kept so an export writes it back."""
    f = path / "tokenizer_config.json"
    return read_json(f, "Hugging Face tokenizer config", TokenizerError) if f.is_file() else {}


def write_hf_configs(directory: Path, config: dict[str, Any], roles: dict[str, str | None]) -> None:
    """Write ``tokenizer_config.json`` (``config`` with the role tokens set) and ``special_tokens_map.json``."""
    config = dict(config)
    specials = {f"{role}_token": token for role, token in roles.items() if token is not None}
    config.update({f"{role}_token": roles.get(role) for role in ROLES if f"{role}_token" in config or roles.get(role)})
    for name, data in (("tokenizer_config.json", config), ("special_tokens_map.json", specials)):
        atomic_write_bytes(directory / name, (json.dumps(data, ensure_ascii=False, indent=2) + "\n").encode())


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
