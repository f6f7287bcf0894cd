"""``llmcore plot``: loss / learning-rate curves of a run, validation curves of a sweep, or attention maps.

The drawing is :mod:`llmcore.plot`; this module only reads the command line.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError, DataError
from ..plot import METRICS_FILE
from .common import add_model_command


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_model_command(subparsers, "plot", help="loss / learning-rate curves of a run, a sweep, or attention maps",
                          description="Plot metrics.jsonl of a run directory (loss and learning rate), the "
                                      "validation curves of several runs or a sweep directory, or with "
                                      "--attention TEXT the attention maps of the run's model.")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directory (or several, or a sweep directory)")
    p.add_argument("--out", metavar="FILE.png", help="output image (default: RUN_DIR/loss_curve.png)")
    p.add_argument("--attention", metavar="TEXT", help="draw attention maps of the run's model for TEXT instead")
    p.add_argument("--layers", metavar="I,J", help="layers to show with --attention (default: all)")
    p.add_argument("--heads", metavar="I,J", help="heads to show with --attention (default: all)")
    p.set_defaults(func=run_plot)


def _int_list(text: str | None, what: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ConfigError(f"--{what} {text!r} must be comma-separated integers, e.g. --{what} 0,2.") from None


def _sweep_runs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and (p / METRICS_FILE).is_file())


def run_plot(args: argparse.Namespace) -> int:
    from ..plot import plot_metrics, plot_runs

    dirs = [Path(d) for d in args.run_dirs]
    missing = [str(d) for d in dirs if not d.exists()]
    if missing:
        raise DataError(f"{', '.join(missing)} does not exist; pass a run directory (the --out of llmcore train).")
    if args.attention is not None:
        from ..plot import plot_attention
        from ..tokenizer import load_tokenizer
        from .common import load_model_dir

        if len(dirs) != 1:
            raise ConfigError("--attention draws one model: pass exactly one RUN_DIR.")
        model, tokenizer = load_model_dir(dirs[0]), load_tokenizer(dirs[0])
        out = plot_attention(model, tokenizer, args.attention, args.out or dirs[0] / "attention.png",
                             _int_list(args.layers, "layers"), _int_list(args.heads, "heads"))
    elif len(dirs) == 1 and not (dirs[0] / METRICS_FILE).is_file() and dirs[0].is_dir() and _sweep_runs(dirs[0]):
        out = plot_runs(_sweep_runs(dirs[0]), args.out or dirs[0] / "val_loss.png")
    elif len(dirs) == 1:
        out = plot_metrics(dirs[0], args.out)
    else:
        out = plot_runs(dirs, args.out or "val_loss.png")
    print(f"wrote {out}")
    return 0
