"""Learning-curve figures of the experiment database: runs overlaid, and mean +- std across
the sessions (folds) of one experiment. One panel per metric, written atomically as PNG."""

from __future__ import annotations

import math
from pathlib import Path

from delineo.track.query import Curves


def _figure(n: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.4 * rows), squeeze=False)
    from matplotlib.ticker import MaxNLocator

    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax in axes.flat[:n]:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs
    return plt, fig, list(axes.flat[:n])


def _save(plt, fig, out: Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp.png")
    fig.tight_layout()
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(out)
    return out


def plot_overlaid(runs: dict[str, Curves], metrics: list[str], out: Path) -> Path:
    """One line per run (label -> curves) in each metric's panel."""
    plt, fig, axes = _figure(len(metrics))
    for ax, metric in zip(axes, metrics):
        for label, curves in runs.items():
            c = curves.get(metric)
            if c:
                epochs = sorted(c)
                ax.plot(epochs, [c[e] for e in epochs], marker="." if len(epochs) < 30 else None, label=label)
        ax.set_title(metric)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    if axes:
        axes[0].legend(fontsize=7)
    return _save(plt, fig, out)


def plot_stats(stats: dict[str, dict[int, tuple[float, float, int]]], metrics: list[str], title: str, out: Path) -> Path:
    """Mean with a +-1 standard deviation band per metric."""
    plt, fig, axes = _figure(len(metrics))
    for ax, metric in zip(axes, metrics):
        per = stats.get(metric, {})
        epochs = sorted(per)
        mean = [per[e][0] for e in epochs]
        std = [per[e][1] for e in epochs]
        ax.plot(epochs, mean, color="C0")
        ax.fill_between(epochs, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                        color="C0", alpha=0.25)
        ax.set_title(f"{title}: {metric}")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    return _save(plt, fig, out)
