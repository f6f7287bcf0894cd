"""The ``Tokenizer`` base class every llmcore tokenizer implements, plus :func:`load_tokenizer`.

A tokenizer turns text into a list of integer ids and back. This file holds what all kinds share: batching
with explicit padding and truncation (``encode_batch``), tensor-or-list decoding, and the on-disk format
(``llmcore_tokenizer.json`` naming the kind and its settings, next to whatever files the kind needs; a name
Hugging Face does not use, so the two kinds of directory never collide). It holds no tokenization algorithm
itself; see ``spm.py`` (SentencePiece) and ``simple.py`` (bytes, characters).

:func:`load_tokenizer` also reads directories written before that name (``tokenizer.json`` with a ``kind``
field) and Hugging Face directories: their ``tokenizer.json`` through the `tokenizers` library (GPT-2
byte-level BPE, Llama, ...), their sentencepiece ``tokenizer.model`` (Llama, Mistral), or GPT-2's
``vocab.json`` + ``merges.txt``, in the order ``hf.py`` documents, with the special tokens their
``tokenizer_config.json`` / ``special_tokens_map.json`` name. :meth:`Tokenizer.save_hf` writes the files
``transformers.AutoTokenizer`` reads.

Special tokens (bos/eos/pad/unk) are never produced from plain text: encoding the literal string ``"<eos>"``
gives the ids of its characters or pieces, never ``eos_id``. They are added only through ``add_bos`` /
``add_eos`` and padding.
"""

from __future__ import annotations

import abc
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from ..errors import TokenizerError
from ..io import atomic_write_bytes, read_json, writing
from .hf import GPT2_FILES, INSTALL_HINT, SPM_MODEL_FILE, hf_sentencepiece, tokenizers_available

if TYPE_CHECKING:  # torch is imported lazily: ``llmcore tokenizer --help`` should not pay for it
    import torch

TOKENIZER_FILE = "llmcore_tokenizer.json"
LEGACY_TOKENIZER_FILE = "tokenizer.json"  # what llmcore wrote before; also Hugging Face's fast-tokenizer file
FORMAT_VERSION = 1

# kind name -> class; filled by ``Tokenizer.__init_subclass__`` so ``load_tokenizer`` can dispatch.
_KINDS: dict[str, type[Tokenizer]] = {}

Padding = Literal["longest", "max_length", False]


class Tokenizer(abc.ABC):
    """Base class of all tokenizers: text <-> ids, batching, save/load.

    Subclasses implement :meth:`encode`, :meth:`_decode`, ``vocab_size``, ``special_tokens``,
    :meth:`token_to_id`, :meth:`id_to_token`, :meth:`_save_files` / :meth:`_settings` and the :meth:`_from_dir`
    class method, and fill ``_role_ids`` (which the bos/eos/pad/unk id properties read).
    """

    kind: ClassVar[str] = ""  # the name written to llmcore_tokenizer.json; empty for abstract classes

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("kind"):  # a subclass that does not name its own kind leaves the parent's in place
            _KINDS[cls.kind] = cls

    # ---------------------------------------------------------------- what each kind provides
    @abc.abstractmethod
    def encode(
        self, text: str | Sequence[str], add_bos: bool = False, add_eos: bool = False
    ) -> list[int] | list[list[int]]:
        """Encode one string to a list of ids, or a list of strings to a list of id lists (no padding)."""

    @abc.abstractmethod
    def _decode(self, ids: list[int], skip_special: bool) -> str:
        """Decode one flat list of python ints."""

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int:
        """Number of ids; every id is in ``range(vocab_size)``."""

    @property
    @abc.abstractmethod
    def special_tokens(self) -> dict[str, int]:
        """Special token string -> id (bos/eos/pad/unk and any extra specials). Never matched in text."""

    @abc.abstractmethod
    def token_to_id(self, token: str) -> int:
        """Id of one token string (a piece, a character, ``<0x41>``, ``<eos>``); TokenizerError if unknown."""

    @abc.abstractmethod
    def id_to_token(self, id: int) -> str:
        """Token string of one id; TokenizerError if out of range."""

    @abc.abstractmethod
    def _settings(self) -> dict[str, Any]:
        """JSON-serialisable settings written to llmcore_tokenizer.json (besides ``kind``)."""

    def _save_files(self, directory: Path) -> None:  # noqa: B027 - optional hook, empty on purpose
        """Write the extra files this kind needs (e.g. a sentencepiece model)."""

    @classmethod
    @abc.abstractmethod
    def _from_dir(cls, directory: Path, settings: dict[str, Any]) -> Tokenizer:
        """Rebuild a tokenizer from its directory and the parsed llmcore_tokenizer.json."""

    # ---------------------------------------------------------------- special ids (None when absent)
    # role ("bos", "eos", "pad", "unk") -> id; a subclass fills it in ``__init__``, a missing role is None.
    _role_ids: dict[str, int | None] = {}

    @property
    def bos_id(self) -> int | None:
        return self._role_ids.get("bos")

    @property
    def eos_id(self) -> int | None:
        return self._role_ids.get("eos")

    @property
    def pad_id(self) -> int | None:
        return self._role_ids.get("pad")

    @property
    def fill_id(self) -> int | None:
        """The id that pads batches: ``pad_id``, or ``eos_id`` when the vocabulary has no pad token.

        Padded positions are masked (attention) and ignored (loss), so any id works as filler; eos is the
        conventional choice (GPT-2 has no pad token). One definition, so every batcher pads alike.
        """
        return self.pad_id if self.pad_id is not None else self.eos_id

    @property
    def unk_id(self) -> int | None:
        return self._role_ids.get("unk")

    def _special_ids(self, add_bos: bool, add_eos: bool) -> tuple[list[int], list[int]]:
        """Prefix/suffix lists for add_bos/add_eos, with a clear error when the token does not exist."""
        pre: list[int] = []
        post: list[int] = []
        if add_bos:
            if self.bos_id is None:
                raise TokenizerError(f"add_bos=True but this {self.kind} tokenizer has no bos token")
            pre = [self.bos_id]
        if add_eos:
            if self.eos_id is None:
                raise TokenizerError(f"add_eos=True but this {self.kind} tokenizer has no eos token")
            post = [self.eos_id]
        return pre, post

    # ---------------------------------------------------------------- decoding
    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special: bool = True) -> str:
        """Decode a 1-D sequence of ids (list, tuple, 1-D tensor or array) to text.

        Args:
            ids: shape (T,). Use :meth:`decode_batch` for (B, T).
            skip_special: drop bos/eos/pad (and other specials) instead of writing their token strings.
        """
        if hasattr(ids, "tolist"):  # torch.Tensor / numpy array, without importing either
            ids = ids.tolist()
        if isinstance(ids, int):
            ids = [ids]
        ids = list(ids)
        if ids and isinstance(ids[0], (list, tuple)):
            raise TokenizerError(
                "decode() takes one 1-D sequence of ids; use decode_batch() for a (B, T) batch"
            )
        return self._decode(ids, skip_special)

    def decode_batch(
        self, batch: Sequence[Sequence[int]] | torch.Tensor, skip_special: bool = True
    ) -> list[str]:
        """Decode a batch of id sequences (list of lists or a (B, T) tensor) to a list of B strings.

        Padding is dropped with the other specials when ``skip_special`` is True (the default).
        """
        if hasattr(batch, "tolist"):
            batch = batch.tolist()
        rows = [row.tolist() if hasattr(row, "tolist") else list(row) for row in batch]
        if rows and not isinstance(rows[0], list):
            raise TokenizerError("decode_batch() takes a (B, T) batch; use decode() for one 1-D sequence")
        return self._decode_many(rows, skip_special)

    def _decode_many(self, rows: list[list[int]], skip_special: bool) -> list[str]:
        return [self._decode(row, skip_special) for row in rows]

    # ---------------------------------------------------------------- batching
    def encode_batch(
        self,
        texts: Sequence[str],
        add_bos: bool = False,
        add_eos: bool = False,
        padding: Padding | bool = "longest",
        max_length: int | None = None,
        truncation: bool = False,
        padding_side: Literal["left", "right"] = "right",
        return_tensors: Literal["pt"] | None = "pt",
        **encode_kwargs: Any,
    ) -> dict[str, Any]:
        """Encode B strings into padded ``input_ids`` and ``attention_mask``.

        Args:
            texts: B strings.
            padding: ``"longest"`` pads to the longest sequence, ``"max_length"`` to ``max_length``, ``False``
                leaves lengths alone (then ``return_tensors="pt"`` needs equal lengths).
            max_length: upper bound on the length after bos/eos. Longer sequences raise TokenizerError unless
                ``truncation=True``, which keeps the first ``max_length`` ids (eos may be cut).
            padding_side: ``"right"`` for training, ``"left"`` for batched generation (real tokens end
                aligned at the last position).
            return_tensors: ``"pt"`` for LongTensors, ``None`` for python lists.
            encode_kwargs: passed to :meth:`encode` (e.g. ``sample=True`` for sentencepiece).

        Returns:
            ``{"input_ids": (B, T), "attention_mask": (B, T)}``; the mask is 1 on real tokens, 0 on padding.
        """
        if isinstance(texts, str):
            raise TokenizerError("encode_batch() takes a list of strings; use encode() for a single string")
        if padding is True:
            padding = "longest"
        if padding not in ("longest", "max_length", False):
            raise TokenizerError(f"padding={padding!r} is not one of 'longest', 'max_length', False")
        if padding_side not in ("left", "right"):
            raise TokenizerError(f"padding_side={padding_side!r} is not one of 'left', 'right'")
        if return_tensors not in ("pt", None):
            raise TokenizerError(f"return_tensors={return_tensors!r} is not one of 'pt', None")
        if max_length is None and (padding == "max_length" or truncation):
            what = "padding='max_length'" if padding == "max_length" else "truncation=True"
            raise TokenizerError(f"{what} needs max_length to be set")
        if max_length is not None and max_length < 1:
            raise TokenizerError(f"max_length={max_length} must be >= 1")

        seqs: list[list[int]] = self.encode(list(texts), add_bos=add_bos, add_eos=add_eos, **encode_kwargs)
        if max_length is not None:
            too_long = [i for i, s in enumerate(seqs) if len(s) > max_length]
            if too_long and not truncation:
                worst = max(too_long, key=lambda i: len(seqs[i]))
                raise TokenizerError(
                    f"{len(too_long)} of {len(seqs)} sequences are longer than max_length={max_length} "
                    f"(longest: text {worst} with {len(seqs[worst])} tokens) and truncation=False; "
                    "pass truncation=True to cut them or raise max_length"
                )
            for i in too_long:
                seqs[i] = seqs[i][:max_length]

        lengths = [len(s) for s in seqs]
        target = max(lengths, default=0) if padding == "longest" else max_length if padding else None
        if target is None:
            ids, mask = seqs, [[1] * n for n in lengths]
        else:
            if self.pad_id is None and any(n < target for n in lengths):
                raise TokenizerError(
                    f"padding needs a pad token but this {self.kind} tokenizer has none; "
                    "create it with a '<pad>' special token or pass padding=False"
                )
            pad = self.pad_id
            ids, mask = [], []
            for s, n in zip(seqs, lengths):
                fill = target - n
                if padding_side == "right":
                    ids.append(s + [pad] * fill)
                    mask.append([1] * n + [0] * fill)
                else:
                    ids.append([pad] * fill + s)
                    mask.append([0] * fill + [1] * n)
        if return_tensors is None:
            return {"input_ids": ids, "attention_mask": mask}
        if len(set(lengths if target is None else [target])) > 1:
            raise TokenizerError(
                f"padding=False gives sequences of different lengths ({min(lengths)}..{max(lengths)}), "
                "which cannot form one tensor; pass padding='longest' or return_tensors=None"
            )
        import torch

        width = target if target is not None else (lengths[0] if lengths else 0)
        return {
            "input_ids": torch.tensor(ids, dtype=torch.long).reshape(len(ids), width),  # (B, T)
            "attention_mask": torch.tensor(mask, dtype=torch.long).reshape(len(ids), width),  # (B, T)
        }

    # ---------------------------------------------------------------- save / load
    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``llmcore_tokenizer.json`` (kind + settings) and the kind's files into ``directory``; returns it."""
        directory = Path(directory)
        with writing(directory, "tokenizer directory", TokenizerError):  # read-only: one line, nothing written
            directory.mkdir(parents=True, exist_ok=True)
            self._save_files(directory)
            meta = {"kind": self.kind, "format_version": FORMAT_VERSION, **self._settings()}
            # atomic, and never through a symlink planted in the directory (see llmcore.io)
            atomic_write_bytes(directory / TOKENIZER_FILE,
                               (json.dumps(meta, ensure_ascii=False, indent=2) + "\n").encode())
        return directory

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        """Load a tokenizer saved with :meth:`save`; checks that the saved kind matches this class."""
        tok = load_tokenizer(path)
        if cls is not Tokenizer and not isinstance(tok, cls):
            raise TokenizerError(f"{path} holds a {tok.kind!r} tokenizer, not a {cls.kind!r} one")
        return tok

    def save_hf(self, directory: str | os.PathLike) -> Path:
        """Write the files ``transformers.AutoTokenizer.from_pretrained(directory)`` loads, encoding alike.

        Kinds transformers has no equivalent for (bytes, characters) raise TokenizerError; the sentencepiece
        and Hugging Face kinds override this.
        """
        raise TokenizerError(
            f"a {self.kind} tokenizer has no Hugging Face equivalent that encodes the same ids, so transformers "
            "could not load it; export without the tokenizer (`llmcore convert --no-tokenizer`, or no tokenizer=) "
            "or train a sentencepiece one (`llmcore tokenizer train`)")

    # ---------------------------------------------------------------- conveniences
    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, specials={self.special_tokens})"


def language_tag_id(tokenizer: Tokenizer, tag: str, what: str = "language tag") -> int:
    """The single id of a language tag such as ``<2zh>``.

    Raises :class:`TokenizerError` naming ``what`` (e.g. "target-language tag") when the tag is not one token
    of the vocabulary (unknown, or mapped to ``<unk>``): a model trained with such a tokenizer never saw it.
    """
    try:
        i = tokenizer.token_to_id(tag)
    except (TokenizerError, KeyError, ValueError):
        i = None
    if i is None or i == getattr(tokenizer, "unk_id", None):
        raise TokenizerError(f"The tokenizer has no {what} {tag!r} as one token; train it with "
                             f"user_defined_symbols=[{tag!r}, ...] (and the model with that tag).")
    return int(i)


def read_settings(path: Path) -> dict[str, Any]:
    """Parse an llmcore settings file (``llmcore_tokenizer.json``, or an old ``tokenizer.json``) naming its kind."""
    settings = read_json(path, "llmcore tokenizer settings", TokenizerError)
    if "kind" not in settings:
        raise TokenizerError(f"{path} has no 'kind' field; was it written by llmcore?")
    if "format_version" in settings and settings["format_version"] != FORMAT_VERSION:  # absent in old files: 1
        raise TokenizerError(f"{path}: field 'format_version' is {settings['format_version']!r}, expected "
                             f"{FORMAT_VERSION} (the only tokenizer format this llmcore reads); save the tokenizer "
                             "again with this version.")
    return settings


def _from_settings(path: Path, settings: dict[str, Any]) -> Tokenizer:
    kind = settings["kind"]
    if not isinstance(kind, str):
        raise TokenizerError(f"{path}: field 'kind' is {type(kind).__name__}, expected a string, one of "
                             f"{sorted(_KINDS)}")
    if kind not in _KINDS:
        raise TokenizerError(f"{path}: unknown tokenizer kind {kind!r}; known: {sorted(_KINDS)}")
    try:
        return _KINDS[kind]._from_dir(path.parent, settings)
    except TokenizerError as e:  # a setting of the wrong type or value: say which file it is in
        if str(path.parent) in str(e):
            raise
        raise TokenizerError(f"{path}: {e}") from e


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Load any saved tokenizer.

    ``path`` may be a directory with ``llmcore_tokenizer.json`` (any kind, written by :meth:`Tokenizer.save`), a
    directory written by older llmcore versions (``tokenizer.json`` with a ``kind``), a model run directory
    containing a ``tokenizer/`` subdirectory, a Hugging Face directory (``tokenizer.json`` read by `tokenizers`
    when installed, else ``tokenizer.model``, else ``vocab.json`` + ``merges.txt``; see ``tokenizer/hf.py``),
    one of those settings files, a sentencepiece ``.model`` file trained elsewhere, or the name of a bundled
    model (``llmcore models``) when no such path exists.
    """
    from ..bundled import missing_hint, resolve_model_dir

    path = resolve_model_dir(path)
    if not path.exists():
        raise TokenizerError(f"no tokenizer at {path}: the path does not exist." + missing_hint())
    if path.is_file():
        if path.name in (TOKENIZER_FILE, LEGACY_TOKENIZER_FILE):
            return load_tokenizer(path.parent)
        if path.suffix == ".model":
            return _KINDS["sentencepiece"]._from_dir(path, {})
        raise TokenizerError(
            f"{path} is not a tokenizer: expected a directory, a {TOKENIZER_FILE} or a .model file"
        )
    if (path / TOKENIZER_FILE).is_file():
        return _from_settings(path / TOKENIZER_FILE, read_settings(path / TOKENIZER_FILE))
    legacy = None
    if (path / LEGACY_TOKENIZER_FILE).is_file():
        legacy = read_json(path / LEGACY_TOKENIZER_FILE, "tokenizer file", TokenizerError)
        if "kind" in legacy:  # written by llmcore before the file had its own name
            return _from_settings(path / LEGACY_TOKENIZER_FILE, legacy)
    if (path / "tokenizer").is_dir():
        return load_tokenizer(path / "tokenizer")
    # A Hugging Face directory: tokenizer.json (what AutoTokenizer uses) when `tokenizers` can read it, else
    # the sentencepiece tokenizer.model, else GPT-2's vocab.json + merges.txt (see hf.py).
    spm_file = (path / SPM_MODEL_FILE).is_file()
    if legacy is not None and (tokenizers_available() or not spm_file):
        return _KINDS["huggingface"].from_hf_dir(path)  # TokenizerError naming the install if it is missing
    if spm_file:
        return hf_sentencepiece(path, _KINDS["sentencepiece"])
    if all((path / f).is_file() for f in GPT2_FILES):
        return _KINDS["huggingface"].from_hf_dir(path)
    found = sorted(p.name for p in path.iterdir())
    raise TokenizerError(
        f"no tokenizer found in {path} (it holds {found[:8] or 'nothing'}): expected {TOKENIZER_FILE} (written "
        f"by Tokenizer.save), a tokenizer/ subdirectory, a Hugging Face {LEGACY_TOKENIZER_FILE} ({INSTALL_HINT}), "
        f"a sentencepiece {SPM_MODEL_FILE}, or GPT-2's {' + '.join(GPT2_FILES)}"
    )
