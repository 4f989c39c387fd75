"""PNG figures for runs and evaluations: learning curves, Dice box plots and contour overlays.

Figures are built on :class:`matplotlib.figure.Figure` with the Agg canvas rather than through
``pyplot``: no global figure state, no GUI backend, safe in worker threads and on headless
servers. Every PNG is written atomically.
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from delineo.errors import InputError
from delineo.io.atomic import atomic_path

log = logging.getLogger(__name__)

_COLOURS = ("tab:red", "tab:blue", "tab:green", "tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")


def plot_learning_curves(log_csv: str | Path, out_png: str | Path) -> Path:
    """Loss, Dice and learning-rate curves from a training ``log.csv`` (one row per epoch).

    Every column whose name contains ``loss`` goes to the first panel, ``dice`` to the second,
    ``lr`` to the third (log scale when positive). Empty cells (epochs without validation) are
    skipped per series, and series with few points get markers so sparse validation stays visible.
    """
    log_csv = Path(log_csv)
    columns = _read_log(log_csv)
    n = len(next(iter(columns.values())))
    epochs = columns.pop("epoch", np.arange(1, n + 1, dtype=float))
    panels = [
        ("loss", [c for c in columns if "loss" in c.lower()]),
        ("Dice", [c for c in columns if "dice" in c.lower()]),
        ("learning rate", [c for c in columns if c.lower() in ("lr", "learning_rate")]),
    ]
    fig = Figure(figsize=(7, 8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(3, 1, sharex=True)
    for ax, (ylabel, names) in zip(axes, panels):
        plotted = False
        for name in names:
            y = columns[name]
            ok = np.isfinite(y) & np.isfinite(epochs)
            if not ok.any():
                continue
            marker = "o" if ok.sum() <= 50 else None
            ax.plot(epochs[ok], y[ok], marker=marker, markersize=3, label=name)
            plotted = True
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        if not plotted:
            ax.text(0.5, 0.5, f"no {ylabel} logged", ha="center", va="center", transform=ax.transAxes)
            continue
        if ylabel == "learning rate" and all(np.nanmin(columns[c]) > 0 for c in names if np.isfinite(columns[c]).any()):
            ax.set_yscale("log")
        if ylabel == "Dice":
            ax.set_ylim(0, 1.02)
        ax.legend(loc="best", fontsize="small")
    axes[-1].set_xlabel("epoch")
    return _save(fig, out_png)


def plot_dice_box(rows: Sequence[dict[str, Any]], out_png: str | Path) -> Path:
    """Box plot of per-case Dice, one box per label, with every case drawn as a dot.

    Undefined Dice values (None) are left out; the count shown under each label is the number of
    cases actually plotted.
    """
    per_label: dict[str, list[float]] = {}
    for row in rows:
        values = per_label.setdefault(str(row["label"]), [])
        dice = row.get("dice")
        if dice is not None and math.isfinite(dice):
            values.append(float(dice))
    fig = Figure(figsize=(max(4.0, 1.2 * len(per_label) + 2), 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    names = [name for name, values in per_label.items() if values]
    if names:
        data = [per_label[name] for name in names]
        ax.boxplot(data, showfliers=False)
        rng = np.random.default_rng(0)  # fixed jitter: identical reruns give identical PNGs
        for i, values in enumerate(data, start=1):
            ax.scatter(i + rng.uniform(-0.12, 0.12, len(values)), values, s=10, alpha=0.6, color="k", zorder=3)
        ax.set_xticks(range(1, len(names) + 1), [f"{n}\n(n={len(per_label[n])})" for n in names])
    else:
        ax.text(0.5, 0.5, "no Dice values", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("Dice")
    ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, out_png)


def plot_overlay(
    image: np.ndarray,
    ref: np.ndarray,
    pred: np.ndarray,
    out_png: str | Path,
    title: str,
    labels: dict[int, str] | None = None,
    spacing: Sequence[float] | None = None,
) -> Path:
    """One slice of ``image`` in grey with reference (solid) and predicted (dashed) contours.

    The slice along the last axis is the one with the largest reference area (else prediction
    area, else the middle slice), i.e. where a reader can best judge the contours. Each label
    value gets its own colour; ``labels`` names them in the legend. ``spacing`` (mm), when given,
    sets the pixel aspect ratio. A 2D input is shown as is.
    """
    image, ref, pred = (np.asarray(a) for a in (image, ref, pred))
    if image.ndim == 2:
        image, ref, pred = image[..., None], ref[..., None], pred[..., None]
    if not (image.shape == ref.shape == pred.shape) or image.ndim != 3:
        raise ValueError(f"image {image.shape}, reference {ref.shape} and prediction {pred.shape} must be equal 3D shapes")
    k = _pick_slice(ref, pred)
    values = sorted((set(np.unique(ref[..., k]).tolist()) | set(np.unique(pred[..., k]).tolist())) - {0})
    if labels is None:
        labels = {}

    fig = Figure(figsize=(6, 6), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    # Arrays are indexed [i, j, k]: transpose so i runs left-right and j bottom-top.
    sl = image[..., k].astype(np.float64).T
    finite = sl[np.isfinite(sl)]
    vmin, vmax = (np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0))
    if vmax <= vmin:
        vmax = vmin + 1.0
    aspect = float(spacing[1]) / float(spacing[0]) if spacing is not None else 1.0
    ax.imshow(sl, cmap="gray", vmin=vmin, vmax=vmax, origin="lower", aspect=aspect, interpolation="nearest")
    handles = []
    for n, value in enumerate(values):
        colour = _COLOURS[n % len(_COLOURS)]
        name = labels.get(int(value), f"label {value}")
        for mask, style, kind in ((ref, "solid", "reference"), (pred, "dashed", "prediction")):
            m = (mask[..., k] == value).T.astype(np.float32)
            if m.any():
                ax.contour(m, levels=[0.5], colors=[colour], linestyles=style, linewidths=1.5)
            handles.append(Line2D([], [], color=colour, linestyle=style, label=f"{name} {kind}"))
    if handles:
        ax.legend(handles=handles, loc="upper right", fontsize="small", framealpha=0.7)
    ax.set_title(f"{title} (slice {k})")
    ax.set_axis_off()
    return _save(fig, out_png)


def _pick_slice(ref: np.ndarray, pred: np.ndarray) -> int:
    for mask in (ref, pred):
        area = (mask > 0).sum(axis=(0, 1))
        if area.any():
            return int(np.argmax(area))
    return ref.shape[-1] // 2


def _read_log(path: Path) -> dict[str, np.ndarray]:
    """Numeric columns of a log CSV; empty or non-numeric cells become NaN."""
    if not path.is_file():
        raise InputError(f"{path}: file not found.")
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
        names = list(reader.fieldnames or ())
    if not rows or not names:
        raise InputError(f"{path}: no epochs logged.")
    return {name: np.array([_float(row.get(name)) for row in rows]) for name in names}


def _float(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "") else math.nan
    except ValueError:
        return math.nan


def _save(fig: Figure, out_png: str | Path) -> Path:
    out_png = Path(out_png)
    with atomic_path(out_png, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    log.debug("wrote %s", out_png)
    return out_png


def plot_detection_by_size(lesion_summary: dict[str, dict[str, dict[str, Any]]], out_png: str | Path) -> Path:
    """Lesion detection rate (recall) per size bracket, one bar group per label, with the number
    of reference lesions in each bracket written on its bar (a rate over 2 lesions is not a rate
    over 200)."""
    labels = list(lesion_summary)
    brackets = [b for b in (next(iter(lesion_summary.values()), {}) or {}) if b != "all"]
    fig = Figure(figsize=(max(5.0, 1.4 * len(brackets) + 2), 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    width = 0.8 / max(1, len(labels))
    x = np.arange(len(brackets))
    for n, label in enumerate(labels):
        rates = [lesion_summary[label][b]["recall"] for b in brackets]
        counts = [lesion_summary[label][b]["n_ref"] for b in brackets]
        heights = [r if r is not None else 0.0 for r in rates]
        bars = ax.bar(x + n * width, heights, width, label=label, color=_COLOURS[n % len(_COLOURS)])
        for bar, rate, count in zip(bars, rates, counts):
            ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + 0.02,
                    f"n={count}" if rate is not None else "none", ha="center", fontsize="x-small")
    ax.set_xticks(x + width * (len(labels) - 1) / 2, brackets, fontsize="small")
    ax.set_ylim(0, 1.12)
    ax.set_ylabel("lesion detection rate (recall)")
    ax.set_xlabel("reference lesion size")
    ax.grid(True, axis="y", alpha=0.3)
    if labels:
        ax.legend(fontsize="small")
    return _save(fig, out_png)


def _volumes(rows: Sequence[dict[str, Any]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    per: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        vp, vr = row.get("volume_pred_ml"), row.get("volume_ref_ml")
        if vp is not None and vr is not None:
            per.setdefault(str(row["label"]), []).append((float(vr), float(vp)))
    return {k: (np.array([a for a, _ in v]), np.array([b for _, b in v])) for k, v in per.items()}


def plot_bland_altman(rows: Sequence[dict[str, Any]], out_png: str | Path) -> Path:
    """Bland-Altman plot of case volumes: difference (predicted - reference, ml) against their
    mean, with the mean difference (bias) and the 95 % limits of agreement (bias +/- 1.96 SD)."""
    fig = Figure(figsize=(6, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for n, (label, (vr, vp)) in enumerate(_volumes(rows).items()):
        colour = _COLOURS[n % len(_COLOURS)]
        mean, diff = (vr + vp) / 2, vp - vr
        ax.scatter(mean, diff, s=14, color=colour, label=label)
        bias = float(diff.mean())
        ax.axhline(bias, color=colour, linestyle="-", linewidth=1)
        if diff.size > 1:
            sd = float(diff.std(ddof=1))
            for lim in (bias - 1.96 * sd, bias + 1.96 * sd):
                ax.axhline(lim, color=colour, linestyle="--", linewidth=0.8)
    ax.axhline(0, color="k", linewidth=0.5)
    ax.set_xlabel("mean of predicted and reference volume (ml)")
    ax.set_ylabel("predicted - reference volume (ml)")
    ax.set_title("Bland-Altman: bias (solid), 95 % limits of agreement (dashed)", fontsize="small")
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    return _save(fig, out_png)


def plot_volume_scatter(rows: Sequence[dict[str, Any]], out_png: str | Path) -> Path:
    """Predicted against reference volume per case (ml), with the identity line."""
    fig = Figure(figsize=(5, 5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    top = 0.0
    for n, (label, (vr, vp)) in enumerate(_volumes(rows).items()):
        ax.scatter(vr, vp, s=14, color=_COLOURS[n % len(_COLOURS)], label=label)
        top = max(top, float(vr.max(initial=0)), float(vp.max(initial=0)))
    top = top * 1.05 or 1.0
    ax.plot([0, top], [0, top], color="k", linewidth=0.8, linestyle=":")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_xlabel("reference volume (ml)")
    ax.set_ylabel("predicted volume (ml)")
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    return _save(fig, out_png)


def plot_entropy_profile(entropy: Sequence[float], threshold: float, foreground: Sequence[bool],
                         out_png: str | Path, title: str) -> Path:
    """Slice entropy (bits) against slice index, the filter threshold, and foreground slices marked."""
    entropy = np.asarray(entropy, dtype=np.float64)
    fg = np.asarray(foreground, dtype=bool)
    idx = np.arange(entropy.size)
    fig = Figure(figsize=(7, 3.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.plot(idx, entropy, color="tab:blue", marker=".", label="slice entropy")
    ax.axhline(threshold, color="tab:red", linestyle="--", label=f"threshold {threshold:g} bits")
    if fg.any():
        ax.scatter(idx[fg], entropy[fg], s=40, facecolors="none", edgecolors="tab:green", label="foreground slice",
                   zorder=3)
    kept = int((entropy > threshold).sum())
    ax.set_title(f"{title}: {kept}/{entropy.size} slices above threshold, {int(fg.sum())} with foreground",
                 fontsize="small")
    ax.set_xlabel("slice index")
    ax.set_ylabel("entropy (bits)")
    ax.set_ylim(0, max(8.2, float(entropy.max(initial=0)) + 0.2))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc="lower right")
    return _save(fig, out_png)
