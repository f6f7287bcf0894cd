"""ModelConfig: one flat, validated, JSON-serialisable dataclass describing a Transformer.

Names, not classes, are stored (``norm="rmsnorm"``, ``activation="swiglu"``) so a config round-trips through
JSON and can be diffed. The names are looked up in the open registries of :mod:`llmcore.registry` (``NORMS``,
``MLPS``, ``POS_ENCODINGS``, ``ATTENTIONS``), which the built-ins in :mod:`llmcore.modules` fill when ``llmcore`` is imported
and a user extends from their own file. Validation happens in ``__post_init__`` and raises :class:`ConfigError` naming the
field, the value and what is allowed. Named presets cover the shapes tests, examples and conversions need;
``from_preset(name, **overrides)`` is the way to get one.

The small validation helpers at the end (:func:`check_field`, :func:`check_keys`) are the one style every
llmcore config dataclass uses (ModelConfig, TrainConfig, GenerationConfig, RunConfig, the commands' own):
``ConfigError("Cls.field=value is invalid: it must be ...")`` for a bad value and a list of the valid keys for
an unknown one. :func:`parse_assignment` / :func:`parse_value` read ``KEY=VALUE`` overrides given as text
(``--set``, ``--grid``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from .errors import ConfigError
from .io import read_json
from .registry import ATTENTIONS, MLPS, NORMS, POS_ENCODINGS


@dataclass
class ModelConfig:
    """Hyper-parameters of a decoder-only (or encoder-decoder) Transformer.

    ``d_ff`` defaults to 4·d_model (GELU/ReLU) or the Llama-style 8/3·d_model rounded up to a multiple of
    ``multiple_of`` (SwiGLU), so the parameter count stays comparable across activations.

    ``extra`` holds what describes where a model came from or what a task around it needs, never how the
    network computes (that is a typed field, here or in a subclass such as ``Seq2SeqConfig``). It is kept
    through JSON and through a Hugging Face export (under ``llmcore_extra``). The keys llmcore reads:

    * ``hf_model_type``, ``hf_dropout``, ``hf_sliding_window``, ``hf_max_position_embeddings``: Hugging Face
      provenance, written by :mod:`llmcore.convert` on import and used to export the same layout back;
    * ``bos_token_id``, ``eos_token_id``, ``pad_token_id``: the ids of a converted HF config, used by
      :func:`llmcore.generation.generate` when neither the GenerationConfig nor a tokenizer gives them;
    * ``translation``: ``{"src_lang_tag", "tgt_lang_tag", "template"}``, the prompt a model was trained on
      (see :class:`llmcore.translation.Translator`, which validates it).
    * ``label_names``: a classifier's class names in id order (``llmcore finetune --task classify`` writes them,
      ``llmcore classify`` / ``eval --task classify`` print them).

    Any other key is the user's own, stored and never read.
    """

    vocab_size: int = 50257
    max_seq_len: int = 1024
    d_model: int = 768
    n_layers: int = 12
    n_heads: int = 12
    n_kv_heads: int | None = None  # None = n_heads (MHA); 1 = MQA; in between = GQA
    d_ff: int | None = None
    pos_encoding: str = "learned"
    rope_theta: float = 10000.0
    norm: str = "layernorm"
    norm_eps: float = 1e-5
    activation: str = "gelu"
    attention: str = "default"  # the attention class of every block (llmcore.registry.ATTENTIONS)
    bias: bool = True
    dropout: float = 0.0
    tie_embeddings: bool = True
    init_std: float = 0.02
    multiple_of: int = 64  # SwiGLU hidden size rounding, as in Llama
    # Encoder-decoder only (Seq2SeqTransformer); ignored by TransformerLM.
    n_encoder_layers: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # not read by the model; see the class docstring

    # ``extra`` keys that earlier versions used for what is now a typed field of this class: ``from_dict``
    # moves them into the field, so a config.json written before the field existed loads with its meaning.
    legacy_extra: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        for name in ("vocab_size", "max_seq_len", "d_model", "n_layers", "n_heads", "n_kv_heads"):
            check_field(self, name, lambda v: is_int(v, 1), "a positive integer")
        check_field(self, "n_encoder_layers", lambda v: is_int(v, 0), "an integer >= 0")
        if self.d_model % self.n_heads:
            raise ConfigError(
                f"ModelConfig.d_model={self.d_model} is not divisible by n_heads={self.n_heads}; "
                f"pick d_model as a multiple of n_heads (e.g. {self.n_heads * max(1, self.d_model // self.n_heads)})."
            )
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(
                f"ModelConfig.n_heads={self.n_heads} is not divisible by n_kv_heads={self.n_kv_heads}; "
                "grouped-query attention shares each key/value head between n_heads/n_kv_heads query heads."
            )
        for name, table in (("pos_encoding", POS_ENCODINGS), ("norm", NORMS), ("activation", MLPS),
                            ("attention", ATTENTIONS)):
            value = getattr(self, name)
            if not isinstance(value, str) or value not in table:
                raise ConfigError(f"ModelConfig.{name}={value!r} is unknown; registered: {', '.join(table.names())}. "
                                  f"Register a new one with llmcore.registry.{table.var}.register(name, ...) "
                                  "before building the config.")
        if self.pos_encoding == "rope" and self.head_dim % 2:
            raise ConfigError(f"RoPE needs an even head_dim, got d_model/n_heads={self.head_dim}.")
        check_field(self, "dropout", lambda v: is_number(v) and 0.0 <= v < 1.0, "in [0, 1)")
        for name in ("norm_eps", "init_std", "rope_theta"):
            check_field(self, name, lambda v: is_number(v) and v > 0, "> 0")
        if self.d_ff is None:
            if self.activation == "swiglu":
                hidden = int(8 * self.d_model / 3)
                self.d_ff = self.multiple_of * math.ceil(hidden / self.multiple_of)
            else:
                self.d_ff = 4 * self.d_model
        check_field(self, "d_ff", lambda v: is_int(v, 1), "a positive integer")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Build from a dict; unknown keys raise :class:`ConfigError` (a typo never passes silently).

        ``extra`` keys named in :attr:`legacy_extra` move into their typed fields (old config.json files).
        """
        check_keys(cls, d)
        extra = dict(d.get("extra") or {})
        lifted = {k: extra.pop(k) for k in cls.legacy_extra if k in extra}
        if lifted:
            d = {**d, **lifted, "extra": extra}
        return cls(**d)

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        if path is not None:
            from .io import atomic_write_bytes  # same layer; imported here so config loads without io

            atomic_write_bytes(path, (text + "\n").encode("utf-8"))
        return text

    @classmethod
    def from_json(cls, path: str | Path) -> ModelConfig:
        """Read a config written by :meth:`to_json`."""
        return cls.from_dict(read_json(path, f"{cls.__name__} (an object of its fields)", ConfigError))

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with some fields changed (re-validated). Derived d_ff is recomputed unless given."""
        d = self.to_dict()
        if "d_model" in changes or "activation" in changes:
            d["d_ff"] = None
        d.update(changes)
        return self.from_dict(d)

    # ------------------------------------------------------------------ presets
    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> ModelConfig:
        """A named preset with optional field overrides, e.g. ``from_preset("debug", vocab_size=512)``."""
        if name not in PRESETS:
            raise ConfigError(f"Unknown preset {name!r}; available presets: {', '.join(PRESETS)}.")
        d = dict(PRESETS[name])
        d.update(overrides)
        return cls.from_dict(d)


# Presets are plain dicts so they are data, not code. Keep them few (see STYLE.md, anti-pattern 5).
PRESETS: dict[str, dict[str, Any]] = {
    # Tiny: unit tests, CI, smoke runs. Llama-style so tests exercise RoPE, RMSNorm, SwiGLU and GQA.
    "debug": dict(vocab_size=256, max_seq_len=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                  pos_encoding="rope", norm="rmsnorm", activation="swiglu", bias=False, tie_embeddings=False),
    # The default of `llmcore train`: the shapes of nanoGPT's shakespeare-char "baby GPT" scaled for a CPU (4
    # layers, 4 heads, 128 wide, ctx 64) with Llama's choices (RoPE, RMSNorm, SwiGLU). SwiGLU's 8/3·d_model
    # rounded to a multiple of 8 (344, not Llama's 384) keeps the parameter count of the GELU model (800,000
    # vs 804,096), and still follows d_model when it is overridden. See docs/benchmarks.md, "Quality".
    "char-small": dict(vocab_size=65, max_seq_len=64, d_model=128, n_layers=4, n_heads=4, multiple_of=8,
                       pos_encoding="rope", norm="rmsnorm", activation="swiglu", bias=False,
                       dropout=0.0, tie_embeddings=True),
    # nanoGPT's baby GPT itself (learned positions, LayerNorm, GELU): the like-for-like reference, and the
    # GPT-2 layout the Hugging Face benchmarks compare against.
    "nanogpt": dict(vocab_size=65, max_seq_len=64, d_model=128, n_layers=4, n_heads=4,
                    pos_encoding="learned", norm="layernorm", activation="gelu", bias=False,
                    dropout=0.0, tie_embeddings=True),
    # GPT-2 small (124M) shapes.
    "gpt2": dict(vocab_size=50257, max_seq_len=1024, d_model=768, n_layers=12, n_heads=12,
                 pos_encoding="learned", norm="layernorm", activation="gelu_tanh", bias=True, tie_embeddings=True),
    # A small Llama-family model (RoPE, RMSNorm, SwiGLU, GQA, untied head).
    "llama-tiny": dict(vocab_size=32000, max_seq_len=512, d_model=256, n_layers=4, n_heads=8, n_kv_heads=2,
                       pos_encoding="rope", norm="rmsnorm", norm_eps=1e-6, activation="swiglu", bias=False,
                       tie_embeddings=False),
    # A small model for the English/Chinese examples on a 2-core CPU.
    "small": dict(vocab_size=8000, max_seq_len=128, d_model=256, n_layers=4, n_heads=4,
                  pos_encoding="rope", norm="rmsnorm", activation="swiglu", bias=False, tie_embeddings=True),
}


# ---------------------------------------------------------------------------------------------- validation
def is_int(value: Any, low: int | None = None) -> bool:
    """An int (not a bool), at least ``low`` when given."""
    return isinstance(value, int) and not isinstance(value, bool) and (low is None or value >= low)


def is_number(value: Any) -> bool:
    """An int or float, not a bool and not NaN."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def check_field(config: Any, name: str, ok: Callable[[Any], bool], allowed: str) -> None:
    """Raise ``ConfigError("Cls.name=value is invalid: it must be <allowed>.")`` unless ``ok(value)``.

    A ``TypeError`` inside ``ok`` (a string compared with a number) counts as invalid. The message names the
    field the way the commands rewrite it into a flag (``cli.common.make_config``).
    """
    value = getattr(config, name)
    try:
        good = ok(value)
    except TypeError:
        good = False
    if not good:
        raise ConfigError(f"{type(config).__name__}.{name}={value!r} is invalid: it must be {allowed}.")


def check_keys(cls: type, keys: Iterable[str], noun: str = "keys") -> None:
    """ConfigError listing the valid ones when a name in ``keys`` is not a field of dataclass ``cls``."""
    known = sorted(f.name for f in dataclasses.fields(cls))
    unknown = sorted(set(keys) - set(known))
    if unknown:
        raise ConfigError(f"Unknown {cls.__name__} {noun} {unknown}; valid {noun} are: {', '.join(known)}.")


def parse_assignment(item: str, flag: str, example: str) -> tuple[str, str]:
    """``"n-layers=4"`` -> ``("n_layers", "4")`` (dashes become underscores); ConfigError naming ``flag``
    and showing ``example`` (e.g. ``"dropout=0.1"``) when ``item`` is not ``KEY=VALUE`` with both parts."""
    key, sep, value = item.partition("=")
    key = key.strip().replace("-", "_")
    if not sep or not key or not value.strip():
        raise ConfigError(f"{flag} {item!r} is not KEY=VALUE, e.g. {flag} {example}.")
    return key, value


def parse_value(text: str) -> Any:
    """JSON when it parses (numbers, true/false/null, lists), else the plain string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text
