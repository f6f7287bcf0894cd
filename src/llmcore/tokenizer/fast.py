"""``HFTokenizer``: a Hugging Face `tokenizers` tokenizer (``tokenizer.json``) with llmcore's Tokenizer interface.

It reads what ``transformers.AutoTokenizer`` reads (GPT-2 byte-level BPE, Llama-style sentencepiece-derived
BPE, WordPiece, ...) and calls the same Rust library, so ``encode`` gives the ids ``AutoTokenizer`` gives with
``add_special_tokens=False`` (bos / eos come only from ``add_bos`` / ``add_eos``, as for every llmcore
tokenizer) and ``decode`` is the library's own decoder (byte-level BPE decodes whole UTF-8 characters).

`tokenizers` is an optional dependency (``pip install 'llmcore[hf]'``), imported when a tokenizer is built.

One deliberate difference from ``AutoTokenizer``: special tokens are never matched in text (llmcore's rule),
so ``encode("<|endoftext|>")`` gives the ids of its characters, as ``AutoTokenizer(...,
split_special_tokens=True)`` does. Added tokens that are not special (user vocabulary) are matched as usual.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import TokenizerError
from ..io import MAX_JSON_BYTES, atomic_write_bytes, confined_file, read_bounded, writing
from .base import Tokenizer
from .hf import (
    GPT2_FILES,
    HF_TOKENIZER_FILE,
    ROLES,
    named_special_tokens,
    read_tokenizer_config,
    require_tokenizers,
    write_hf_configs,
)

# Conventional names, used only for roles that no config file names (a bare tokenizer.json or vocab.json).
_FALLBACK_NAMES = {
    "bos": ("<s>", "<|begin_of_text|>", "<bos>", "<|endoftext|>"),
    "eos": ("</s>", "<|end_of_text|>", "<eos>", "<|endoftext|>"),
    "pad": ("<pad>", "<|pad|>", "[PAD]"),
    "unk": ("<unk>", "[UNK]", "<|endoftext|>"),
}


class HFTokenizer(Tokenizer):
    """A `tokenizers` ``Tokenizer`` built from a ``tokenizer.json`` string.

    Args:
        tokenizer_json: the content of a ``tokenizer.json``; kept verbatim and written back by :meth:`save`.
        roles: role ("bos", "eos", "pad", "unk") -> token string (None or absent: no such token). Each named
            token must be in the vocabulary.
        hf_config: the source directory's ``tokenizer_config.json`` (tokenizer class, flags), written back on
            export so ``AutoTokenizer`` builds the same class.
    """

    kind = "huggingface"

    def __init__(self, tokenizer_json: str, roles: dict[str, str | None] | None = None,
                 hf_config: dict[str, Any] | None = None) -> None:
        tokenizers = require_tokenizers("a Hugging Face tokenizer.json")
        try:
            self.tk = tokenizers.Tokenizer.from_str(tokenizer_json)
        except Exception as e:  # the Rust parser raises a bare Exception
            raise TokenizerError(f"not a valid Hugging Face tokenizer.json: {e}") from e
        self.tokenizer_json = tokenizer_json
        self.tk.no_truncation()  # a saved tokenizer.json may carry truncation/padding; encode keeps every id
        self.tk.no_padding()
        self.tk.encode_special_tokens = True  # specials are never produced from text
        self.hf_config = dict(hf_config or {})
        self.roles = {r: t for r, t in (roles or {}).items() if r in ROLES and t is not None}
        self._role_ids = {}
        for role, token in self.roles.items():
            i = self.tk.token_to_id(token)
            if i is None:
                raise TokenizerError(f"the {role}_token {token!r} is not in this tokenizer's vocabulary "
                                     f"({self.vocab_size} tokens); fix tokenizer_config.json / special_tokens_map.json")
            self._role_ids[role] = i
        self._specials = {t.content: i for i, t in self.tk.get_added_tokens_decoder().items() if t.special}
        self._specials.update({t: self._role_ids[r] for r, t in self.roles.items()})

    # ---------------------------------------------------------------- building from a HF directory
    @classmethod
    def from_hf_dir(cls, path: Path) -> HFTokenizer:
        """A HF directory's ``tokenizer.json``, or GPT-2's ``vocab.json`` + ``merges.txt``, with the special
        tokens its configs name (roles they do not mention: conventional names among the added tokens)."""
        config = read_tokenizer_config(path)
        named = named_special_tokens(path)
        if (path / HF_TOKENIZER_FILE).is_file():
            text = _read_text(path / HF_TOKENIZER_FILE)
        else:
            text = _gpt2_tokenizer_json(path, config, named)
        try:
            tok = cls(text, hf_config=config)  # no roles yet: only to look tokens up
        except TokenizerError as e:
            raise TokenizerError(f"{path}: {e}") from None
        for role in ROLES:
            if role not in named:
                names = _FALLBACK_NAMES[role]
                unk = json.loads(text).get("model", {}).get("unk_token") if role == "unk" else None
                candidates = ((unk,) if unk else ()) + names
                named[role] = next((t for t in candidates if tok.tk.token_to_id(t) is not None), None)
        return cls(text, roles=named, hf_config=config)

    # ---------------------------------------------------------------- ids and tokens
    @property
    def vocab_size(self) -> int:
        return self.tk.get_vocab_size(with_added_tokens=True)

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(self._specials)

    def token_to_id(self, token: str) -> int:
        i = self.tk.token_to_id(token)
        if i is None:
            raise TokenizerError(f"{token!r} is not a token of this Hugging Face vocabulary")
        return i

    def id_to_token(self, id: int) -> str:
        token = self.tk.id_to_token(id) if 0 <= id < self.vocab_size else None
        if token is None:
            raise TokenizerError(f"id {id} is out of range for vocab_size={self.vocab_size}")
        return token

    # ---------------------------------------------------------------- encode / decode
    def encode(self, text: str | Sequence[str], add_bos: bool = False,
               add_eos: bool = False) -> list[int] | list[list[int]]:
        """Encode a string to ids, or a list of strings to a list of id lists (one threaded Rust call)."""
        pre, post = self._special_ids(add_bos, add_eos)
        if isinstance(text, str):
            return pre + self.tk.encode(text, add_special_tokens=False).ids + post
        return [pre + e.ids + post for e in self.tk.encode_batch(list(text), add_special_tokens=False)]

    def _check_ids(self, ids: list[int]) -> None:
        n = self.vocab_size
        bad = [i for i in ids if not (isinstance(i, int) and 0 <= i < n)]
        if bad:
            raise TokenizerError(f"cannot decode ids {bad[:5]}: not in range(vocab_size={n})")

    def _decode(self, ids: list[int], skip_special: bool) -> str:
        self._check_ids(ids)
        return self.tk.decode(ids, skip_special_tokens=skip_special)

    def _decode_many(self, rows: list[list[int]], skip_special: bool) -> list[str]:
        for row in rows:
            self._check_ids(row)
        return self.tk.decode_batch(rows, skip_special_tokens=skip_special)

    # ---------------------------------------------------------------- save / load / export
    def _settings(self) -> dict[str, Any]:
        return {"tokenizer_file": HF_TOKENIZER_FILE, "roles": self.roles, "hf_config": self.hf_config}

    def _save_files(self, directory: Path) -> None:
        self.save_hf(directory)  # the llmcore directory is a HF one too

    def save_hf(self, directory: str | Path) -> Path:
        """Write ``tokenizer.json`` (as read) + ``tokenizer_config.json`` + ``special_tokens_map.json``."""
        d = Path(directory)
        with writing(d, "tokenizer directory", TokenizerError):  # read-only: one line, nothing written
            d.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(d / HF_TOKENIZER_FILE, self.tokenizer_json.encode("utf-8"))
            config = dict(self.hf_config)
            config.setdefault("tokenizer_class", "PreTrainedTokenizerFast")
            write_hf_configs(d, config, dict(self.roles))
        return d

    @classmethod
    def _from_dir(cls, directory: Path, settings: dict[str, Any]) -> HFTokenizer:
        f = confined_file(directory, settings.get("tokenizer_file", HF_TOKENIZER_FILE), "tokenizer_file",
                          MAX_JSON_BYTES, TokenizerError)  # a name from the settings file: untrusted
        text = _read_text(f)
        return cls(text, roles=settings.get("roles"), hf_config=settings.get("hf_config"))


def _read_text(path: Path) -> str:
    """A tokenizer.json's text: a regular file of at most ``MAX_JSON_BYTES``, UTF-8."""
    data = read_bounded(path, "Hugging Face tokenizer.json", MAX_JSON_BYTES, TokenizerError)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TokenizerError(f"{path} is not UTF-8 ({e}); the tokenizer.json is corrupt.") from None


def _gpt2_tokenizer_json(path: Path, config: dict[str, Any], named: dict[str, str | None]) -> str:
    """GPT-2's ``vocab.json`` + ``merges.txt`` as a byte-level BPE tokenizer.json string (what
    ``GPT2TokenizerFast`` builds from them: byte-level pre-tokenizer and decoder, no prefix space)."""
    if not all((path / f).is_file() for f in GPT2_FILES):
        raise TokenizerError(f"{path} has neither {HF_TOKENIZER_FILE} nor both of {' + '.join(GPT2_FILES)}")
    tokenizers = require_tokenizers("GPT-2's vocab.json + merges.txt")
    from tokenizers import decoders, models, pre_tokenizers, processors

    try:
        bpe = models.BPE.from_file(str(path / "vocab.json"), str(path / "merges.txt"))
    except Exception as e:
        raise TokenizerError(f"cannot read {path}/vocab.json + merges.txt as a BPE: {e}") from e
    tk = tokenizers.Tokenizer(bpe)
    prefix = bool(config.get("add_prefix_space", False))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=prefix)
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.ByteLevel(trim_offsets=False)
    # GPT-2's config-less default: <|endoftext|> is bos, eos and unk (transformers' GPT2Tokenizer defaults)
    specials = {t for t in named.values() if t} or ({"<|endoftext|>"} & set(tk.get_vocab()))
    tk.add_special_tokens(sorted(specials))
    return tk.to_str()
