"""SentencePiece tokenizer (BPE or unigram): train on files or strings, load, encode losslessly.

``SentencePieceTokenizer.train`` sets sentencepiece up so that ``decode(encode(s)) == s`` for any Unicode
string: identity normalisation, no dummy prefix, no whitespace collapsing, whitespace-only pieces allowed,
byte fallback for characters outside the vocabulary, and ``"\\n"`` as a user-defined symbol (sentencepiece
trains on lines, so a newline could otherwise never be a piece). Ids: unk=0, bos=1, eos=2, pad=3; bos/eos/pad
are control symbols, which sentencepiece never matches in text.

``user_defined_symbols`` (e.g. language tags ``<2zh>``) ARE matched in text: ``encode("<2zh>")`` gives that
symbol's id. That is what they are for; use add_bos/add_eos for tokens that must never come from text.

This file is not sentencepiece itself: it only chooses options, wraps errors in :class:`TokenizerError` and
keeps ``encode`` a thin call into sentencepiece's C++ (batched and threaded for lists).
Reference: Kudo & Richardson 2018, "SentencePiece" (arXiv:1808.06226); subword regularisation, Kudo 2018
(arXiv:1804.10959); BPE-dropout, Provilkov et al. 2020 (arXiv:1910.13267).
"""

from __future__ import annotations

import io
import itertools
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import sentencepiece

from ..errors import TokenizerError
from ..io import atomic_write_bytes, confined_file, read_bounded, writing
from .base import Tokenizer
from .corpus import CJK_HEAVY, TrainingCorpus, cjk_fraction, training_error
from .hf import write_hf_configs

MODEL_FILE = "tokenizer.model"
MAX_MODEL_BYTES = 256 * 2**20  # a sentencepiece model of a 256k vocabulary is ~5 MB
_SPACE = "\u2581"  # sentencepiece's visible space "▁"; a literal one in text would decode back to " "
_HEAD_CHARS = 10_000_000  # characters read ahead to choose character_coverage
_SPLIT_MIN_CHARS = 8192  # below this, one plain call beats starting a thread pool for the lines
MODEL_TYPES = ("bpe", "unigram", "char", "word")
NORMALIZATIONS = ("identity", "nmt_nfkc", "nfkc", "nmt_nfkc_cf", "nfkc_cf")


class SentencePieceTokenizer(Tokenizer):
    """A sentencepiece model with llmcore's Tokenizer interface.

    Args:
        model_proto: the serialized sentencepiece model (the bytes of a ``.model`` file).
        enable_sampling: default for ``encode(..., sample=None)``; True turns on subword regularisation
            (unigram) or BPE-dropout, e.g. for training data. Set it as an attribute at any time.
        alpha: unigram smoothing, or the BPE-dropout probability, used when sampling.
        nbest_size: unigram candidates to sample from (-1 = all); ignored by BPE.
        num_threads: threads for batched encode/decode of lists (-1 = all cores, like sentencepiece).
        newline_split: encode a string with newlines as its lines, batched over threads. Only valid when no
            piece spans a newline (true for models trained by :meth:`train`); checked at construction.
        training: the options used to train, kept in llmcore_tokenizer.json for reference.
        pad_token: a piece to pad with when the model has no pad id of its own (a Hugging Face directory's
            ``pad_token``, e.g. ``"<unk>"``); it becomes :attr:`pad_id` and a special token.
    """

    kind = "sentencepiece"

    def __init__(
        self,
        model_proto: bytes,
        *,
        enable_sampling: bool = False,
        alpha: float = 0.1,
        nbest_size: int = -1,
        num_threads: int = -1,
        newline_split: bool = False,
        training: dict[str, Any] | None = None,
        pad_token: str | None = None,
    ) -> None:
        try:
            self.sp = sentencepiece.SentencePieceProcessor(model_proto=model_proto)
        except (RuntimeError, OSError, TypeError) as e:
            raise TokenizerError(f"not a valid sentencepiece model: {e}") from e
        self.model_proto = bytes(model_proto)
        self.enable_sampling, self.alpha, self.nbest_size = enable_sampling, alpha, nbest_size
        self.num_threads = num_threads
        self.training = dict(training or {})
        sp = self.sp
        n = sp.get_piece_size()
        # sentencepiece reports a disabled special as -1; we use None
        self._role_ids = {
            role: i if 0 <= i < n else None
            for role, i in zip(
                ("unk", "bos", "eos", "pad"), (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id())
            )
        }
        self.pad_token = pad_token if self._role_ids["pad"] is None else None
        if self.pad_token is not None:
            self._role_ids["pad"] = self._piece_id(pad_token)
        self._specials = {sp.id_to_piece(i): i for i in range(n) if sp.is_control(i) or sp.is_unknown(i)}
        if self.pad_token is not None:
            self._specials[self.pad_token] = self._role_ids["pad"]
        self._special_set = frozenset(self._specials.values())
        # A literal "▁" is encoded as its three UTF-8 byte pieces so it survives decoding (needs byte fallback).
        byte_ids = [sp.piece_to_id(f"<0x{b:02X}>") for b in _SPACE.encode()]
        self._space_ids = byte_ids if all(sp.is_byte(i) for i in byte_ids) else None
        self._newline_id = sp.piece_to_id("\n")
        self.newline_split = bool(newline_split) and self._newline_is_atomic()

    def _newline_is_atomic(self) -> bool:
        """True when "\\n" is one piece that no other piece contains, so lines encode independently."""
        sp, nl = self.sp, self._newline_id
        if nl == sp.unk_id() or sp.id_to_piece(nl) != "\n" or sp.encode("\n") != [nl]:
            return False
        return not any("\n" in sp.id_to_piece(i) for i in range(sp.get_piece_size()) if i != nl)

    # ---------------------------------------------------------------- ids and tokens
    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(self._specials)

    def token_to_id(self, token: str) -> int:
        return self._piece_id(token)

    def _piece_id(self, token: str) -> int:
        i = self.sp.piece_to_id(token)
        if i == self.sp.unk_id() and token != self.sp.id_to_piece(i):
            raise TokenizerError(f"{token!r} is not a piece of this sentencepiece vocabulary")
        return i

    def id_to_token(self, id: int) -> str:
        if not 0 <= id < self.vocab_size:
            raise TokenizerError(f"id {id} is out of range for vocab_size={self.vocab_size}")
        return self.sp.id_to_piece(id)

    # ---------------------------------------------------------------- encode / decode
    def _sampling(self, sample: bool | None) -> dict[str, Any]:
        if not (self.enable_sampling if sample is None else sample):
            return {}
        return {"enable_sampling": True, "alpha": self.alpha, "nbest_size": self.nbest_size}

    def encode(
        self,
        text: str | Sequence[str],
        add_bos: bool = False,
        add_eos: bool = False,
        sample: bool | None = None,
    ) -> list[int] | list[list[int]]:
        """Encode a string to ids, or a list of strings to a list of id lists.

        A list goes to sentencepiece's threaded batch encoder in one call. ``sample`` (default:
        ``self.enable_sampling``) draws a random segmentation instead of the best one.
        """
        opts = self._sampling(sample)
        if add_bos or add_eos:
            self._special_ids(add_bos, add_eos)  # raises if the model has no such token
            opts.update(add_bos=add_bos, add_eos=add_eos)
        if isinstance(text, str):
            if self.newline_split and len(text) > _SPLIT_MIN_CHARS and "\n" in text:
                # Lines are independent (no piece spans "\n"), so encode them in parallel and rejoin:
                # same ids as one sentencepiece call, several times faster on long documents.
                rows = self._encode_parts(text.split("\n"), self._sampling(sample))
                ids = rows[0]
                for row in rows[1:]:
                    ids.append(self._newline_id)
                    ids += row
            elif self._space_ids is not None and _SPACE in text:
                ids = self._encode_with_literal_space(text, self._sampling(sample))
            else:
                return self.sp.encode(text, **opts)  # the common case: one plain call
            pre, post = self._special_ids(add_bos, add_eos)
            return pre + ids + post if (pre or post) else ids
        texts = text if isinstance(text, list) else list(text)
        rows = self._encode_many(texts, opts)
        # One C-speed scan; the per-text fix below runs only in the rare case a literal "▁" occurs.
        if self._space_ids is not None and _SPACE in "".join(texts):
            pre, post = self._special_ids(add_bos, add_eos)
            for i, t in enumerate(texts):
                if _SPACE in t:
                    rows[i] = pre + self._encode_with_literal_space(t, self._sampling(sample)) + post
        return rows

    def _encode_many(self, texts: list[str], opts: dict[str, Any]) -> list[list[int]]:
        """Batched encode. Sampled segmentations go one by one on the calling thread: sentencepiece's
        worker threads each restart their random generator from the global seed (set by ``train``), so a
        threaded sampled batch would repeat the same "random" segmentation on every call."""
        if opts.get("enable_sampling"):
            return [self.sp.encode(t, **opts) for t in texts]
        return self.sp.encode(texts, num_threads=self.num_threads, **opts)

    def _encode_parts(self, parts: list[str], opts: dict[str, Any]) -> list[list[int]]:
        rows = self._encode_many(parts, opts)
        if self._space_ids is not None and _SPACE in "".join(parts):
            rows = [
                self._encode_with_literal_space(p, opts) if _SPACE in p else r for p, r in zip(parts, rows)
            ]
        return rows

    def _encode_with_literal_space(self, text: str, opts: dict[str, Any]) -> list[int]:
        """Encode around each literal "▁", which becomes its byte pieces (they decode to "▁", not " ")."""
        rows = self._encode_many(text.split(_SPACE), opts)
        ids = rows[0]
        for row in rows[1:]:
            ids += self._space_ids
            ids += row
        return ids

    def _decode(self, ids: list[int], skip_special: bool) -> str:
        try:
            if skip_special:
                return self.sp.decode(ids)  # control symbols (bos/eos/pad) decode to ""
            # Keep specials visible: decode the runs between them and splice in their token strings.
            out, run = [], []
            for i in ids:
                if i in self._special_set:
                    out += [self.sp.decode(run), self.sp.id_to_piece(i)]
                    run = []
                else:
                    run.append(i)
            return "".join(out) + self.sp.decode(run)
        except (IndexError, TypeError) as e:
            raise TokenizerError(f"cannot decode ids: {e} (vocab_size={self.vocab_size})") from e

    def _decode_many(self, rows: list[list[int]], skip_special: bool) -> list[str]:
        if not skip_special:
            return super()._decode_many(rows, skip_special)
        try:
            return self.sp.decode(rows, num_threads=self.num_threads)
        except (IndexError, TypeError) as e:
            raise TokenizerError(f"cannot decode ids: {e} (vocab_size={self.vocab_size})") from e

    # ---------------------------------------------------------------- save / load
    def _settings(self) -> dict[str, Any]:
        return {
            "model_file": MODEL_FILE,
            "enable_sampling": self.enable_sampling,
            "alpha": self.alpha,
            "nbest_size": self.nbest_size,
            "newline_split": self.newline_split,
            "training": self.training,
            "pad_token": self.pad_token,
        }

    def _save_files(self, directory: Path) -> None:
        atomic_write_bytes(directory / MODEL_FILE, self.model_proto)

    def save_hf(self, directory: str | os.PathLike) -> Path:
        """Write ``tokenizer.model`` + ``tokenizer_config.json`` (``LlamaTokenizer``) + ``special_tokens_map.json``.

        ``AutoTokenizer.from_pretrained(directory)`` converts the model to a fast tokenizer (transformers needs
        ``protobuf`` for that) whose ids equal :meth:`encode`'s, bos / eos off by default like ``encode``
        (``add_special_tokens=True`` adds nothing; set ``add_bos_token`` in the config to change that). One
        exception: a literal "▁" in text, which llmcore keeps as its bytes and transformers reads as a space.
        """
        d = Path(directory)
        with writing(d, "tokenizer directory", TokenizerError):  # read-only: one line, nothing written
            d.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(d / MODEL_FILE, self.model_proto)
            roles = {role: self.sp.id_to_piece(i) for role, i in self._role_ids.items() if i is not None}
            # A model with sentencepiece's dummy prefix (e.g. Llama's own) encodes "a" as "▁a": tell transformers.
            first = self.sp.encode("a", out_type=str)[:1]
            dummy_prefix = bool(first) and first[0].startswith(_SPACE)
            config = {"tokenizer_class": "LlamaTokenizer", "add_bos_token": False, "add_eos_token": False,
                      "legacy": False, "add_prefix_space": dummy_prefix, "clean_up_tokenization_spaces": False}
            write_hf_configs(d, config, roles)
        return d

    @classmethod
    def _from_dir(cls, directory: Path, settings: dict[str, Any]) -> SentencePieceTokenizer:
        """``directory`` is a saved directory, or a bare ``.model`` file (then ``settings`` is empty)."""
        if directory.is_file():
            path = directory
        else:  # a name from the settings file: untrusted, must stay inside the directory
            path = confined_file(directory, settings.get("model_file", MODEL_FILE), "sentencepiece model_file",
                                 MAX_MODEL_BYTES, TokenizerError)
        proto = read_bounded(path, "sentencepiece model", MAX_MODEL_BYTES, TokenizerError)
        if not proto:  # sentencepiece accepts b"" and fails later, on the first piece looked up
            raise TokenizerError(f"{path} is empty (0 bytes); expected a sentencepiece model (a .model file).")
        try:
            return cls._build(proto, settings)
        except TokenizerError as e:
            raise TokenizerError(f"{path}: {e}") from e

    @classmethod
    def _build(cls, proto: bytes, settings: dict[str, Any]) -> SentencePieceTokenizer:
        keys = ("enable_sampling", "alpha", "nbest_size", "newline_split", "training", "pad_token")
        return cls(proto, **{k: settings[k] for k in keys if k in settings})

    # ---------------------------------------------------------------- training
    @classmethod
    def train(
        cls,
        input: str | os.PathLike | Sequence[str | os.PathLike] | Iterable[str],
        vocab_size: int,
        *,
        model_type: str = "bpe",
        character_coverage: float | None = None,
        byte_fallback: bool = True,
        user_defined_symbols: Sequence[str] = (),
        normalization: str = "identity",
        max_sentence_length: int = 16384,
        input_sentence_size: int = 2_000_000,
        split_digits: bool = True,
        remove_extra_whitespaces: bool = False,
        allow_whitespace_only_pieces: bool = True,
        seed: int | None = 0,
        num_threads: int | None = None,
        verbose: bool = False,
        enable_sampling: bool = False,
        alpha: float = 0.1,
        nbest_size: int = -1,
        **trainer_options: Any,
    ) -> SentencePieceTokenizer:
        """Train a sentencepiece model in memory and return it (call :meth:`save` to keep it).

        Args:
            input: one path, a list of paths (``Path`` objects, or strings that all name existing files),
                or an iterable of text strings (each split into lines). Files must be UTF-8.
            vocab_size: total number of ids including specials, byte pieces and user symbols.
            model_type: ``"bpe"`` or ``"unigram"`` (``"char"``, ``"word"`` also pass through).
            character_coverage: share of characters that get their own piece; the rest use byte fallback.
                None picks 1.0, or sentencepiece's 0.9995 when CJK characters are >= 10% of the text
                (rich character sets would otherwise spend the vocabulary on rare characters).
            user_defined_symbols: pieces always kept whole AND matched in text (language tags). "\\n" is
                always added first.
            normalization: sentencepiece normalisation rule; anything but "identity" loses exactness.
            max_sentence_length: lines longer than this many bytes are skipped in training.
            input_sentence_size: at most this many lines, sampled at random, are used (0 = all).
            seed: seeds sentencepiece's sampling, for a reproducible model. None leaves it alone.
            num_threads: training threads (default: all cores).
            verbose: show sentencepiece's training log on stderr.
            enable_sampling, alpha, nbest_size: subword-regularisation settings stored in the tokenizer.
            trainer_options: any other ``sentencepiece.SentencePieceTrainer`` option, e.g.
                ``max_sentencepiece_length=16``.
        """
        if not isinstance(vocab_size, int) or vocab_size < 1:
            raise TokenizerError(f"vocab_size={vocab_size!r} must be a positive integer")
        if model_type not in MODEL_TYPES:
            raise TokenizerError(f"model_type={model_type!r} is not one of {MODEL_TYPES}")
        if normalization not in NORMALIZATIONS:
            raise TokenizerError(f"normalization={normalization!r} is not one of {NORMALIZATIONS}")
        symbols = ["\n"] + [s for s in dict.fromkeys(user_defined_symbols) if s != "\n"]
        if any(not isinstance(s, str) or not s for s in symbols):
            raise TokenizerError(
                f"user_defined_symbols must be non-empty strings, got {list(user_defined_symbols)}"
            )

        corpus = TrainingCorpus(input)
        lines = iter(corpus)
        head, n_chars = [], 0  # read ahead to choose the coverage; fed to training first
        for line in lines:
            head.append(line)
            n_chars += len(line)
            if n_chars >= _HEAD_CHARS:
                break
        if character_coverage is None:
            character_coverage = 0.9995 if cjk_fraction(head) >= CJK_HEAVY else 1.0
        options: dict[str, Any] = {
            "model_type": model_type,
            "vocab_size": vocab_size,
            "character_coverage": character_coverage,
            "byte_fallback": byte_fallback,
            "user_defined_symbols": symbols,
            "normalization_rule_name": normalization,
            "add_dummy_prefix": False,  # a leading "▁" would be invented on encode and dropped on decode
            "remove_extra_whitespaces": remove_extra_whitespaces,
            "allow_whitespace_only_pieces": allow_whitespace_only_pieces,
            "split_digits": split_digits,
            "max_sentence_length": max_sentence_length,
            "input_sentence_size": input_sentence_size,
            "shuffle_input_sentence": True,
            "num_threads": num_threads or os.cpu_count() or 1,
            "unk_id": 0,
            "bos_id": 1,
            "eos_id": 2,
            "pad_id": 3,
            "unk_piece": "<unk>",
            "bos_piece": "<s>",
            "eos_piece": "</s>",
            "pad_piece": "<pad>",
            "minloglevel": 0 if verbose else 2,
        }
        options.update(trainer_options)
        if seed is not None:
            sentencepiece.set_random_generator_seed(seed)
        writer = io.BytesIO()
        try:
            sentencepiece.SentencePieceTrainer.train(
                sentence_iterator=itertools.chain(head, lines), model_writer=writer, **options
            )
        except (RuntimeError, ValueError, OSError) as e:
            if corpus.error is not None:  # our own read error, which sentencepiece re-wrapped
                raise corpus.error from None
            raise training_error(str(e), options, corpus, max_sentence_length) from e
        if corpus.error is not None:
            raise corpus.error
        newline_split = (
            normalization == "identity"
            and not options["remove_extra_whitespaces"]
            and not options["add_dummy_prefix"]
            and not any("\n" in s for s in symbols[1:])
        )
        training = {k: v for k, v in options.items() if k not in ("num_threads", "minloglevel")}
        training["sentences"] = corpus.lines
        return cls(
            writer.getvalue(),
            enable_sampling=enable_sampling,
            alpha=alpha,
            nbest_size=nbest_size,
            newline_split=newline_split,
            training=training,
        )
