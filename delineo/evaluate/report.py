"""A single self-contained HTML report of a run: summary, curves, Dice spread and example cases.

The PNGs are written under ``run_dir/plots/`` (handy for slides) *and* embedded in the HTML as
base64, so ``report.html`` can be mailed or archived on its own. Every piece of text that comes
from data (case names, label names, the title) is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import logging
import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, Union

import numpy as np

from delineo.evaluate.metrics import METRICS
from delineo.evaluate.plots import plot_dice_box, plot_learning_curves, plot_overlay
from delineo.io.atomic import write_text_atomic

log = logging.getLogger(__name__)

CaseArrays = tuple[np.ndarray, np.ndarray, np.ndarray]
#: Either the arrays ``(image, ref, pred)`` of some cases, or a function loading them for a case
#: name (so that only the few cases shown are ever read).
ImageSource = Union[Mapping[str, CaseArrays], Callable[[str], CaseArrays]]

_SUMMARY_STATS = ("mean", "median", "std", "n", "n_undefined")

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f0f0f0; } td.t { text-align: left; }
figure { display: inline-block; margin: 0.5em; } img { max-width: 100%; }
figcaption { text-align: center; font-size: 0.9em; }
"""


def write_report(
    run_dir: str | Path,
    rows: Sequence[dict[str, Any]],
    summary: dict[str, Any],
    images: ImageSource,
    title: str,
    labels: dict[int, str] | None = None,
) -> Path:
    """Write ``run_dir/report.html`` and its figures under ``run_dir/plots/``; return the HTML path.

    Sections: summary statistics per label and metric (from :func:`~delineo.evaluate.table.summarise`),
    learning curves when ``run_dir/log.csv`` exists, the per-case Dice box plot, overlays of the
    best, median and worst cases by mean Dice over labels, and the full per-case table. ``labels``
    (value -> name) only names the contours of the overlays.
    """
    run_dir = Path(run_dir)
    plots = run_dir / "plots"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
    ]
    mean_dice = summary.get("mean_dice")
    parts.append(
        f"<p>{int(summary.get('n_cases', 0))} case(s); mean Dice over labels: <b>{_fmt(mean_dice)}</b>. "
        "Undefined values (e.g. a distance to an empty mask) are excluded from statistics and counted "
        "in <i>n_undefined</i>.</p>"
    )
    parts += ["<h2>Summary</h2>", _summary_table(summary)]

    log_csv = run_dir / "log.csv"
    if log_csv.is_file():
        png = plot_learning_curves(log_csv, plots / "learning_curves.png")
        parts += ["<h2>Learning curves</h2>", _figure(png, "Learning curves")]

    parts.append("<h2>Dice per case</h2>")
    parts.append(_figure(plot_dice_box(rows, plots / "dice_box.png"), "Per-case Dice by label"))

    examples = _example_cases(rows)
    if examples:
        parts.append("<h2>Example cases</h2>")
        parts.append("<p>Reference contours solid, predicted contours dashed.</p>")
    for kind, case, dice in examples:
        try:
            arrays = images[case] if isinstance(images, Mapping) else images(case)
        except KeyError:
            log.warning("no image for %s case %s: overlay skipped", kind, case)
            continue
        image, ref, pred = arrays
        png = plot_overlay(
            image, ref, pred, plots / f"overlay_{kind}.png", f"{kind}: {case} (Dice {_fmt(dice)})", labels=labels
        )
        parts.append(_figure(png, f"{kind} case: {case}, mean Dice {_fmt(dice)}"))

    parts += ["<h2>Per-case metrics</h2>", _cases_table(rows), "</body></html>"]
    out = run_dir / "report.html"
    write_text_atomic(out, "\n".join(parts) + "\n")
    log.info("wrote %s", out)
    return out


def _example_cases(rows: Sequence[dict[str, Any]]) -> list[tuple[str, str, float]]:
    """(kind, case, mean Dice) for the best, median and worst cases, without repeating a case."""
    per_case: dict[str, list[float]] = {}
    for row in rows:
        dice = row.get("dice")
        if dice is not None and math.isfinite(dice):
            per_case.setdefault(str(row["case"]), []).append(float(dice))
    ranked = sorted(((float(np.mean(v)), c) for c, v in per_case.items()), key=lambda t: (-t[0], t[1]))
    if not ranked:
        return []
    picks = [("best", ranked[0]), ("median", ranked[len(ranked) // 2]), ("worst", ranked[-1])]
    out, used = [], set()
    for kind, (dice, case) in picks:
        if case not in used:
            used.add(case)
            out.append((kind, case, dice))
    return out


def _summary_table(summary: dict[str, Any]) -> str:
    head = "".join(f"<th>{s}</th>" for s in _SUMMARY_STATS)
    lines = [f"<table><tr><th>label</th><th>metric</th>{head}</tr>"]
    for label, metrics in summary.get("labels", {}).items():
        for metric in METRICS:
            stats = metrics.get(metric)
            if stats is None:
                continue
            cells = "".join(f"<td>{_fmt(stats.get(s))}</td>" for s in _SUMMARY_STATS)
            lines.append(f'<tr><td class="t">{_e(label)}</td><td class="t">{_e(metric)}</td>{cells}</tr>')
    lines.append("</table>")
    return "\n".join(lines)


def _cases_table(rows: Sequence[dict[str, Any]]) -> str:
    head = "".join(f"<th>{_e(m)}</th>" for m in METRICS)
    lines = [f"<table><tr><th>case</th><th>label</th>{head}</tr>"]
    for row in rows:
        cells = "".join(f"<td>{_fmt(row.get(m))}</td>" for m in METRICS)
        lines.append(f'<tr><td class="t">{_e(row["case"])}</td><td class="t">{_e(row["label"])}</td>{cells}</tr>')
    lines.append("</table>")
    return "\n".join(lines)


def _figure(png: Path, caption: str) -> str:
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{_e(caption)}">'
        f"<figcaption>{_e(caption)}</figcaption></figure>"
    )


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return "n/a" if not math.isfinite(value) else f"{float(value):.4g}"
    return _e(value)


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)
