"""What every command shares: flags generated from the config dataclasses, plugins, and model loading.

Defaults live once, on the dataclass fields (:class:`~llmcore.training.TrainConfig`,
:class:`~llmcore.generation.GenerationConfig`, :class:`~llmcore.training.run.RunConfig`, the small option
dataclasses of the commands). :func:`add_dataclass_args` turns fields into flags whose type and default come
from the field and whose help text comes from :data:`HELP`; the help shows the default. A generated flag that
is not given is *absent* from the parsed namespace (``argparse.SUPPRESS``), so :func:`given` tells what the
user chose from what the dataclass supplies, and ``--set key=value`` can be overridden by an explicit flag.

This module imports no torch: ``llmcore --help`` builds every parser without loading a model library.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib
import importlib.util
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any

from ..config import PRESETS, parse_assignment, parse_value
from ..errors import CheckpointError, ConfigError, DataError

PLUGIN_GROUP = "llmcore.plugins"  # importlib.metadata entry-point group loaded by model commands

# Help text of each generated flag, by field name (one concept, one name, one text across commands).
HELP = {
    # TrainConfig
    "max_steps": "optimizer steps",
    "batch_size": "sequences (or sentences) per batch, per process",
    "grad_accum": "micro-batches per optimizer step",
    "lr": "peak learning rate",
    "min_lr": "learning rate at the end of the schedule",
    "warmup_steps": "linear warm-up steps",
    "eval_interval": "evaluate and checkpoint every N steps",
    "eval_batches": "validation batches per evaluation",
    "patience": "early stopping after N evaluations without improvement (default: off)",
    "seed": "seed of the data order and the initial weights",
    "device": "device to run on (auto: cuda when available)",
    "dtype": "float32, or bfloat16 autocast",
    "compile": "torch.compile the model",
    "progress": "show a progress bar",
    "num_samples": "text samples printed at the end",
    # RunConfig (data and model choice)
    "data": "UTF-8 text files (.txt, .gz, .xz, .zst, .jsonl), glob patterns or directories of *.txt / *.txt.gz "
            "(default: the bundled Shakespeare)",
    "tokenizer": "char (alphabet of the data), byte (UTF-8 bytes), sp (train a sentencepiece BPE on the data) "
                 "or a saved tokenizer directory",
    "vocab_size": "vocabulary size for --tokenizer sp (default: 4096)",
    "val_fraction": "share of the data, taken from the end (text) or at random (examples), held out for "
                    "validation",
    "dask": "tokenize on Dask: local:N (a local cluster of N worker processes) or a scheduler address "
            "(tcp://host:8786), needs pip install 'llmcore[dask]'; the prepared data is the same as without",
    "preset": f"model shape preset: {', '.join(PRESETS)} (llmcore.config.PRESETS)",
    "arch": "registered architecture to build (llmcore.registry.ARCHITECTURES; see --import)",
    # GenerationConfig
    "max_new_tokens": "tokens to generate (the default is capped to the room the prompt leaves in the model's "
                      "context)",
    "do_sample": "sample instead of greedy decoding (greedy is the default; sampling options need this)",
    "temperature": "sampling temperature (0 = greedy)",
    "top_k": "sample from the k most likely tokens (default: off)",
    "top_p": "nucleus sampling mass in (0, 1] (1.0 = off)",
    "min_p": "drop tokens below min_p x the top probability (default: off)",
    "repetition_penalty": "> 1 discourages tokens already present (1.0 = off)",
    "no_repeat_ngram_size": "never repeat an n-gram of this many tokens (0 = off)",
    "num_beams": "beam width (1 = greedy or sampling)",
    "sliding_window": "generate past the model's context by keeping only the last max_seq_len tokens",
}

METAVARS = {"data": "PATH", "tokenizer": "char|byte|sp|DIR", "preset": "NAME", "arch": "NAME",
            "dask": "local:N|ADDRESS"}

# Fields whose value is one of a fixed set (the dataclass validates them too; this makes argparse list them).
CHOICES = {"device": ("auto", "cpu", "cuda"), "dtype": ("float32", "bfloat16")}


def field_default(cls: type, name: str) -> Any:
    """The default of dataclass field ``name`` of ``cls`` (calling its default_factory if it has one)."""
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise ConfigError(f"{cls.__name__}.{name} has no default; it cannot become an optional flag.")


def _scalar(hint: Any) -> Any:
    """``int | None`` -> int; ``list[str] | None`` -> (list, str); ``Any`` -> str."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = args[0] if args else str
    if typing.get_origin(hint) in (list, tuple):
        return (list, typing.get_args(hint)[0] if typing.get_args(hint) else str)
    return hint if hint in (int, float, str, bool) else str


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_dataclass_args(parser: argparse.ArgumentParser | Any, cls: type, fields: list[str], *,
                       defaults: dict[str, Any] | None = None, flags: dict[str, list[str]] | None = None,
                       help: dict[str, str] | None = None) -> None:
    """Add one flag per dataclass field: type, default and choices from ``cls``, help from :data:`HELP`.

    Args:
        parser: an argparse parser or argument group.
        cls: the dataclass whose fields these are.
        fields: the field names, in the order the flags are listed.
        defaults: command-specific defaults that replace the field's (shown in the help and applied by
            :func:`given`); e.g. a fine-tune's lower learning rate.
        flags: extra spellings per field (a hidden alias keeps an old name working).
        help: help texts that replace :data:`HELP` for this command.
    """
    hints = typing.get_type_hints(cls)
    for name in fields:
        default = (defaults or {}).get(name, field_default(cls, name))
        text = (help or {}).get(name, HELP.get(name, name.replace("_", " ")))
        kind = _scalar(hints[name])
        names = [flag_name(name), *(flags or {}).get(name, [])]
        if kind is bool:
            if default:  # an option that is on by default is turned off with --no-NAME
                names = ["--no-" + name.replace("_", "-"), *(flags or {}).get(name, [])]
                parser.add_argument(*names, dest=name, action="store_false", default=argparse.SUPPRESS,
                                    help=f"do not {text[0].lower() + text[1:]}")
            else:
                parser.add_argument(*names, dest=name, action="store_true", default=argparse.SUPPRESS,
                                    help=f"{text} (default: off)")
            continue
        shown = "" if "(default:" in text else f" (default: {_show(default)})"
        kw: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": text + shown}
        if isinstance(kind, tuple):
            kw.update(nargs="+", action="extend", type=kind[1], metavar=METAVARS.get(name, name.upper()))
        else:
            kw["type"] = kind
            if name in CHOICES:
                kw["choices"] = CHOICES[name]
            else:
                kw["metavar"] = METAVARS.get(name) or {int: "N", float: "X"}.get(kind, name.upper())
        parser.add_argument(*names, **kw)


def _show(value: Any) -> str:
    return "off" if value is None else str(value)


# ---------------------------------------------------------------------------------------------- help texts
_ROLE = re.compile(r":(?:func|class|meth|mod|data|attr|exc|obj):`~?([^`]+)`")
_LITERAL = re.compile(r"``(.+?)``", re.S)


def plain_text(text: str | None) -> str | None:
    """Docstring markup as a terminal shows it: ``:func:`~a.b.f``` -> ``f``, ````x```` -> ``x``."""
    if not text:
        return text
    text = _ROLE.sub(lambda m: m.group(1).rsplit(".", 1)[-1] if m.group(0).count("~") else m.group(1), text)
    text = re.sub(r"(\S)::$", r"\1:", text, flags=re.M)  # a reST literal block's "::" ends with one colon
    return _LITERAL.sub(r"\1", text)


def show_default(action: argparse.Action, text: str) -> str:
    """``text`` plus " (default: X)" for an option that takes a value, unless the text already says it.

    The generated flags say it already (their default is SUPPRESS, see :func:`add_dataclass_args`); switches
    (``store_true``), repeatable lists that start empty and required options have nothing to show.
    """
    default = action.default
    if (not action.option_strings or action.required or action.nargs == 0 or "default" in text.lower()
            or default in (None, argparse.SUPPRESS) or default == [] or isinstance(default, bool)):
        return text
    return f"{text} (default: {default})" if text else f"default: {default}"


# ---------------------------------------------------------------------------------------------- errors
# Library messages give Python advice (``sliding_window=True``); printed by the command line, each becomes
# the flag that does the same. One (pattern, replacement) per kind of advice; tests/unit/test_cli.py checks each.
CLI_HINTS: list[tuple[str, str]] = [
    (r"\bpass sliding_window=True\b", "pass --sliding-window"),
    (r"\bsliding_window=True\b", "--sliding-window"),
    (r"\bor use unk='replace'", "or train with --tokenizer byte, which knows every character (in Python: "
                                 "CharTokenizer(..., unk='replace'))"),
    (r"\buse max_seq_len <= (\d+)", r"use --set max_seq_len=\1 (or less)"),
    (r"\blower num_beams, num_return_sequences, the batch size or max_new_tokens\b",
     "lower --num-beams, --batch-size or --max-new-tokens"),
    (r"\blower max_new_tokens\b", "lower --max-new-tokens"),
    (r"\ba larger val_fraction\b", "a larger --val-fraction"),
    (r"\bpass --resume \(resume=True\)", "pass --resume"),
]


def cli_hint(message: str) -> str:
    """``message`` with its Python-only advice rewritten as command-line flags (:data:`CLI_HINTS`)."""
    for pattern, replacement in CLI_HINTS:
        message = re.sub(pattern, replacement, message)
    return message


def interrupted_message(args: argparse.Namespace, error: BaseException) -> str:
    """What Ctrl-C left behind: the step reached, and how to continue (``--resume`` where the command has it)."""
    step = getattr(error, "step", None)  # a TrainingInterrupted from Trainer.fit; a bare KeyboardInterrupt has none
    if step is None:
        return "interrupted"
    how = "rerun with --resume to continue" if hasattr(args, "resume") else "rerun the same command to continue"
    checkpoint = getattr(error, "checkpoint_step", None)
    if checkpoint is None:
        return f"interrupted at step {step}, before the first checkpoint; rerun to start over"
    if checkpoint != step:
        how += f" (from the checkpoint of step {checkpoint})"
    return f"interrupted at step {step}; {how}"


def given(args: argparse.Namespace, cls: type, fields: list[str] | None = None,
          defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """The fields of ``cls`` (or only ``fields``) set on the command line, plus ``defaults`` for the others."""
    names = [f.name for f in dataclasses.fields(cls) if fields is None or f.name in fields]
    values = {k: v for k, v in (defaults or {}).items() if k in names}
    values.update({k: getattr(args, k) for k in names if hasattr(args, k)})
    return values


def parse_sets(items: list[str]) -> dict[str, Any]:
    """``["dropout=0.1", "warmup_steps=50"]`` -> ``{"dropout": 0.1, "warmup_steps": 50}`` (JSON values)."""
    pairs = (parse_assignment(item, "--set", "dropout=0.1") for item in items or [])
    return {key: parse_value(value) for key, value in pairs}


def add_set_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="override a ModelConfig or TrainConfig field, e.g. --set dropout=0.1 "
                             "--set warmup_steps=50 (repeatable)")


def read_stdin_text(what: str = "standard input") -> str:
    """All of stdin as UTF-8 text; bytes that are not UTF-8 are a :class:`DataError` naming the offset."""
    buffer = getattr(sys.stdin, "buffer", None)
    if buffer is None:  # a text stream without bytes underneath (a test's StringIO): already decoded
        return sys.stdin.read()
    return decode_utf8(buffer.read(), what)


def decode_utf8(data: bytes, what: str) -> str:
    """``data`` as UTF-8, or a :class:`DataError` naming ``what``, the byte and its offset."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{what} is not UTF-8 text: byte 0x{data[e.start]:02x} at offset {e.start} ({e.reason}); "
                        "pass UTF-8 text (e.g. convert it with iconv -t UTF-8).") from None


# ---------------------------------------------------------------------------------------------- plugins
PLUGIN_EPILOG = f"""\
plugins:
  --import FILE_OR_MODULE (repeatable) imports a .py file or a dotted module before the command runs, so
  an architecture it registers with llmcore.registry.ARCHITECTURES.register(name, cls) can be built
  (llmcore train --arch NAME) and loaded from its run directory by every command.
  Installed packages do the same through the entry-point group '{PLUGIN_GROUP}', e.g. in pyproject.toml:
      [project.entry-points."{PLUGIN_GROUP}"]
      myarch = "mypkg.models"
  Those load for every command that builds or loads a model."""


def add_import_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="FILE_OR_MODULE",
                        help="import this .py file or module first, e.g. to register an architecture (repeatable)")


def import_plugin(spec: str) -> types.ModuleType:
    """Import ``spec``: a path to a ``.py`` file, or a dotted module name on ``sys.path``."""
    path = Path(spec)
    if spec.endswith(".py") or path.is_file():
        if not path.is_file():
            raise ConfigError(f"--import {spec}: no such file; pass an existing .py file or a module name.")
        # One module name per file: two plugins both called models.py must not replace each other in sys.modules
        # (their classes would then look like one definition to the registry).
        digest = hashlib.sha1(str(path.resolve()).encode("utf-8")).hexdigest()[:8]
        name = f"llmcore_plugin_{path.stem}_{digest}"
        loader_spec = importlib.util.spec_from_file_location(name, path)
        if loader_spec is None or loader_spec.loader is None:
            raise ConfigError(f"--import {spec}: cannot be imported as a Python file.")
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[name] = module  # dataclasses and pickling look classes up through sys.modules
        try:
            loader_spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        return module
    try:
        return importlib.import_module(spec)
    except ModuleNotFoundError as e:
        raise ConfigError(f"--import {spec}: no module named {e.name!r}; pass a path to a .py file or a module "
                          "importable from the current environment.") from e


def load_plugins(specs: list[str], entry_points: bool = True) -> list[str]:
    """Load the ``llmcore.plugins`` entry points (if ``entry_points``), then each ``--import``; their names."""
    loaded = []
    if entry_points:
        from importlib.metadata import entry_points as eps

        for ep in eps(group=PLUGIN_GROUP):
            ep.load()
            loaded.append(ep.name)
    for spec in specs:
        import_plugin(spec)
        loaded.append(spec)
    return loaded


# ---------------------------------------------------------------------------------------------- models
def load_model_dir(directory: str | Path, device: Any = "cpu", merge: bool = False) -> Any:
    """Load the model saved in ``directory``, whatever its registered architecture (every command uses this).

    A LoRA adapter directory (``llmcore finetune --strategy lora``) loads as its base model with the adapter
    applied (:func:`llmcore.finetune.load_adapter_model`); ``merge`` folds it into plain linear layers.
    """
    from ..bundled import resolve_model_dir
    from ..finetune.lora import is_adapter_dir, load_adapter_model
    from ..models import load_model

    d = resolve_model_dir(directory)
    if is_adapter_dir(d) and not (d / "config.json").is_file():
        return load_adapter_model(d, device=device, merge=merge)
    if not (d / "config.json").is_file():
        raise CheckpointError(f"{d} is not a model directory (no config.json); pass the --out of a run, or a "
                              "LoRA adapter directory.")
    return load_model(d, device=device)


# = llmcore.modules.quantized.SCHEMES, spelled out so that building the parser does not import torch (tested)
QUANTIZE_SCHEMES = ("int8",)


def add_quantize_arg(parser: argparse.ArgumentParser) -> None:
    """``--quantize SCHEME`` (generate, translate, serve): int8 weights for faster CPU decoding."""
    parser.add_argument("--quantize", default=None, choices=QUANTIZE_SCHEMES,
                        help="quantize the model's linear layers on load (int8: per-channel weights, ~4x fewer "
                             "bytes per step; faster on CPU; see docs/guides/quantization.md)")


def maybe_quantize(model: Any, scheme: str | None) -> Any:
    """``model.quantize(scheme)`` unless ``scheme`` is None or the model was saved quantized that way."""
    if scheme is None or (getattr(model, "quantization", None) or {}).get("scheme") == scheme:
        return model
    if not hasattr(model, "quantize"):
        raise ConfigError(f"--quantize: a {type(model).__name__} cannot be quantized (it is not an llmcore "
                          "model with save_pretrained / quantize); drop --quantize.")
    return model.quantize(scheme)


def load_classifier(directory: str | Path, device: str = "cpu") -> tuple[Any, Any]:
    """(SequenceClassifier, tokenizer) from ``directory`` (a model or LoRA adapter directory); a model of another
    kind is a CheckpointError naming the fix."""
    from ..models.classifier import SequenceClassifier
    from ..tokenizer import load_tokenizer

    model = load_model_dir(directory, device=resolve_device(device))
    if not isinstance(model, SequenceClassifier):
        raise CheckpointError(f"{directory} holds a {type(model).__name__}, not a classifier; fine-tune one with "
                              "llmcore finetune --task classify.")
    return model, load_tokenizer(directory)


def resolve_device(name: str) -> Any:
    """``auto`` | ``cpu`` | ``cuda`` -> a torch.device (for commands outside a training run)."""
    from ..training.distributed import DistEnv
    from ..training.distributed import resolve_device as resolve

    return resolve(name, DistEnv())


def add_model_command(subparsers: Any, name: str, **kwargs: Any) -> argparse.ArgumentParser:
    """A sub-command that builds or loads a model: it takes ``--import`` and documents plugins in its epilog."""
    kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
    parser = subparsers.add_parser(name, epilog=PLUGIN_EPILOG, **kwargs)
    add_import_arg(parser)
    return parser


def make_config(cls: type, values: dict[str, Any]) -> Any:
    """``cls(**values)``; a validation error names the command-line flag instead of the Python field."""
    try:
        return cls(**values)
    except ConfigError as e:
        message = str(e)
        for name, value in values.items():
            message = message.replace(f"{cls.__name__}.{name}={value!r}", f"{flag_name(name)} {value}")
        if message == str(e):
            raise
        raise ConfigError(message) from e
