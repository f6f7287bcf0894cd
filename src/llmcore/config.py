"""ModelConfig: one flat, validated, JSON-serialisable dataclass describing a Transformer.

Names, not classes, are stored (``norm="rmsnorm"``, ``activation="swiglu"``) so a config round-trips through
JSON and can be diffed. The names are looked up in the open registries of :mod:`llmcore.registry` (``NORMS``,
``MLPS``, ``POS_ENCODINGS``), which the built-ins in :mod:`llmcore.modules` fill when ``llmcore`` is imported
and a user extends from their own file. Validation happens in ``__post_init__`` and raises :class:`ConfigError` naming the
field, the value and what is allowed. Named presets cover the shapes tests, examples and conversions need;
``from_preset(name, **overrides)`` is the way to get one.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .registry import MLPS, NORMS, POS_ENCODINGS


@dataclass
class ModelConfig:
    """Hyper-parameters of a decoder-only (or encoder-decoder) Transformer.

    ``d_ff`` defaults to 4·d_model (GELU/ReLU) or the Llama-style 8/3·d_model rounded up to a multiple of
    ``multiple_of`` (SwiGLU), so the parameter count stays comparable across activations.
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
    bias: bool = True
    dropout: float = 0.0
    tie_embeddings: bool = True
    init_std: float = 0.02
    multiple_of: int = 64  # SwiGLU hidden size rounding, as in Llama
    # Encoder-decoder only (Seq2SeqTransformer); ignored by TransformerLM.
    n_encoder_layers: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # free-form, kept through JSON (e.g. HF provenance)

    def __post_init__(self) -> None:
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        for name in ("vocab_size", "max_seq_len", "d_model", "n_layers", "n_heads", "n_kv_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"ModelConfig.{name}={value!r} is invalid: it must be a positive integer.")
        if self.n_encoder_layers < 0:
            raise ConfigError(f"ModelConfig.n_encoder_layers={self.n_encoder_layers} must be >= 0.")
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
        for name, table in (("pos_encoding", POS_ENCODINGS), ("norm", NORMS), ("activation", MLPS)):
            value = getattr(self, name)
            if not isinstance(value, str) or value not in table:
                raise ConfigError(f"ModelConfig.{name}={value!r} is unknown; registered: {', '.join(table.names())}. "
                                  f"Register a new one with llmcore.registry.{table.var}.register(name, ...) "
                                  "before building the config.")
        if self.pos_encoding == "rope" and self.head_dim % 2:
            raise ConfigError(f"RoPE needs an even head_dim, got d_model/n_heads={self.head_dim}.")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"ModelConfig.dropout={self.dropout} must be in [0, 1).")
        if self.norm_eps <= 0 or self.init_std <= 0 or self.rope_theta <= 0:
            raise ConfigError("ModelConfig.norm_eps, init_std and rope_theta must be > 0.")
        if self.d_ff is None:
            if self.activation == "swiglu":
                hidden = int(8 * self.d_model / 3)
                self.d_ff = self.multiple_of * math.ceil(hidden / self.multiple_of)
            else:
                self.d_ff = 4 * self.d_model
        if not isinstance(self.d_ff, int) or self.d_ff < 1:
            raise ConfigError(f"ModelConfig.d_ff={self.d_ff!r} must be a positive integer.")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Build from a dict; unknown keys raise :class:`ConfigError` (a typo never passes silently)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(
                f"Unknown ModelConfig keys {unknown}; valid keys are: {', '.join(sorted(known))}."
            )
        return cls(**d)

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        if path is not None:
            Path(path).write_text(text + "\n", encoding="utf-8")
        return text

    @classmethod
    def from_json(cls, path: str | Path) -> ModelConfig:
        """Read a config written by :meth:`to_json`."""
        try:
            d = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError as e:
            raise ConfigError(f"Model config {path} does not exist; point at a config.json.") from e
        except json.JSONDecodeError as e:
            raise ConfigError(f"Cannot parse {path} as JSON ({e}); expected an object of ModelConfig fields.") from e
        return cls.from_dict(d)

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
    # nanoGPT's shakespeare-char "baby GPT" scaled for a CPU (its README: 4 layers, 4 heads, 128 wide, ctx 64).
    "char-small": dict(vocab_size=65, max_seq_len=64, d_model=128, n_layers=4, n_heads=4,
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
