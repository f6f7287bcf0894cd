"""Two table tokenizers that need no training: bytes (UTF-8) and characters (nanoGPT shakespeare-char).

Both put their special tokens (``<bos>``, ``<eos>``, ``<pad>``, optionally ``<unk>``) after the base
vocabulary, so ids 0..255 are always bytes and character ids match nanoGPT's ``sorted(set(text))``.
Specials are looked up by id only; encoding the text ``"<eos>"`` yields its bytes or characters.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from ..errors import TokenizerError
from .base import Tokenizer

DEFAULT_SPECIALS = ("<bos>", "<eos>", "<pad>")
_ROLES = {"bos": "<bos>", "eos": "<eos>", "pad": "<pad>", "unk": "<unk>"}


class _TableTokenizer(Tokenizer):
    """Shared parts: ``n_base`` base ids, then ``specials`` in order."""

    n_base: int

    def __init__(self, specials: Sequence[str]) -> None:
        specials = tuple(specials)
        if len(set(specials)) != len(specials) or not all(isinstance(s, str) and s for s in specials):
            raise TokenizerError(f"specials must be distinct non-empty strings, got {list(specials)}")
        self.specials = specials
        self._special_map = {s: self.n_base + i for i, s in enumerate(specials)}
        self._role_ids = {role: self._special_map.get(tok) for role, tok in _ROLES.items()}

    @property
    def vocab_size(self) -> int:
        return self.n_base + len(self.specials)

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(self._special_map)

    def _check_ids(self, ids: list[int]) -> None:
        bad = next((i for i in ids if not 0 <= i < self.vocab_size), None)
        if bad is not None:
            raise TokenizerError(f"id {bad} is out of range for vocab_size={self.vocab_size}")

    def _wrap(self, rows: list[list[int]], add_bos: bool, add_eos: bool) -> list[list[int]]:
        pre, post = self._special_ids(add_bos, add_eos)
        return [pre + r + post for r in rows] if (pre or post) else rows


class ByteTokenizer(_TableTokenizer):
    """UTF-8 bytes as ids 0..255, then specials (default ``<bos>``=256, ``<eos>``=257, ``<pad>``=258).

    Lossless for any string; decoding an invalid byte sequence gives U+FFFD replacement characters.
    Tokens are named like sentencepiece byte pieces: id 65 is ``"<0x41>"``.
    """

    kind = "byte"
    n_base = 256

    def __init__(self, specials: Sequence[str] = DEFAULT_SPECIALS) -> None:
        super().__init__(specials)

    def encode(
        self, text: str | Sequence[str], add_bos: bool = False, add_eos: bool = False
    ) -> list[int] | list[list[int]]:
        """Encode a string to its UTF-8 bytes, or a list of strings to a list of id lists."""
        single = isinstance(text, str)
        try:
            rows = [list(t.encode("utf-8")) for t in ([text] if single else text)]
        except UnicodeEncodeError as e:  # lone surrogates are not valid UTF-8
            raise TokenizerError(f"text is not valid Unicode: {e}") from e
        rows = self._wrap(rows, add_bos, add_eos)
        return rows[0] if single else rows

    def _decode(self, ids: list[int], skip_special: bool) -> str:
        self._check_ids(ids)
        if skip_special or not any(i >= 256 for i in ids):
            return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")
        out, run = [], bytearray()
        for i in ids:
            if i < 256:
                run.append(i)
            else:
                out += [run.decode("utf-8", errors="replace"), self.specials[i - 256]]
                run = bytearray()
        return "".join(out) + run.decode("utf-8", errors="replace")

    def token_to_id(self, token: str) -> int:
        if token in self._special_map:
            return self._special_map[token]
        if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
            try:
                return int(token[3:5], 16)
            except ValueError:
                pass
        raise TokenizerError(
            f"{token!r} is not a byte token (<0x00>..<0xFF>) or one of {list(self.specials)}"
        )

    def id_to_token(self, id: int) -> str:
        self._check_ids([id])
        return f"<0x{id:02X}>" if id < 256 else self.specials[id - 256]

    def _settings(self) -> dict[str, Any]:
        return {"specials": list(self.specials)}

    @classmethod
    def _from_dir(cls, directory: Path, settings: dict[str, Any]) -> ByteTokenizer:
        return cls(specials=settings.get("specials", DEFAULT_SPECIALS))


class CharTokenizer(_TableTokenizer):
    """One id per character of a fixed alphabet, then specials.

    Args:
        chars: the alphabet, one character each, in id order.
        specials: special tokens appended after the characters.
        unk: what to do with a character outside the alphabet: ``"error"`` raises TokenizerError naming it,
            ``"replace"`` maps it to ``<unk>`` (added to the specials if missing).
    """

    kind = "char"

    def __init__(
        self,
        chars: Sequence[str],
        specials: Sequence[str] = DEFAULT_SPECIALS,
        unk: Literal["error", "replace"] = "error",
    ) -> None:
        chars = list(chars)
        if any(not isinstance(c, str) or len(c) != 1 for c in chars) or len(set(chars)) != len(chars):
            raise TokenizerError("chars must be distinct single characters")
        if unk not in ("error", "replace"):
            raise TokenizerError(f"unk={unk!r} is not one of 'error', 'replace'")
        specials = tuple(specials)
        if unk == "replace" and "<unk>" not in specials:
            specials += ("<unk>",)
        clash = [s for s in specials if s in chars]
        if clash:
            raise TokenizerError(f"specials {clash} are also characters of the alphabet; rename them")
        self.chars = chars
        self.unk = unk
        self.n_base = len(chars)
        super().__init__(specials)
        self._stoi = {c: i for i, c in enumerate(chars)}

    @classmethod
    def from_text(
        cls,
        text: str,
        specials: Sequence[str] = DEFAULT_SPECIALS,
        unk: Literal["error", "replace"] = "error",
    ) -> CharTokenizer:
        """Alphabet = the sorted unique characters of ``text`` (as in nanoGPT's shakespeare_char)."""
        if not text:
            raise TokenizerError("cannot build a character vocabulary from empty text")
        return cls(sorted(set(text)), specials=specials, unk=unk)

    def encode(
        self, text: str | Sequence[str], add_bos: bool = False, add_eos: bool = False
    ) -> list[int] | list[list[int]]:
        """Encode a string to one id per character, or a list of strings to a list of id lists."""
        single = isinstance(text, str)
        texts = [text] if single else text
        stoi = self._stoi
        if self.unk == "replace":
            u = self.unk_id
            rows = [[stoi.get(c, u) for c in t] for t in texts]
        else:
            try:
                rows = [[stoi[c] for c in t] for t in texts]
            except KeyError as e:
                c = e.args[0]
                raise TokenizerError(
                    f"character {c!r} (U+{ord(c):04X}) is not in the vocabulary of {self.n_base} characters; "
                    "build the tokenizer from text that contains it, or use unk='replace'"
                ) from None
        rows = self._wrap(rows, add_bos, add_eos)
        return rows[0] if single else rows

    def _decode(self, ids: list[int], skip_special: bool) -> str:
        self._check_ids(ids)
        n, chars = self.n_base, self.chars
        if skip_special:
            return "".join([chars[i] for i in ids if i < n])
        return "".join([chars[i] if i < n else self.specials[i - n] for i in ids])

    def token_to_id(self, token: str) -> int:
        i = self._stoi.get(token, self._special_map.get(token))
        if i is None:
            raise TokenizerError(f"{token!r} is not a character or special token of this vocabulary")
        return i

    def id_to_token(self, id: int) -> str:
        self._check_ids([id])
        return self.chars[id] if id < self.n_base else self.specials[id - self.n_base]

    def _settings(self) -> dict[str, Any]:
        return {"chars": self.chars, "specials": list(self.specials), "unk": self.unk}

    @classmethod
    def _from_dir(cls, directory: Path, settings: dict[str, Any]) -> CharTokenizer:
        for field in ("chars", "specials"):
            if field in settings and not isinstance(settings[field], (list, str)):
                raise TokenizerError(f"field {field!r} is {type(settings[field]).__name__}, expected a list of "
                                     "strings")
        try:
            return cls(
                settings["chars"], specials=settings.get("specials", ()), unk=settings.get("unk", "error")
            )
        except KeyError as e:
            raise TokenizerError(f"The tokenizer settings in {directory} have no {e.args[0]!r} field") from None
