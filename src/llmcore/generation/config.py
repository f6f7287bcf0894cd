"""GenerationConfig: every decoding option in one flat, validated dataclass.

The field names and meanings follow Hugging Face ``GenerationConfig`` so settings carry over, with two
simplifications: ``temperature == 0`` means greedy decoding (whatever ``do_sample`` says), and options that
only make sense with a tokenizer (``stop_strings``) are checked when :func:`generate` runs.

The sampling rule is Hugging Face's: tokens are sampled only with ``do_sample=True``. A sampling parameter
(``temperature``, ``top_k``, ``top_p``, ``min_p``) set without it has no effect — decoding stays greedy — and
a :class:`UserWarning` says so, once per process (as ``transformers`` does), so ``generate(ids,
temperature=0.8)`` is never silently greedy. The command line follows the same rule (``--do-sample``). Validation
happens in ``__post_init__`` and raises :class:`ConfigError` naming the field, the value and what is allowed
(:func:`llmcore.config.check_field`, the style every llmcore config shares).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import warnings
from dataclasses import dataclass
from typing import Any

from ..config import check_field, check_keys, is_int, is_number
from ..errors import ConfigError, GenerationError

MAX_NEW_TOKENS_LIMIT = 10_000_000  # beyond this a request is a typo (1e9 tokens would take days), not a plan
SAMPLING_FIELDS = {"temperature": 1.0, "top_k": None, "top_p": 1.0, "min_p": None}  # field -> its "off" value
_warned_unused_sampling = False  # the warning below is shown once per process (transformers does the same)


def _user_stacklevel() -> int:
    """The ``stacklevel`` that points a warning at the user's line: the first frame outside llmcore.

    The config is built from several depths (``GenerationConfig(...)``, ``generate(**kw)``, ``model.generate``,
    ``generate_text``), so a fixed level would blame llmcore or ``dataclasses`` for the user's call.
    """
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    internal = (package, os.path.dirname(dataclasses.__file__) + os.sep + "dataclasses.py")
    frame, level = sys._getframe(1), 1  # level 1 is the function calling warnings.warn
    wrappers = ("<string>", os.path.join("torch", "utils", "_contextlib.py"))  # dataclass __init__, no_grad
    while frame is not None and (frame.f_code.co_filename.startswith(internal)
                                 or frame.f_code.co_filename.endswith(wrappers)):
        frame, level = frame.f_back, level + 1
    return level


@dataclass
class GenerationConfig:
    """Options of :func:`llmcore.generation.generate` (and ``stream`` / ``beam_search``).

    Length:
        max_new_tokens: tokens to add after the prompt (the output may be shorter if every row stops early);
            at most 10^7. Buffers grow with what is produced, so a large value costs nothing until used.
        min_new_tokens: EOS is forbidden until this many tokens were generated.
    Sampling (applied only when ``do_sample`` and ``temperature > 0``; see ``processors`` for the order):
        do_sample: sample from the distribution instead of taking the argmax. Off (the default), the
            four options below are ignored and setting one of them warns once per process.
        temperature: logits / temperature; 0 means greedy.
        top_k: keep the k most likely tokens (None or 0: off).
        top_p: nucleus sampling, keep the smallest set of tokens whose probability reaches top_p (1.0: off).
        min_p: drop tokens whose probability is below min_p × the top probability (None or 0: off).
        seed: seeds a private ``torch.Generator``; the global RNG is never touched. None: a fresh random seed.
    Always applied (greedy, sampling and beams):
        repetition_penalty: CTRL penalty on tokens already present (1.0: off).
        no_repeat_ngram_size: forbid repeating any n-gram of this size (0: off).
        presence_penalty, frequency_penalty: OpenAI's penalties, in [-2, 2] (0: off): each token's logit is
            lowered by ``frequency_penalty`` x the times it was generated so far, plus ``presence_penalty`` once
            if it was generated at all (the prompt does not count).
        logit_bias: ``{token id: bias}``, each bias in [-100, 100], added to that token's logit at every step
            (OpenAI's: -100 all but bans a token, 100 all but forces it).
    Beam search:
        num_beams: beams per row (1: greedy or sampling).
        num_return_sequences: sequences returned per row (≤ num_beams for beam search; sampling draws that many).
        length_penalty: finished beams are ranked by sum_logprobs / generated_len ** length_penalty.
        early_stopping: True stops a row once num_beams hypotheses finished; False stops when the best running
            beam can no longer beat them (estimated at the current length); "never" uses the best possible length.
    Stopping and special tokens:
        eos_token_id: one id or a list; a row stops after producing any of them. None: the model config's
            ``extra`` or the tokenizer's eos id; [] : no EOS at all.
        stop_strings: a string or list; a row stops once its generated text contains one (needs a tokenizer).
        pad_token_id: fills finished rows (default: the tokenizer's pad id, else the first EOS id).
        bos_token_id: starts an empty prompt (default: the model config's ``extra`` or the tokenizer's bos id).
    Model:
        use_cache: reuse keys/values (prefill once, then one token per step); False recomputes every step.
        sliding_window: allow prompt + new tokens beyond the model's max_seq_len by feeding only the last
            max_seq_len tokens once the context is full (without a cache from then on), as nanoGPT crops.
            Off (the Python default): such a request raises :class:`GenerationError` before decoding. The
            ``llmcore generate`` command turns it on by default (``--no-sliding-window`` turns it off).
            The window counts ``inputs_embeds`` prefix positions too; a prompt with a prefix must fit the
            context even with a sliding window (the prefix is never cropped before the first step).
    """

    max_new_tokens: int = 20
    min_new_tokens: int = 0
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float = 1.0
    min_p: float | None = None
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] | None = None
    num_beams: int = 1
    num_return_sequences: int = 1
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    eos_token_id: int | list[int] | None = None
    stop_strings: str | list[str] | None = None
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    seed: int | None = None
    use_cache: bool = True
    sliding_window: bool = False

    def __post_init__(self) -> None:
        for name in ("max_new_tokens", "min_new_tokens", "no_repeat_ngram_size"):
            check_field(self, name, lambda v: is_int(v, 0), "an integer >= 0")
        if self.max_new_tokens > MAX_NEW_TOKENS_LIMIT:
            raise ConfigError(f"GenerationConfig.max_new_tokens={self.max_new_tokens!r} is invalid: at most "
                              f"{MAX_NEW_TOKENS_LIMIT:,} tokens can be requested per call; ask for fewer (a longer "
                              "text can be generated in several calls, each continuing the last).")
        for name in ("num_beams", "num_return_sequences"):
            check_field(self, name, lambda v: is_int(v, 1), "an integer >= 1")
        for name in ("top_k", "pad_token_id", "bos_token_id", "seed"):
            check_field(self, name, lambda v: v is None or is_int(v, 0), "None or an integer >= 0")
        check_field(self, "temperature", lambda v: is_number(v) and v >= 0, ">= 0 (0 means greedy)")
        check_field(self, "top_p", lambda v: is_number(v) and 0 < v <= 1, "in (0, 1] (1.0 disables nucleus sampling)")
        check_field(self, "min_p", lambda v: v is None or (is_number(v) and 0 <= v <= 1),
                    "None or in [0, 1] (None or 0 disables it)")
        check_field(self, "repetition_penalty", lambda v: is_number(v) and v > 0, "> 0 (1.0 disables it)")
        for name in ("presence_penalty", "frequency_penalty"):
            check_field(self, name, lambda v: is_number(v) and -2 <= v <= 2, "in [-2, 2] (0 disables it)")
        check_field(self, "logit_bias", lambda v: v is None or (isinstance(v, dict) and all(
            is_int(k, 0) and is_number(b) and -100 <= b <= 100 for k, b in v.items())),
            "None or {token id (int >= 0): bias in [-100, 100]}")
        check_field(self, "length_penalty", is_number, "a number")
        check_field(self, "early_stopping", lambda v: v in (True, False, "never"), "True, False or 'never'")
        for name in ("do_sample", "use_cache", "sliding_window"):
            check_field(self, name, lambda v: isinstance(v, bool), "True or False")
        check_field(self, "eos_token_id", lambda v: v is None or is_int(v, 0) or (
            isinstance(v, (list, tuple)) and all(is_int(i, 0) for i in v)),
            "None, an int >= 0 or a list of them ([] = no EOS, overriding the model's and tokenizer's)")
        check_field(self, "stop_strings", lambda v: v is None or (isinstance(v, str) and v) or (
            isinstance(v, (list, tuple)) and v and all(isinstance(s, str) and s for s in v)),
            "None, a non-empty string or a non-empty list of non-empty strings")
        if self.num_beams > 1 and self.do_sample and self.temperature > 0:
            raise GenerationError(
                f"Beam sampling is not supported: num_beams={self.num_beams} with do_sample=True. "
                "Use num_beams=1 to sample, or do_sample=False for beam search."
            )
        if self.num_beams > 1 and self.num_return_sequences > self.num_beams:
            raise ConfigError(f"GenerationConfig.num_return_sequences={self.num_return_sequences} exceeds "
                              f"num_beams={self.num_beams}; beam search returns at most num_beams sequences per row.")
        if self.num_beams == 1 and self.num_return_sequences > 1 and not self.is_sampling:
            raise ConfigError(f"GenerationConfig.num_return_sequences={self.num_return_sequences} needs sampling "
                              "(do_sample=True, temperature > 0) or beam search (num_beams > 1); greedy decoding "
                              "would return the same sequence each time.")

        self._warn_unused_sampling()

    def unused_sampling_options(self) -> list[str]:
        """The sampling options set to a non-default value while ``do_sample`` is off (they have no effect).

        ``temperature=0`` is not listed: it asks for greedy decoding, which is what happens.
        """
        if self.do_sample:
            return []
        return [name for name, off in SAMPLING_FIELDS.items()
                if getattr(self, name) not in (off, 0)]

    def _warn_unused_sampling(self) -> None:
        global _warned_unused_sampling
        unused = self.unused_sampling_options()
        if unused and not _warned_unused_sampling:
            _warned_unused_sampling = True
            shown = ", ".join(f"{n}={getattr(self, n)!r}" for n in unused)
            warnings.warn(f"{shown} only affects sampling, but do_sample=False: decoding is greedy. Pass "
                          "do_sample=True to sample (this warning is shown once per process).",
                          UserWarning, stacklevel=_user_stacklevel())

    # ------------------------------------------------------------------ derived
    @property
    def is_sampling(self) -> bool:
        """True when tokens are drawn at random (``do_sample`` and a non-zero temperature)."""
        return self.do_sample and self.temperature > 0

    @property
    def eos_ids(self) -> list[int]:
        """EOS ids as a list ([] when none)."""
        if self.eos_token_id is None:
            return []
        return [self.eos_token_id] if isinstance(self.eos_token_id, int) else list(self.eos_token_id)

    @property
    def stop_list(self) -> list[str]:
        """Stop strings as a list ([] when none)."""
        if self.stop_strings is None:
            return []
        return [self.stop_strings] if isinstance(self.stop_strings, str) else list(self.stop_strings)

    # ------------------------------------------------------------------ copies
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GenerationConfig:
        """Build from a dict; unknown keys raise :class:`ConfigError` listing the valid ones."""
        check_keys(cls, d, "options")
        return cls(**d)

    def replace(self, **changes: Any) -> GenerationConfig:
        """A re-validated copy with some fields changed; unknown names raise :class:`ConfigError`."""
        check_keys(type(self), changes, "options")
        return dataclasses.replace(self, **changes)



def device_memory_bytes(device: Any) -> int | None:
    """All the memory ``device`` has (GPU memory for CUDA, physical RAM otherwise); None when unknown."""
    import torch

    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.get_device_properties(device).total_memory)
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # not a POSIX system
        return None


def decoding_memory_bytes(config: GenerationConfig, rows: int, prompt_len: int, model_config: Any) -> int:
    """A lower estimate of what decoding ``rows`` prompts of ``prompt_len`` tokens with ``config`` allocates.

    Every row is expanded ``num_beams`` (or ``num_return_sequences`` when sampling) times; each expanded row
    holds its token ids (prompt + ``max_new_tokens``, int64), a key/value cache over the positions the model
    attends (at most ``max_seq_len``; float32 keys and values per layer) and its logits over the vocabulary.
    ``prompt_len`` counts every prompt position, ``inputs_embeds`` prefix positions included.
    """
    width = config.num_beams if config.num_beams > 1 else (config.num_return_sequences if config.is_sampling else 1)
    expanded = rows * width
    total = prompt_len + config.max_new_tokens
    context = min(total, getattr(model_config, "max_seq_len", None) or total)
    d_model = getattr(model_config, "d_model", 0) or 0
    n_layers = getattr(model_config, "n_layers", 1) or 1
    vocab = getattr(model_config, "vocab_size", 0) or 0
    per_row = 8 * total + 4 * 2 * n_layers * d_model * context + 4 * 2 * vocab
    return expanded * per_row


def check_decoding_memory(config: GenerationConfig, rows: int, prompt_len: int, model_config: Any,
                          device: Any = "cpu") -> None:
    """Raise :class:`GenerationError` when :func:`decoding_memory_bytes` exceeds all of ``device``'s memory.

    A request that cannot exist (``num_beams=10**8``: 77 GB of encoder states for one sentence) is refused
    before anything is allocated, naming the figures and what to lower, instead of failing deep in the
    allocator (or swapping for minutes).
    """
    need = decoding_memory_bytes(config, rows, prompt_len, model_config)
    have = device_memory_bytes(device)
    if have is not None and need > have:
        width = (f"{config.num_beams} beams" if config.num_beams > 1
                 else f"{config.num_return_sequences} sequences" if config.is_sampling else "1 sequence")
        raise GenerationError(
            f"Decoding {rows} row(s) x {width} x {prompt_len + config.max_new_tokens:,} tokens needs at least "
            f"{need / 2**30:,.1f} GiB but the device has {have / 2**30:,.1f} GiB in all; lower num_beams, "
            "num_return_sequences, the batch size or max_new_tokens.")
