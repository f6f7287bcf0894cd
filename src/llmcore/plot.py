"""Plots of training runs and attention: loss / learning-rate curves and layer × head attention maps.

``plot_metrics(run_dir)`` reads ``metrics.jsonl`` (one JSON object per logged step or evaluation, written by
:class:`~llmcore.training.MetricsLogger`) and draws train and validation loss against the step, with the
learning rate below. ``plot_runs(run_dirs)`` overlays the validation curves of several runs (a sweep).
``plot_attention(model, tokenizer, text, out)`` runs the model's reference attention path
(``forward_hidden(..., attn_weights=[])``) and draws one heat map per (layer, head) with the tokens on
both axes. ::

    llmcore plot runs/char-small                      # -> runs/char-small/loss_curve.png
    llmcore plot sweeps/lr --out lr.png                # a sweep directory: one validation curve per run
    llmcore plot runs/char-small --attention "To be, or not to be" --layers 0,3

matplotlib is the optional ``plot`` extra, imported only when a plot is drawn. Figures are built with
``matplotlib.figure.Figure`` directly, never ``pyplot``, so plotting changes no global backend or state.
Chinese (and other CJK) tokens need a CJK font: the first installed one of :data:`CJK_FONTS` is used as a
fallback after DejaVu Sans; without one a warning says which package to install.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import ConfigError, DataError, LLMCoreError
from .io import read_jsonl

METRICS_FILE = "metrics.jsonl"
# Installed-font names tried in order for CJK text (Linux packages: fonts-noto-cjk, fonts-wqy-zenhei, ...).
CJK_FONTS = ("Noto Sans CJK SC", "Noto Sans CJK JP", "Noto Sans CJK TC", "Noto Sans SC", "Source Han Sans SC",
             "Source Han Sans CN", "WenQuanYi Zen Hei", "WenQuanYi Micro Hei", "Droid Sans Fallback",
             "Noto Serif CJK SC", "AR PL UMing CN", "SimHei", "Microsoft YaHei", "PingFang SC", "Heiti SC",
             "Arial Unicode MS")
_CJK_FILES = re.compile(r"(NotoSans.*CJK|NotoSerif.*CJK|wqy|DroidSansFallback|SourceHanSans)", re.I)
_CJK_CHARS = re.compile(r"[\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef]")
_warned_no_cjk = False


def _matplotlib() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise LLMCoreError("Plotting needs matplotlib, the optional `plot` extra: pip install 'llmcore[plot]'") \
            from None
    return matplotlib


def _figure(width: float, height: float) -> Any:
    _matplotlib()
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


# ---------------------------------------------------------------------------------------------- metrics
def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of ``run_dir/metrics.jsonl`` (or of that file itself); lines cut short are skipped."""
    path = Path(run_dir)
    path = path / METRICS_FILE if path.is_dir() else path
    if not path.is_file():
        raise DataError(f"No {METRICS_FILE} in {Path(run_dir)}; point at a run directory written by "
                        "`llmcore train --out DIR` (or a Trainer with out_dir set).")
    records = [r for r in read_jsonl(path) if "step" in r]
    if not any("train_loss" in r or "val_loss" in r for r in records):
        raise DataError(f"{path} has no train_loss or val_loss records yet; train for at least log_interval "
                        "steps, then plot.")
    return records


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    pts = sorted({r["step"]: r[key] for r in records if r.get(key) is not None}.items())
    return [s for s, _ in pts], [v for _, v in pts]


def plot_metrics(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Loss curves (train and validation vs step) above the learning rate; returns the PNG path.

    ``out`` defaults to ``run_dir/loss_curve.png``.
    """
    records = read_metrics(run_dir)
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else (run_dir if run_dir.is_dir() else run_dir.parent) / "loss_curve.png"
    fig = _figure(8, 6)
    loss_ax, lr_ax = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    steps, train = _series(records, "train_loss")
    vsteps, val = _series(records, "val_loss")
    if train:
        loss_ax.plot(steps, train, color="tab:blue", lw=1.2, alpha=0.8, label="train loss")
    if val:
        loss_ax.plot(vsteps, val, color="tab:orange", lw=2, marker="o", ms=4, label="validation loss")
        i = min(range(len(val)), key=val.__getitem__)
        loss_ax.plot(vsteps[i], val[i], marker="*", ms=16, color="tab:red", ls="none",
                     label=f"best validation {val[i]:.4f} (step {vsteps[i]})")
    loss_ax.set_ylabel("cross-entropy loss (nats/token)")
    loss_ax.grid(alpha=0.3)
    loss_ax.legend(loc="upper right")
    title = f"Training run: {run_dir.resolve().name if run_dir.is_dir() else run_dir.name}"
    if train and val:
        title += f"\nfinal train {train[-1]:.3f}, final validation {val[-1]:.3f}"
    loss_ax.set_title(title)
    lsteps, lr = _series(records, "lr")
    if lr:
        lr_ax.plot(lsteps, lr, color="tab:green", lw=1.5)
        lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    else:
        lr_ax.text(0.5, 0.5, "no learning rate logged", ha="center", va="center", transform=lr_ax.transAxes)
    lr_ax.set_ylabel("learning rate")
    lr_ax.set_xlabel("optimizer step")
    lr_ax.grid(alpha=0.3)
    return _save(fig, out, "loss_curve.png")


def plot_runs(run_dirs: Sequence[str | Path], out: str | Path, metric: str = "val_loss") -> Path:
    """Overlay one curve of ``metric`` per run (e.g. the runs of a sweep), best final value first in the legend."""
    curves = []
    for d in run_dirs:
        steps, values = _series(read_metrics(d), metric)
        if values:
            curves.append((min(values), Path(d).name, steps, values))
    if not curves:
        raise DataError(f"None of the {len(run_dirs)} runs logged {metric!r}; try metric='train_loss'.")
    fig = _figure(9, 5.5)
    ax = fig.subplots()
    for best, name, steps, values in sorted(curves):
        ax.plot(steps, values, marker="o" if len(values) < 30 else None, ms=3, lw=1.5, label=f"{name} ({best:.3f})")
    what = {"val_loss": "validation loss", "train_loss": "train loss"}.get(metric, metric.replace("_", " "))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(what + (" (nats/token)" if metric.endswith("loss") else ""))
    ax.set_title(f"{what} of {len(curves)} runs (best value in brackets)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    return _save(fig, out, "val_loss.png")


def _save(fig: Any, out: str | Path, name: str) -> Path:
    """Save ``fig`` and return the path of the file actually written: ``out/name`` when ``out`` is a directory,
    ``out.png`` when ``out`` has no extension (what matplotlib writes then)."""
    out = Path(out)
    if out.is_dir():
        out = out / name
    elif not out.suffix:
        out = out.with_name(out.name + ".png")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out


# ---------------------------------------------------------------------------------------------- attention
def cjk_font() -> str | None:
    """Name of an installed font with CJK glyphs, or None. Registers font files matplotlib has not seen yet."""
    _matplotlib()
    from matplotlib import font_manager

    names = {f.name for f in font_manager.fontManager.ttflist}
    found = next((n for n in CJK_FONTS if n in names), None)
    if found is None:  # installed after matplotlib built its font cache: register the files directly
        for path in font_manager.findSystemFonts():
            if _CJK_FILES.search(Path(path).name):
                try:
                    font_manager.fontManager.addfont(path)
                except (OSError, RuntimeError, ValueError):
                    continue
        names = {f.name for f in font_manager.fontManager.ttflist}
        found = next((n for n in CJK_FONTS if n in names), None)
    return found


def _font_family(texts: Sequence[str]) -> list[str]:
    """DejaVu Sans, with a CJK font as fallback when the texts need one (warns once if there is none)."""
    global _warned_no_cjk
    if not any(_CJK_CHARS.search(t) for t in texts):
        return ["DejaVu Sans"]
    font = cjk_font()
    if font is None and not _warned_no_cjk:
        _warned_no_cjk = True
        warnings.warn("No CJK font found, so Chinese characters will show as boxes; install one (e.g. "
                      "`apt-get install fonts-noto-cjk` or fonts-wqy-zenhei) and plot again.", stacklevel=3)
    return ["DejaVu Sans", font] if font else ["DejaVu Sans"]


def token_labels(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """The text each token adds (decoded prefix differences), with spaces / newlines made visible."""
    labels, prev = [], ""
    for i in range(len(ids)):
        text = tokenizer.decode(list(ids[: i + 1]))
        piece = text[len(prev):] if text.startswith(prev) else tokenizer.decode([ids[i]])
        prev = text
        if not piece or piece == "\ufffd":  # an incomplete UTF-8 byte piece: show the raw piece instead
            piece = tokenizer.id_to_token(ids[i]) if hasattr(tokenizer, "id_to_token") else f"<{ids[i]}>"
        labels.append(piece.replace(" ", "␣").replace("\n", "↵").replace("\t", "⇥"))
    return labels


def _indices(chosen: Sequence[int] | None, n: int, what: str) -> list[int]:
    if chosen is None:
        return list(range(n))
    chosen = [int(i) for i in chosen]
    bad = [i for i in chosen if not -n <= i < n]
    if bad or not chosen:
        raise ConfigError(f"{what} {bad or chosen} out of range: the model has {n} {what}s (0..{n - 1}).")
    return [i % n for i in chosen]


def attention_weights(model: Any, ids: Sequence[int]) -> list[Any]:
    """Per layer, the attention weights (H, T, T) of one sequence, from the model's reference path."""
    import torch

    from .modules import eval_mode

    if not callable(getattr(model, "forward_hidden", None)):
        raise ConfigError(f"{type(model).__name__} has no forward_hidden(..., attn_weights=[]); attention maps need "
                          "a decoder-only TransformerLM.")
    device = next(model.parameters()).device
    collected: list[torch.Tensor] = []  # each layer appends its (B, H, T, T) weights, in layer order
    with eval_mode(model), torch.no_grad():
        model.forward_hidden(torch.tensor([list(ids)], dtype=torch.long, device=device), attn_weights=collected)
    return [w[0].float().cpu() for w in collected]


def plot_attention(model: Any, tokenizer: Any, text: str, out: str | Path, layers: Sequence[int] | None = None,
                   heads: Sequence[int] | None = None) -> Path:
    """A layers × heads grid of causal attention maps for ``text``; returns the PNG path.

    Row i of a map is the distribution of query token i over the keys (all rows sum to 1); the upper triangle
    is empty because the model is causal. Tokens are the decoded pieces, ``␣`` for a space and ``↵`` for a
    newline. Long texts are cut to the model's ``max_seq_len`` (keep them short: a map of 40 tokens is legible).
    """
    kwargs = {"sample": False} if "sample" in _params(tokenizer.encode) else {}
    ids = list(tokenizer.encode(text, **kwargs))
    if not ids:
        raise DataError("plot_attention needs a non-empty text.")
    limit = getattr(getattr(model, "config", None), "max_seq_len", len(ids))
    if len(ids) > limit:
        warnings.warn(f"The text has {len(ids)} tokens; only the first {limit} (max_seq_len) are shown.",
                      stacklevel=2)
        ids = ids[:limit]
    weights = attention_weights(model, ids)
    layer_ids = _indices(layers, len(weights), "layer")
    head_ids = _indices(heads, weights[0].shape[0], "head")
    labels = token_labels(tokenizer, ids)
    family = _font_family([*labels, text])
    T, rows, cols = len(ids), len(layer_ids), len(head_ids)
    cell = min(max(2.6, 0.2 * T + 1.0), 8.0)  # inches per map: room for one label per token
    fig = _figure(cols * cell + 1.2, rows * cell + 1.2)
    axes = fig.subplots(rows, cols, squeeze=False)
    size = max(5.0, min(11.0, 0.8 * 72 * (cell - 1.0) / T))  # points: 4/5 of the spacing between ticks
    import numpy as np
    from matplotlib import colormaps

    cmap = colormaps["viridis"].with_extremes(bad="#eeeeee")  # masked future positions: light grey
    future = np.triu(np.ones((T, T), dtype=bool), k=1)
    wide = max(len(label) for label in labels) > 1  # multi-character pieces are written vertically
    image = None
    for r, li in enumerate(layer_ids):
        for c, hi in enumerate(head_ids):
            ax = axes[r][c]
            w = np.ma.masked_array(weights[li][hi].numpy(), future)  # (T, T): row = query, column = key
            image = ax.imshow(w, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_title(f"layer {li}, head {hi}", fontsize=size + 3)
            ax.set_xticks(range(T))
            ax.set_yticks(range(T))
            ax.set_xticklabels(labels if r == rows - 1 else [], rotation=90 if wide else 0, fontfamily=family,
                               fontsize=size)
            ax.set_yticklabels(labels if c == 0 else [], fontfamily=family, fontsize=size)
            ax.tick_params(length=0)
            if r == rows - 1:
                ax.set_xlabel("key (attended-to) token", fontsize=size + 2)
            if c == 0:
                ax.set_ylabel("query token", fontsize=size + 2)
    bar = fig.colorbar(image, ax=axes, shrink=0.5, fraction=0.02, pad=0.01)
    bar.set_label("attention weight", fontsize=size + 2)
    bar.ax.tick_params(labelsize=size)
    shown = text if len(text) <= 60 else text[:57] + "..."
    fig.suptitle(f"Attention maps of {type(model).__name__} ({T} tokens): {shown!r}",
                 fontfamily=family, fontsize=size + 6)
    return _save(fig, out, "attention.png")


def _params(fn: Any) -> Any:
    import inspect

    try:
        return inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return {}


__all__ = ["plot_metrics", "plot_runs", "plot_attention", "attention_weights", "read_metrics", "token_labels",
           "cjk_font"]
