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

from delineo.evaluate.plots import (
    plot_bland_altman,
    plot_detection_by_size,
    plot_dice_box,
    plot_learning_curves,
    plot_overlay,
    plot_volume_scatter,
)
from delineo.evaluate.table import metric_columns
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
    lesion_rows: Sequence[dict[str, Any]] | None = None,
) -> Path:
    """Write ``run_dir/report.html`` and its figures under ``run_dir/plots/``; return the HTML path.

    Sections: summary statistics per label and metric (from :func:`~delineo.evaluate.table.summarise`),
    learning curves when ``run_dir/log.csv`` exists, the per-case Dice box plot, overlays of the
    best, median and worst cases by mean Dice over labels, and the full per-case table. ``labels``
    (value -> name) only names the contours of the overlays. When the summary holds them
    (:func:`~delineo.evaluate.table.summarise_full`): the HD95 definition, one table per named
    aggregation, lesion metrics by size with the detection-rate plot, volume agreement plots;
    and the training-slice filter counts when ``run_dir/slice_filter.json`` exists.
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
    hd = summary.get("hd95_definition")
    if hd:
        parts.append(f"<p>HD95 definition: <b>{_e(hd['name'])}</b> ({_e(hd['description'])}); "
                     "<i>hd95_pooled</i> and <i>hd95_max_directed</i> give both.</p>")
    parts += ["<h2>Summary (mean per case)</h2>", _summary_table(summary)]
    for name, agg in (summary.get("aggregations") or {}).items():
        parts += [f"<h3>Aggregation: {_e(name)}</h3>", f"<p>{_e(agg['description'])}</p>", _aggregation_table(agg)]
    lesions = summary.get("lesions")
    if lesions:
        rules = lesions.get("rules", {})
        parts += ["<h2>Lesions</h2>", "<p>Lesions are connected components "
                  f"(connectivity {_e(rules.get('connectivity') or 'full')}, minimum size {_e(rules.get('min_size', 0))} "
                  f"voxels); a reference lesion is detected when {_lesion_rule(rules)}; a predicted lesion touching "
                  "no reference voxel is a false positive. Recall counts reference lesions, precision predicted "
                  "lesions (merged and split lesions counted on each side). Pooled over cases; the lesion table is "
                  "<code>metrics/lesions.csv</code>.</p>", _lesion_table(lesions["labels"])]
        png = plot_detection_by_size(lesions["labels"], plots / "lesion_detection_by_size.png")
        parts.append(_figure(png, "Lesion detection rate by reference lesion size"))
    if any(r.get("volume_ref_ml") is not None for r in rows):
        parts.append("<h2>Volumes</h2>")
        parts.append(_figure(plot_volume_scatter(rows, plots / "volume_scatter.png"), "Predicted vs reference volume"))
        parts.append(_figure(plot_bland_altman(rows, plots / "volume_bland_altman.png"), "Bland-Altman of case volumes"))
    slice_filter = run_dir / "slice_filter.json"
    if slice_filter.is_file():
        parts += ["<h2>Training-slice filter</h2>", _slice_filter_table(slice_filter)]

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


def _lesion_rule(rules: dict[str, Any]) -> str:
    frac = float(rules.get("min_overlap") or 0)
    return "any of its voxels is predicted" if frac == 0 else f"at least {frac:.0%} of its voxels are predicted"


def _aggregation_table(agg: dict[str, Any]) -> str:
    labels = agg.get("labels", {})
    metrics: list[str] = []
    for values in labels.values():
        metrics += [m for m in values if m not in metrics and not m.endswith("_n_undefined")]
    head = "".join(f"<th>{_e(m)}</th>" for m in metrics)
    lines = [f"<table><tr><th>label</th>{head}</tr>"]
    for label, values in labels.items():
        cells = "".join(f"<td>{_fmt(values.get(m))}</td>" for m in metrics)
        lines.append(f'<tr><td class="t">{_e(label)}</td>{cells}</tr>')
    lines.append("</table>")
    return "\n".join(lines)


def _lesion_table(by_label: dict[str, dict[str, dict[str, Any]]]) -> str:
    cols = ("n_ref", "n_detected", "recall", "recall_mean_per_case", "n_pred", "n_correct", "precision",
            "precision_mean_per_case", "f1", "fp", "fp_per_case")
    head = "".join(f"<th>{c}</th>" for c in cols)
    lines = [f"<table><tr><th>label</th><th>size</th>{head}</tr>"]
    for label, brackets in by_label.items():
        for name, stats in brackets.items():
            cells = "".join(f"<td>{_fmt(stats.get(c))}</td>" for c in cols)
            lines.append(f'<tr><td class="t">{_e(label)}</td><td class="t">{_e(name)}</td>{cells}</tr>')
    lines.append("</table>")
    return "\n".join(lines)


def _slice_filter_table(path: Path) -> str:
    import json

    data = json.loads(path.read_text())
    lines = [f"<p>Training slices only (validation and test use every slice); filters combined with "
             f"<b>{_e(data.get('combine', 'all'))}</b>.</p>",
             "<table><tr><th>filter</th><th>slices kept</th><th>of</th><th>share</th></tr>"]
    total = int(data.get("total", 0))
    for name, kept in (data.get("kept") or {}).items():
        share = kept / total if total else None
        lines.append(f'<tr><td class="t">{_e(name)}</td><td>{int(kept)}</td><td>{total}</td><td>{_fmt(share)}</td></tr>')
    lines.append("</table>")
    return "\n".join(lines)


def _summary_table(summary: dict[str, Any]) -> str:
    head = "".join(f"<th>{s}</th>" for s in _SUMMARY_STATS)
    lines = [f"<table><tr><th>label</th><th>metric</th>{head}</tr>"]
    for label, metrics in summary.get("labels", {}).items():
        for metric in metrics:
            stats = metrics.get(metric)
            if stats is None:
                continue
            cells = "".join(f"<td>{_fmt(stats.get(s))}</td>" for s in _SUMMARY_STATS)
            lines.append(f'<tr><td class="t">{_e(label)}</td><td class="t">{_e(metric)}</td>{cells}</tr>')
    lines.append("</table>")
    return "\n".join(lines)


def _cases_table(rows: Sequence[dict[str, Any]]) -> str:
    columns = metric_columns(rows)
    head = "".join(f"<th>{_e(m)}</th>" for m in columns)
    lines = [f"<table><tr><th>case</th><th>label</th>{head}</tr>"]
    for row in rows:
        cells = "".join(f"<td>{_fmt(row.get(m))}</td>" for m in columns)
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
