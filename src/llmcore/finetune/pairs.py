"""Source → target pairs for supervised fine-tuning, with the loss on the target only.

Each example is ``prompt + target + <eos>``, where the prompt is ``[<bos>] [src tag] template(src) [tgt tag]``.
Labels are ``IGNORE_INDEX`` (-100) on every prompt position, so the model learns to *produce* targets, not to
model prompts (instruction tuning, translation). Padding is on the right with ignored labels: under causal
attention real tokens never see the pads that follow them, so training needs no attention mask, and a batch
is just ``{"input_ids": (B, T), "labels": (B, T)}`` (the Trainer calls ``model(input_ids=...)``).

The shift: the full sequence ``ids`` (length n) gives ``input_ids = ids[:-1]`` and ``labels = labels[1:]``, so
``labels[t]`` is the label for predicting position ``t + 1`` from ``input_ids[:t + 1]``. The first target token is predicted from
the last prompt token, and ``<eos>`` from the last target token.

Files: TSV with a header row, tab-separated, no quoting (a tab or newline inside a field is not
representable), or JSONL with one object per line (``.jsonl`` / ``.json``). Prompt and target are encoded
separately, exactly as a prompt is encoded at generation time.
"""

from __future__ import annotations

import json
import string
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..data.examples import ExampleDataset, check_rows_in_vocab, collate_pad
from ..errors import ConfigError, DataError, TokenizerError
from ..inputs import IGNORE_INDEX
from ..tokenizer import language_tag_id

# Named prompt templates; ``{src}`` is the source text. Any other string containing ``{src}`` works too.
TEMPLATES: dict[str, str] = {
    "plain": "{src}",
    "translate": "Translate to Chinese:\n{src}\n",
    "en-zh": "English: {src}\nChinese: ",
    "instruction": "### Instruction:\n{src}\n\n### Response:\n",
}

TOO_LONG = ("error", "drop", "truncate")


def check_template(template: Any, where: str = "Prompt template") -> str:
    """``template`` (a name from :data:`TEMPLATES` or a format string), checked: the format string it stands for.

    A template fills in plain ``{src}`` fields and nothing else: no other field, no attribute or index
    (``{src.__class__}``), no conversion (``{src!r}``) and no format spec (``{src:>2000000000}`` would allocate
    2 GB per sentence). Literal braces are doubled, ``{{`` and ``}}``. A template may come from a downloaded
    model's ``config.json``, so it is checked before any text is formatted with it.

    Raises:
        ConfigError: naming the template, the offending field and what is allowed.
    """
    if not isinstance(template, str):
        raise ConfigError(f"{where} {template!r} is not a string; use one of {list(TEMPLATES)} or a format string "
                          "containing {src}.")
    template = TEMPLATES.get(template, template)
    try:
        fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(template) if name is not None]
    except ValueError as e:  # a single '{' or '}'
        raise ConfigError(f"{where} {template!r} is not a valid format string ({e}); double literal braces: "
                          "'{{' and '}}'.") from e
    for name, spec, conv in fields:
        if name != "src" or spec or conv:
            shown = "{" + name + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "") + "}"
            raise ConfigError(f"{where} {template!r} uses field {shown}; only plain {{src}} is filled in (no other "
                              "name, attribute, index, !conversion or :format spec; double literal braces: '{{' "
                              "and '}}').")
    if not fields:
        raise ConfigError(f"{where} {template!r} has no '{{src}}' field; use one of {list(TEMPLATES)} "
                          "or a format string containing {src}.")
    return template


def read_pairs(source: str | Path | Sequence[Mapping[str, Any]] | Sequence[Sequence[str]],
               src_col: str = "src", tgt_col: str = "tgt") -> list[tuple[str, str]]:
    """Read (source, target) string pairs from a TSV/JSONL file or from in-memory rows.

    Rows may be mappings (columns by name) or 2-sequences ``(src, tgt)``. Missing columns and empty
    targets raise :class:`DataError` naming the file, the line and the columns that exist.
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise DataError(f"Pair file {path} does not exist; pass a .tsv (header row) or .jsonl file.")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"Pair file {path} is not UTF-8 ({e}); re-encode it as UTF-8.") from e
        lines = text.splitlines()
        where = str(path)
        if path.suffix in (".jsonl", ".json"):
            rows: list[tuple[int, Any]] = []
            for i, line in enumerate(lines, 1):
                if line.strip():
                    try:
                        rows.append((i, json.loads(line)))
                    except json.JSONDecodeError as e:
                        raise DataError(f"{path}:{i} is not valid JSON ({e}); JSONL needs one object per line.") from e
        else:
            if not lines:
                raise DataError(f"Pair file {path} is empty; a TSV needs a header row naming the columns.")
            header = lines[0].split("\t")
            for col in (src_col, tgt_col):
                if col not in header:
                    raise DataError(f"{path} has no column {col!r}; its header has {header}. "
                                    "Pass src_col=/tgt_col= (CLI: --src-col/--tgt-col) naming existing columns.")
            rows = []
            for i, line in enumerate(lines[1:], 2):
                if not line.strip():
                    continue
                fields = line.split("\t")
                if len(fields) > len(header):  # usually a stray tab inside the text: refuse rather than drop
                    raise DataError(f"{path}:{i} has {len(fields)} tab-separated fields but the header has "
                                    f"{len(header)}; a tab inside the text? Replace it (TSV fields cannot hold tabs).")
                rows.append((i, dict(zip(header, fields))))
    else:
        rows, where = list(enumerate(source, 1)), "rows"
    pairs = []
    for i, row in rows:
        if isinstance(row, Mapping):
            missing = [c for c in (src_col, tgt_col) if c not in row]
            if missing:
                raise DataError(f"{where}:{i} has no column {missing[0]!r}; it has {sorted(row)}. "
                                "Pass src_col=/tgt_col= naming existing columns.")
            src, tgt = row[src_col], row[tgt_col]
        elif isinstance(row, Sequence) and not isinstance(row, str) and len(row) == 2:
            src, tgt = row
        else:
            raise DataError(f"{where}:{i} is neither a mapping of columns nor a (src, tgt) pair: {row!r:.80}.")
        if not isinstance(src, str) or not isinstance(tgt, str):
            raise DataError(f"{where}:{i}: source and target must be strings, got {type(src).__name__}, "
                            f"{type(tgt).__name__}.")
        if not tgt.strip():
            raise DataError(f"{where}:{i} has an empty target ({tgt_col!r}); there is nothing to learn from it. "
                            "Remove the row or fill in the target.")
        pairs.append((src, tgt))
    if not pairs:
        raise DataError(f"{where} holds no pairs.")
    return pairs


def pad_batch(seqs: Sequence[Sequence[int]], labels: Sequence[Sequence[int]], pad_id: int,
              width: int | None = None) -> dict[str, torch.Tensor]:
    """Right-pad full sequences and labels to ``width`` (default: the longest), then shift.

    Returns ``{"input_ids": (B, T-1), "labels": (B, T-1)}``, labels ``IGNORE_INDEX`` on pads.
    """
    ids, _, lab = collate_pad(seqs, pad_id, "right", label_pad=IGNORE_INDEX, labels=labels, width=width)  # (B, T)
    return {"input_ids": ids[:, :-1], "labels": lab[:, 1:]}  # labels[t] is the token at t + 1


class PairDataset(ExampleDataset):
    """Prompt-masked (source, target) examples for the Trainer: ``sample_batch`` and ``iter_eval``.

    Args:
        source: a TSV/JSONL path, or rows (mappings or ``(src, tgt)`` pairs); see :func:`read_pairs`.
        tokenizer: any llmcore tokenizer (``encode``, ``eos_id``, ``bos_id``, ``pad_id``, ``token_to_id``).
        template: a name from :data:`TEMPLATES` or a format string containing ``{src}``.
        src_col, tgt_col: column names for files and mapping rows.
        src_lang_tag, tgt_lang_tag: optional tag tokens (e.g. ``"<2en>"``, ``"<2zh>"``) put before the
            prompt text and at the end of the prompt; each must be a single token of the tokenizer.
        max_len: the longest full sequence (prompt + target + eos); the model sees ``max_len - 1`` inputs.
        too_long: policy for longer examples: ``"error"`` (DataError naming the row), ``"drop"`` (skipped,
            with a warning giving the count) or ``"truncate"`` (the target is cut at the end, losing its
            ``<eos>``; a prompt that leaves no room for a target token is still an error).
        add_bos: start each example with ``<bos>`` (when the tokenizer has one).
        bucket: length-bucketing factor of ``sample_batch`` (1 = plain random batches; see
            :class:`~llmcore.data.ExampleDataset`).
        vocab_size: the model's vocabulary size (default: the tokenizer's); every id is checked against it
            once, here.
    """

    def __init__(self, source: Any, tokenizer: Any, template: str = "{src}", src_col: str = "src",
                 tgt_col: str = "tgt", src_lang_tag: str | None = None, tgt_lang_tag: str | None = None,
                 max_len: int = 256, too_long: str = "error", add_bos: bool = True, bucket: int = 1,
                 vocab_size: int | None = None) -> None:
        template = check_template(template)
        if too_long not in TOO_LONG:
            raise ConfigError(f"too_long={too_long!r} is not one of {TOO_LONG}.")
        if max_len < 2:
            raise ConfigError(f"max_len={max_len} must be >= 2 (one prompt token and one target token).")
        if tokenizer.eos_id is None:
            raise TokenizerError("PairDataset needs a tokenizer with an eos token to end each target.")
        self.tokenizer, self.template, self.max_len = tokenizer, template, max_len
        # Pads are never attended by real tokens (right padding, causal) and carry ignored labels, so any valid
        # id works.
        self.pad_id = tokenizer.fill_id
        pre = [tokenizer.bos_id] if add_bos and tokenizer.bos_id is not None else []
        pre += [language_tag_id(tokenizer, src_lang_tag, "source-language tag")] if src_lang_tag else []
        post = [language_tag_id(tokenizer, tgt_lang_tag, "target-language tag")] if tgt_lang_tag else []
        self.pairs = read_pairs(source, src_col, tgt_col)
        self.ids: list[list[int]] = []
        self.labels: list[list[int]] = []
        self.prompt_lens: list[int] = []
        dropped = 0
        for i, (src, tgt) in enumerate(self.pairs):
            prompt_text = template.format(src=src)  # check_template allowed plain {src} fields only
            prompt = pre + list(tokenizer.encode(prompt_text)) + post
            target = list(tokenizer.encode(tgt)) + [tokenizer.eos_id]
            n = len(prompt) + len(target)
            if n > max_len:
                if too_long == "drop":
                    dropped += 1
                    continue
                if too_long == "error" or len(prompt) >= max_len:
                    raise DataError(f"Example {i} has {n} tokens (prompt {len(prompt)}, target {len(target)}) but "
                                    f"max_len={max_len}; raise max_len or pass too_long='drop' / 'truncate'.")
                target = target[:max_len - len(prompt)]
            self.ids.append(prompt + target)
            self.labels.append([IGNORE_INDEX] * len(prompt) + target)
            self.prompt_lens.append(len(prompt))
        if dropped:
            warnings.warn(f"PairDataset dropped {dropped} of {len(self.pairs)} examples longer than max_len={max_len}.",
                          stacklevel=2)
        if not self.ids:
            raise DataError(f"No example fits max_len={max_len}; raise max_len.")
        check_rows_in_vocab([*self.ids, [] if self.pad_id is None else [self.pad_id]],
                            vocab_size if vocab_size is not None else tokenizer.vocab_size, "the encoded pairs")
        self.bucket = bucket

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_tokens(self) -> int:
        """Input tokens in one pass (real tokens only): the Trainer counts epochs in tokens, and its count
        includes padding, so with ragged lengths an epoch boundary comes slightly early."""
        return sum(len(s) - 1 for s in self.ids)

    def example_length(self, i: int) -> int:
        return len(self.ids[i])

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"input_ids": self.ids[i], "labels": self.labels[i], "prompt_len": self.prompt_lens[i]}

    def collate(self, indices: Sequence[int], batch: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
        """``{"input_ids", "labels"}`` (B, T): right-padded (to the longest of ``batch``, default ``indices``)
        and shifted; labels are ``IGNORE_INDEX`` on prompt positions and pads."""
        width = max(len(self.ids[i]) for i in (batch if batch is not None else indices))
        return pad_batch([self.ids[i] for i in indices], [self.labels[i] for i in indices], self.pad_id, width)

    def prompt(self, i: int) -> list[int]:
        """The prompt ids of example ``i``, as to feed ``generate`` for evaluation."""
        return self.ids[i][:self.prompt_lens[i]]
