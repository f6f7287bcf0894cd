"""Reading text to train a tokenizer on: files or strings as lines, with errors that name the problem.

Used by :meth:`SentencePieceTokenizer.train` and the ``llmcore tokenizer train`` command. Not a data
pipeline: the model's training data goes through ``llmcore.data``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ..errors import TokenizerError

_CJK = re.compile("[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\U00020000-\U0002fa1f]+")
CJK_HEAVY = 0.1  # CJK share of characters above which character_coverage defaults to 0.9995


def cjk_fraction(lines: Iterable[str]) -> float:
    """Share of non-space characters that are Chinese, Japanese kana or Korean hangul."""
    total = cjk = 0
    for line in lines:
        total += len(line) - line.count(" ")
        cjk += sum(map(len, _CJK.findall(line)))
    return cjk / total if total else 0.0


class TrainingCorpus:
    """Training lines from files or strings, with read errors kept for re-raising.

    sentencepiece calls the iterator from C++ and turns any exception into an opaque RuntimeError, so the
    first TokenizerError is stored in ``error`` and raised again by ``train``.
    """

    def __init__(self, input: Any) -> None:
        self.files: list[Path] | None = None
        self.texts: Iterable[str] | None = None
        self.error: TokenizerError | None = None
        self.lines = 0
        if isinstance(input, (str, os.PathLike)):
            self.files = [Path(input)]
        elif isinstance(input, (list, tuple)) and any(isinstance(x, os.PathLike) for x in input):
            self.files = [Path(x) for x in input]
        elif (
            isinstance(input, (list, tuple))
            and input
            and all(isinstance(x, str) for x in input)
            and all("\n" not in x and len(x) < 4096 and os.path.isfile(x) for x in input)
        ):
            self.files = [Path(x) for x in input]  # strings that all name files are paths, not texts
        else:
            self.texts = input
        for path in self.files or ():
            if not path.is_file():
                why = "is a directory" if path.is_dir() else "does not exist"
                if isinstance(input, str):
                    why += " (to train on text, pass a list of strings)"
                raise TokenizerError(f"training file {path} {why}")

    def describe(self) -> str:
        if self.files is None:
            return "the given texts"
        return ", ".join(str(p) for p in self.files[:3]) + (" ..." if len(self.files) > 3 else "")

    def __iter__(self) -> Iterator[str]:
        try:
            for line in self.lines_with_empty():
                if line:  # sentencepiece ignores empty lines; counting them would hide an empty corpus
                    self.lines += 1
                    yield line
        except TokenizerError as e:
            self.error = e
            raise

    def lines_with_empty(self) -> Iterator[str]:
        """Every line, empty ones included, without its line ending; raises TokenizerError on bad input."""
        if self.files is None:
            for i, text in enumerate(self.texts):
                if not isinstance(text, str):
                    raise TokenizerError(f"training text {i} is a {type(text).__name__}, not a str")
                yield from text.split("\n")  # sentencepiece trains on lines; "\n" is a user symbol
            return
        for path in self.files:
            with open(path, "rb") as f:
                for lineno, raw in enumerate(f, 1):
                    try:
                        line = raw.decode("utf-8")
                    except UnicodeDecodeError as e:
                        raise TokenizerError(
                            f"{path} is not UTF-8: line {lineno}, byte {e.start + 1} is 0x{raw[e.start]:02x}; "
                            "convert the file first, e.g. iconv -f latin1 -t utf-8"
                        ) from None
                    if lineno == 1:
                        line = line.removeprefix("\ufeff")  # a byte-order mark is not text
                    yield line.rstrip("\n").removesuffix("\r")


def training_error(msg: str, options: dict[str, Any], corpus: TrainingCorpus, max_len: int) -> TokenizerError:
    """Turn a sentencepiece training failure into a message with the value, the limit and the fix."""
    vocab = options["vocab_size"]
    if "sentences_.empty()" in msg:
        extra = ""
        if corpus.lines:  # lines were read, but sentencepiece skipped them all
            extra = f" (its {corpus.lines} lines are all longer than max_sentence_length={max_len} bytes)"
        return TokenizerError(
            f"cannot train a tokenizer on an empty corpus: no usable lines in {corpus.describe()}{extra}"
        )
    m = re.search(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)", msg)
    if m:
        return TokenizerError(
            f"vocab_size={vocab} is too large for this corpus: sentencepiece can make at most {m.group(2)} "
            f"pieces from {corpus.describe()}; pass vocab_size <= {m.group(2)} or train on more text"
        )
    m = re.search(r"required_chars\. (\d+) vs (\d+)", msg)
    if m:
        return TokenizerError(
            f"vocab_size={vocab} is too small: the corpus needs {m.group(2)} ids for its characters, "
            f"special tokens and user symbols at character_coverage={options['character_coverage']}; "
            f"raise vocab_size to at least {m.group(2)} or lower character_coverage"
        )
    return TokenizerError(f"sentencepiece training failed: {msg.strip()}")
