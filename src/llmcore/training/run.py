"""A training run as a Python call: ``train(RunConfig(...))`` goes from text files to a run directory.

What ``llmcore train`` does, without argparse: build the tokenizer and prepare the data into ``OUT/data``
(reused when the same files, tokenizer and split were prepared before; a ``llmcore prepare`` output directory
given as the only ``data`` entry is used as is, its files linked into ``OUT/data``), build the model from a registered
architecture, a preset and overrides, train it with the :class:`~llmcore.training.Trainer` (checkpoints,
``metrics.jsonl``, samples) and return the Trainer's summary. ``llmcore sweep`` calls it once per grid point::

    from llmcore.training.run import RunConfig, train

    summary = train(RunConfig(preset="debug", train={"max_steps": 50}, out_dir="runs/tiny"))

Under ``torchrun`` every rank calls :func:`train`; rank 0 prepares the data while the others wait.
This module sits in the training layer: it uses tokenizer, models, data and training, never the commands.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import ModelConfig, check_field, is_int, is_number
from ..errors import CheckpointError, ConfigError
from ..io import read_json
from .config import TrainConfig

if TYPE_CHECKING:  # torch: the command-line parsers read RunConfig's defaults without it
    from . import distributed as dist

logger = logging.getLogger("llmcore.training")


@dataclass
class RunConfig:
    """Everything one training run depends on. ``model`` / ``train`` override ModelConfig / TrainConfig fields."""

    data: list[str] | None = None  # text files or directories, or one `llmcore prepare` output; None = Shakespeare
    tokenizer: str = "char"  # char | byte | sp | a saved tokenizer directory
    vocab_size: int | None = None  # for tokenizer "sp" (the data layer's default when None)
    val_fraction: float = 0.1  # last share of the text held out for validation
    dask: str | None = None  # prepare the data on Dask: "local:N" or a scheduler address (same output as without)
    preset: str = "char-small"  # ModelConfig preset the model starts from
    arch: str = "TransformerLM"  # name in llmcore.registry.ARCHITECTURES
    model: dict[str, Any] = field(default_factory=dict)  # ModelConfig overrides, e.g. {"dropout": 0.1}
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig overrides, e.g. {"max_steps": 600}
    out_dir: str | None = None  # run directory; None = runs/<preset>
    resume: bool = False  # continue the newest checkpoint in out_dir

    def __post_init__(self) -> None:
        if self.data is not None:
            self.data = [str(p) for p in ([self.data] if isinstance(self.data, (str, Path)) else self.data)]
        check_field(self, "val_fraction", lambda v: is_number(v) and 0.0 <= v < 1.0,
                    "in [0, 1); e.g. 0.1 holds out the last 10% for validation (0: no validation)")
        check_field(self, "vocab_size", lambda v: v is None or is_int(v, 1), "None or a positive integer")
        check_field(self, "resume", lambda v: isinstance(v, bool), "True or False")
        if self.dask is not None:
            from ..data.dask_prepare import check_spec

            check_spec(self.dask)
        split_overrides({**self.model, **self.train})  # unknown keys fail now, not after data preparation
        if (prepared := self.prepared_dir()) is not None and (self.tokenizer != "char" or self.vocab_size is not None):
            # The ids in its shards are those of the directory's own tokenizer; another one would mis-read them.
            raise ConfigError(f"--data {prepared} is a prepared directory with its own tokenizer; drop --tokenizer "
                              "and --vocab-size (or pass the text files to tokenize them anew).")

    def prepared_dir(self) -> Path | None:
        """The ``llmcore prepare`` output directory ``data`` names (its one entry), or None for text files."""
        if self.data is None or len(self.data) != 1:
            if self.data and any(is_prepared_dir(Path(p)) for p in self.data):
                raise ConfigError(f"--data {' '.join(self.data)}: a prepared directory must be the only --data entry "
                                  "(prepare all the text into one with llmcore prepare).")
            return None
        return Path(self.data[0]) if is_prepared_dir(Path(self.data[0])) else None

    @property
    def out(self) -> Path:
        return Path(self.out_dir or f"runs/{self.preset}")

    def train_config(self) -> TrainConfig:
        """The run's TrainConfig (``out_dir`` set to the run directory)."""
        return TrainConfig.from_dict({**self.train, "out_dir": str(self.out)})

    def model_config(self, vocab_size: int) -> Any:
        """The preset with the overrides applied, sized to the tokenizer's vocabulary."""
        cls = getattr(architecture(self.arch), "config_cls", ModelConfig)
        return cls.from_preset(self.preset, **{"vocab_size": vocab_size, **self.model})

    def check(self) -> None:
        """Build both configs without touching data, so a bad value fails before any work starts."""
        self.train_config()
        self.model_config(self.model.get("vocab_size", 256))


def split_overrides(overrides: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``{"dropout": 0.1, "warmup_steps": 50}`` -> (ModelConfig overrides, TrainConfig overrides)."""
    model_keys = {f.name for f in dataclasses.fields(ModelConfig)}
    train_keys = {f.name for f in dataclasses.fields(TrainConfig)}
    model, train = {}, {}
    for key, value in overrides.items():
        key = key.replace("-", "_")
        if key in model_keys:
            model[key] = value
        elif key in train_keys:
            train[key] = value
        else:
            raise ConfigError(f"Unknown --set key {key!r}; valid keys are ModelConfig fields "
                              f"({', '.join(sorted(model_keys))}) and TrainConfig fields "
                              f"({', '.join(sorted(train_keys))}).")
    return model, train


def architecture(name: str) -> type:
    """The model class registered as ``name`` (ConfigError listing the registered names if none is)."""
    from ..registry import ARCHITECTURES

    return ARCHITECTURES.get(name)


# ---------------------------------------------------------------------------------------------- data
def is_prepared_dir(path: Path) -> bool:
    """Whether ``path`` is a ``llmcore prepare`` output (meta.json, train tokens and tokenizer/)."""
    from ..data.layout import looks_prepared

    return looks_prepared(path)


def _fingerprint(config: RunConfig) -> dict[str, Any]:
    """What the prepared data depends on; a match means OUT/data can be reused as is."""
    from ..data import load_meta, resolve_paths

    if (prepared := config.prepared_dir()) is not None:  # the directory and the meta.json it holds now,
        return {"prepared": str(prepared.resolve()), "meta": load_meta(prepared)}  # checked before linking
    files = resolve_paths([Path(p) for p in config.data] if config.data else None)
    return {"files": [[str(f.resolve()), f.stat().st_size, int(f.stat().st_mtime)] for f in files],
            "tokenizer": str(config.tokenizer), "vocab_size": config.vocab_size,
            "val_fraction": config.val_fraction}


def resume_data_differences(wanted: dict[str, Any], data_dir: Path) -> list[str]:
    """What the command's data fingerprint ``wanted`` (:func:`_fingerprint`) says differently from what
    ``data_dir`` was prepared from (empty: the same).

    A resumed run continues on its own prepared data whatever the flags say (that is what "the same run"
    means); the differences are only reported. Without this rule ``--resume`` with the data flags left out
    re-prepared ``OUT/data`` from the defaults (the bundled Shakespeare) and replaced the run's data, and a
    reinstalled package (the bundled corpus with a new mtime) could not resume at all.
    """
    stamp = data_dir / "source.json"
    if not stamp.is_file():
        return []
    saved = read_json(stamp, "data fingerprint")

    def show(key: str, value: Any) -> str:  # files as their paths (size and mtime are in source.json)
        return ", ".join(f[0] for f in value) if key == "files" and isinstance(value, list) else repr(value)

    return [f"{k}: {show(k, saved.get(k))} in the run vs {show(k, wanted[k])} now" for k in wanted
            if saved.get(k) != wanted[k]]


def _prepared(data_dir: Path) -> bool:
    return (data_dir / "tokenizer").is_dir() and (data_dir / "meta.json").is_file()


def run_tokenizer(config: RunConfig, data_dir: Path) -> Any:
    """The tokenizer the run will train with, built in memory (nothing is written): the one in ``data_dir`` when
    its data are prepared and the run resumes, else a prepared ``--data`` directory's, else the one the flags ask
    for. A resume compares its fingerprint with the checkpoint's before any data is (re)prepared."""
    from ..data import build_tokenizer
    from ..tokenizer import load_tokenizer

    if config.resume and _prepared(data_dir):
        return load_tokenizer(data_dir / "tokenizer")
    if (prepared := config.prepared_dir()) is not None:
        return load_tokenizer(prepared / "tokenizer")
    paths = [Path(p) for p in config.data] if config.data else None
    return build_tokenizer(config.tokenizer, paths, config.vocab_size)


def prepare_run_data(config: RunConfig, data_dir: Path, env: dist.DistEnv, wanted: dict[str, Any],
                     tokenizer: Any = None) -> Any:
    """Tokenizer + the token shards in ``data_dir``; rank 0 builds them (unless already there), the others wait.

    ``wanted`` is the command's data fingerprint (:func:`_fingerprint`), stamped as ``source.json``;
    ``tokenizer`` one already built from the same flags (:func:`run_tokenizer`), used instead of building it
    again when the data must be prepared."""
    from ..data import build_tokenizer, prepare
    from ..rundir import write_text
    from ..tokenizer import load_tokenizer

    stamp = data_dir / "source.json"
    if env.is_main:
        if config.resume and _prepared(data_dir):
            fresh = False  # a resumed run continues on its own data (see resume_data_differences)
        else:
            fresh = not (stamp.is_file() and read_json(stamp, "data fingerprint (delete it to re-prepare)") == wanted
                         and _prepared(data_dir))
        if fresh and (prepared := config.prepared_dir()) is not None:
            if prepared.resolve() != data_dir.resolve():
                _link_prepared(prepared, data_dir)
            write_text(stamp, json.dumps(wanted, indent=2) + "\n")
        elif fresh:
            paths = [Path(p) for p in config.data] if config.data else None
            if tokenizer is None:
                tokenizer = build_tokenizer(config.tokenizer, paths, config.vocab_size)
            tokenizer.save(data_dir / "tokenizer")
            prepare(paths, tokenizer, data_dir, val_fraction=config.val_fraction, dask=config.dask)
            write_text(stamp, json.dumps(wanted, indent=2) + "\n")
    from . import distributed as dist

    dist.barrier(env)
    return load_tokenizer(data_dir / "tokenizer")


def _link_prepared(src: Path, data_dir: Path) -> None:
    """Put ``src``'s prepared files and tokenizer into ``data_dir`` (hard links where the filesystem allows, so a
    large corpus is not copied), replacing what was there; the run directory then stands on its own."""
    import os
    import shutil

    from ..data.layout import META_FILE, remove_token_files, token_file_names

    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / META_FILE).unlink(missing_ok=True)
    remove_token_files(data_dir)
    for name in [META_FILE, *token_file_names(src)]:
        if (src / name).is_file():
            try:
                os.link(src / name, data_dir / name)
            except OSError:  # another filesystem, or links not supported
                shutil.copy2(src / name, data_dir / name)
    shutil.rmtree(data_dir / "tokenizer", ignore_errors=True)
    shutil.copytree(src / "tokenizer", data_dir / "tokenizer")


def val_split(data_dir: Path, block_size: int) -> Any:
    """The prepared validation split, or None when it is too short for one window."""
    from ..data import TokenDataset, load_meta

    if load_meta(data_dir).get("n_val_tokens", 0) <= block_size:
        return None  # no (or too little) held-out text: train without evaluation
    return TokenDataset(data_dir, block_size, split="val")


# ---------------------------------------------------------------------------------------------- the run
def train(config: RunConfig) -> dict[str, Any]:
    """Prepare the data, build the model, train; returns the Trainer's summary (plus ``out_dir``).

    Raises:
        CheckpointError: ``resume`` without a checkpoint in the run directory, or a checkpoint of another run.
        ConfigError: an unknown override, preset or architecture.
    """
    import torch

    from ..data import TokenDataset
    from .trainer import Trainer

    config.check()  # every preset / --set / TrainConfig value is valid before the first byte is written
    out = config.out
    from . import checkpoint as ckpt
    from . import distributed as dist

    if not config.resume and dist.restart_count() > 0 and ckpt.latest_checkpoint(out) is not None:
        # torchrun --max-restarts re-ran this command after a rank failed: continue the newest complete checkpoint
        logger.warning("torchrun restart %d: resuming %s from %s", dist.restart_count(), out,
                       ckpt.latest_checkpoint(out).name)
        config = dataclasses.replace(config, resume=True)
    train_cfg = config.train_config()
    if config.resume and not (out / "trainer_state").is_dir():
        raise CheckpointError(f"No checkpoint to resume in {out / 'trainer_state'}; run without --resume to "
                              "start a fresh run, or point --out at the run directory.")
    planned = None
    if config.resume:  # a damaged or foreign checkpoint, or another tokenizer, is refused before the data is
        path = ckpt.find_resume_checkpoint(out)  # (re)prepared: OUT/data may be gone, and preparing it anew
        meta = ckpt.read_checkpoint(path)  # from the flags would overwrite it before the Trainer's own check
        if dist.detect().is_main:  # rank 0 prepares the data (the others load it after the barrier)
            planned = run_tokenizer(config, out / "data")
            ckpt.check_tokenizer(path, meta, ckpt.tokenizer_fingerprint(planned))
    # the data exist and a prepared directory's meta.json is valid, before a byte is written
    wanted = _fingerprint(config)
    if config.resume and (differ := resume_data_differences(wanted, out / "data")):
        logger.warning("Resuming on the run's own prepared data in %s; this command's data flags differ from it "
                    "(%s) and are ignored.", out / "data", "; ".join(differ))
    from ..rundir import claim_dir, lock_dir, unlock_dir

    cls = architecture(config.arch)
    env = dist.detect()
    if env.is_main:  # only rank 0 writes: it owns and locks the run directory before writing a byte
        claim_dir(out, "llmcore train")
        lock_dir(out)
    try:
        env, created = dist.setup(dist.resolve_device(train_cfg.device, env), env)
    except BaseException:
        if env.is_main:
            unlock_dir(out)
        raise
    try:
        tokenizer = prepare_run_data(config, out / "data", env, wanted, planned)
        model_cfg = config.model_config(tokenizer.vocab_size)
        torch.manual_seed(train_cfg.seed)  # the same initial weights on every rank and every run
        model = cls(model_cfg)
        block = model_cfg.max_seq_len
        train_data = TokenDataset(out / "data", block, split="train")
        summary = Trainer(model, train_cfg, train_data, val_split(out / "data", block),
                          tokenizer=tokenizer).fit(resume=config.resume)
    finally:
        dist.cleanup(created)
        if env.is_main:
            unlock_dir(out)
    return {**summary, "out_dir": str(out), "is_main": env.is_main}


def format_summary(summary: dict[str, Any]) -> str:
    """One line for people: steps, throughput, validation losses, early stop, where the model is."""
    best = summary.get("best_val_loss")
    line = (f"trained {summary['steps']} steps ({summary.get('tokens_seen') or 0:,} tokens, "
            f"{summary.get('tokens_per_s') or 0:,.0f} tokens/s)")
    if best is not None:
        line += (f"; val loss {summary['final_val_loss']:.4f}, best {best:.4f} at step {summary['best_step']}")
    if summary.get("stopped_early"):
        line += " (early stop)"
    return line + f"; model in {summary.get('out_dir')}"


__all__ = ["RunConfig", "train", "split_overrides", "architecture", "format_summary"]
