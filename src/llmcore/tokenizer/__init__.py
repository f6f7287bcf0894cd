"""Tokenizers: text <-> integer ids.

- :class:`SentencePieceTokenizer` — BPE or unigram, trained with :meth:`SentencePieceTokenizer.train` or loaded
  from any sentencepiece ``.model``; lossless round trip with the training defaults.
- :class:`HFTokenizer` — a Hugging Face ``tokenizer.json`` (GPT-2 byte-level BPE, Llama, ...) read by the
  `tokenizers` library (``pip install 'llmcore[hf]'``); ids equal ``transformers.AutoTokenizer``'s.
- :class:`ByteTokenizer` — UTF-8 bytes (ids 0..255) plus specials; no training.
- :class:`CharTokenizer` — one id per character, as in nanoGPT's shakespeare_char.
- :func:`load_tokenizer` — load whichever kind a directory holds (also a run dir, a Hugging Face directory's
  ``tokenizer.json`` / ``tokenizer.model`` / ``vocab.json`` + ``merges.txt``, or a bare ``.model``).
- :func:`language_tag_id` — the one id of a language tag such as ``<2zh>`` (translation prompts).

All share the :class:`Tokenizer` interface: ``encode``/``decode``, ``encode_batch`` (padding, masks, explicit
truncation), ``decode_batch``, the bos/eos/pad/unk ids, ``save(dir)``, and ``save_hf(dir)`` (the files
``transformers.AutoTokenizer`` loads; sentencepiece and Hugging Face kinds only).
"""

# Eager (no torch here): importing the subclasses registers their kinds, which load_tokenizer looks up.
from .base import Tokenizer, language_tag_id, load_tokenizer
from .fast import HFTokenizer
from .simple import ByteTokenizer, CharTokenizer
from .spm import SentencePieceTokenizer

__all__ = ["Tokenizer", "SentencePieceTokenizer", "HFTokenizer", "ByteTokenizer", "CharTokenizer", "load_tokenizer",
           "language_tag_id"]
