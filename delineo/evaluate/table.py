"""Per-case metric tables, their summary statistics, and evaluation of two folders of label maps.

A *row* is one (case, label) pair: ``{"case": str, "label": str, <metric>: float | int | None}``
with the metrics of :data:`delineo.evaluate.metrics.METRICS` first, then any extra columns
(:mod:`delineo.evaluate.scoring`: WMH set, F-beta, per-slice Dice, lesion counts) in the order
they first appear. Rows are the single exchange format between scoring, CSV files, summaries,
plots and the HTML report.

Undefined values (``None``, see :mod:`delineo.evaluate.metrics`) are left out of every
statistic and counted in ``n_undefined`` instead, so that an empty prediction neither inflates
nor deflates the mean Hausdorff distance; read ``n_undefined`` next to each mean.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np
from tqdm import tqdm

from delineo.errors import InputError
from delineo.evaluate.metrics import METRICS
from delineo.io.atomic import write_text_atomic
from delineo.io.files import case_name, is_image_file, read_image

if TYPE_CHECKING:
    from delineo.config import EvaluateConfig

log = logging.getLogger(__name__)

Row = dict[str, Any]

CASES_CSV = Path("metrics") / "cases.csv"
SUMMARY_JSON = Path("metrics") / "summary.json"
LESIONS_CSV = Path("metrics") / "lesions.csv"
_COUNT_METRICS = frozenset({"tp", "fp", "fn"})
_TEXT_COLUMNS = frozenset({"case", "label", "fold"})


def metric_columns(rows: Iterable[Row]) -> list[str]:
    """:data:`METRICS` then every other non-text column of ``rows``, in order of first appearance."""
    extra: dict[str, None] = {}
    for row in rows:
        for key in row:
            if key not in _TEXT_COLUMNS and key not in METRICS:
                extra.setdefault(key, None)
    return [*METRICS, *extra]


def rows_from_scores(case: str, scores: dict[str, dict[str, float | None]]) -> list[Row]:
    """Flatten the output of :func:`~delineo.evaluate.metrics.score_case` into table rows."""
    return [{"case": case, "label": label, **metrics} for label, metrics in scores.items()]


def write_cases_csv(rows: Iterable[Row], path: str | Path) -> Path:
    """Write one line per (case, label) atomically; undefined values are empty cells."""
    path = Path(path)
    rows = list(rows)
    columns = metric_columns(rows)
    with_fold = any("fold" in row for row in rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["case", "label", *columns, *(["fold"] if with_fold else [])])
    for row in rows:
        writer.writerow([row["case"], row["label"], *(_cell(row.get(m)) for m in columns),
                         *([row.get("fold", "")] if with_fold else [])])
    write_text_atomic(path, buffer.getvalue())
    return path


def read_cases_csv(path: str | Path) -> list[Row]:
    """Read a file written by :func:`write_cases_csv` back into rows (empty cells -> None)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found.")
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"case", "label"} - set(reader.fieldnames or ())
        if missing:
            raise InputError(f"{path}: missing column(s) {', '.join(sorted(missing))}.")
        rows = []
        for raw in reader:
            row: Row = {"case": raw["case"], "label": raw["label"]}
            for metric in (c for c in reader.fieldnames or () if c not in _TEXT_COLUMNS):
                text = (raw.get(metric) or "").strip()
                row[metric] = None if not text else _number(text, metric in _COUNT_METRICS)
            if raw.get("fold"):
                row["fold"] = raw["fold"]
            rows.append(row)
    return rows


def summarise(rows: Sequence[Row]) -> dict[str, Any]:
    """Mean, median, sample std, n and n_undefined of every metric, per label.

    Returns ``{"n_cases": int, "mean_dice": float | None, "labels": {label: {metric:
    {"mean", "median", "std", "n", "n_undefined"}}}}``. ``std`` is the sample standard deviation
    (ddof=1, what papers report as mean ± SD) and is None below two values; mean and median are
    None when no value is defined. ``mean_dice`` is the mean over labels of the per-label mean
    Dice, so that every structure weighs the same whatever its number of cases.
    """
    values: dict[str, dict[str, list[float]]] = {}
    undefined: dict[str, dict[str, int]] = {}
    columns = metric_columns(rows)
    for row in rows:
        label = str(row["label"])
        per_metric = values.setdefault(label, {m: [] for m in columns})
        per_undefined = undefined.setdefault(label, {m: 0 for m in columns})
        for metric in columns:
            value = row.get(metric)
            if value is None or (isinstance(value, float) and not math.isfinite(value)):
                per_undefined[metric] += 1
            else:
                per_metric[metric].append(float(value))
    labels = {
        label: {metric: _stats(vals, undefined[label][metric]) for metric, vals in per_metric.items()}
        for label, per_metric in values.items()
    }
    label_dice = [stats["dice"]["mean"] for stats in labels.values() if stats["dice"]["mean"] is not None]
    return {
        "n_cases": len({row["case"] for row in rows}),
        "mean_dice": float(np.mean(label_dice)) if label_dice else None,
        "labels": labels,
    }


def write_summary_json(summary: dict[str, Any], path: str | Path) -> Path:
    """Write the summary atomically as strict JSON (undefined values are ``null``, never NaN)."""
    path = Path(path)
    write_text_atomic(path, json.dumps(summary, indent=2, allow_nan=False) + "\n")
    return path


def score_folders(
    pred_dir: str | Path,
    ref_dir: str | Path,
    labels: dict[int, str] | None = None,
    options: "EvaluateConfig | None" = None,
) -> list[Row]:
    """Per-case rows of :func:`score_folders_full` (without the lesion table)."""
    return score_folders_full(pred_dir, ref_dir, labels, options)[0]


def score_folders_full(
    pred_dir: str | Path,
    ref_dir: str | Path,
    labels: dict[int, str] | None = None,
    options: "EvaluateConfig | None" = None,
) -> tuple[list[Row], list[Row]]:
    """Score every reference case against the prediction of the same case name; return the
    per-case rows and the lesion-table rows (:func:`delineo.evaluate.scoring.score_case_full`,
    settings from ``options``, the experiment file's ``evaluate:`` section).

    Every reference file needs a prediction (InputError otherwise); extra predictions are
    ignored with a warning. Pairs must share the voxel grid (shape and affine): metrics on
    resampled or shifted grids would be silently wrong. With ``labels=None`` the labels are the
    union of the non-zero values found in all files, named ``label_<value>``; a label missing
    from both files of a case is scored as "both empty" there, so every case has every label.
    """
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    refs = _image_files(ref_dir)
    preds = _image_files(pred_dir)
    if not refs:
        raise InputError(f"{ref_dir}: no reference images (.nii, .nii.gz, .nrrd, ...) found.")
    missing = sorted(set(refs) - set(preds))
    if missing:
        shown = ", ".join(str(refs[c].name) for c in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise InputError(f"{pred_dir}: no prediction for reference case(s) {shown}.")
    extra = sorted(set(preds) - set(refs))
    if extra:
        log.warning("%d prediction(s) without reference ignored: %s", len(extra), ", ".join(extra[:5]))

    from delineo.config import EvaluateConfig
    from delineo.evaluate.scoring import score_case_full

    options = options or EvaluateConfig()
    axis = 2 if options.slice_axis is None else options.slice_axis
    scores: dict[str, dict[int, Row]] = {}
    n_slices: dict[str, int] = {}
    lesion_rows: list[Row] = []
    seen: set[int] = set()
    for case in tqdm(sorted(refs), desc="Evaluating", unit="case", disable=None):
        ref_path, pred_path = refs[case], preds[case]
        ref_img = read_image(ref_path)
        pred_img = read_image(pred_path)
        if ref_img.spatial_shape != pred_img.spatial_shape:
            raise InputError(
                f"{pred_path}: shape {pred_img.spatial_shape} differs from reference "
                f"{ref_path} shape {ref_img.spatial_shape}."
            )
        if not ref_img.same_grid(pred_img):
            raise InputError(
                f"{pred_path}: voxel grid (affine) differs from reference {ref_path}; "
                "resample the prediction onto the reference grid first."
            )
        ref = _label_array(ref_img.array, ref_path)
        pred = _label_array(pred_img.array, pred_path)
        if labels is None:
            present = {int(v) for v in np.union1d(np.unique(ref), np.unique(pred)) if v > 0}
            seen |= present
            case_labels = {v: _default_name(v) for v in present}
        else:
            case_labels = {v: name for v, name in labels.items() if v > 0}
        case_rows, case_lesions = score_case_full(pred, ref, ref_img.spacing, case_labels, options,
                                                  ref_img.affine, case, axis)
        by_name = {row["label"]: row for row in case_rows}
        scores[case] = {v: by_name[name] for v, name in case_labels.items()}
        n_slices[case] = 1 if ref.ndim == 2 else int(ref.shape[axis])
        lesion_rows += case_lesions
        log.debug("%s: %s", case, {n: m["dice"] for n, m in by_name.items()})

    if labels is None:
        labels = {v: _default_name(v) for v in sorted(seen)}
        log.info("labels inferred from the data: %s", labels)
    rows: list[Row] = []
    for case in sorted(scores):
        for value, name in sorted(labels.items()):
            if value > 0:
                row = scores[case].get(value) or {**_both_empty_scores(options), "n_slices": n_slices[case]}
                rows.append({**row, "case": case, "label": name})
    return rows, lesion_rows


def evaluate_folders(
    pred_dir: str | Path,
    ref_dir: str | Path,
    labels: dict[int, str] | None,
    out_dir: str | Path,
    options: "EvaluateConfig | None" = None,
    report: bool = True,
) -> dict[str, Any]:
    """Score ``pred_dir`` against ``ref_dir`` (see :func:`score_folders_full`) and write the tables.

    Writes ``out_dir/metrics/cases.csv``, ``metrics/lesions.csv`` (when lesions are on),
    ``metrics/summary.json`` (with the aggregations of ``options.aggregate``) and, with
    ``report``, ``out_dir/report.html`` without overlays; returns the summary.
    """
    from delineo.config import EvaluateConfig

    options = options or EvaluateConfig()
    out_dir = Path(out_dir)
    rows, lesion_rows = score_folders_full(pred_dir, ref_dir, labels, options)
    summary = summarise_full(rows, lesion_rows, options)
    write_cases_csv(rows, out_dir / CASES_CSV)
    if options.lesions.enabled:
        from delineo.evaluate.lesions import write_lesion_table

        write_lesion_table(lesion_rows, out_dir / LESIONS_CSV)
    write_summary_json(summary, out_dir / SUMMARY_JSON)
    if report:
        from delineo.evaluate.report import write_report

        write_report(out_dir, rows, summary, {}, f"{Path(pred_dir).name} vs {Path(ref_dir).name}",
                     lesion_rows=lesion_rows if options.lesions.enabled else None)
    log.info(
        "evaluated %d case(s), mean Dice %s; tables in %s",
        summary["n_cases"],
        "n/a" if summary["mean_dice"] is None else f"{summary['mean_dice']:.4f}",
        out_dir / "metrics",
    )
    return summary


def _image_files(folder: Path) -> dict[str, Path]:
    """Image files of ``folder`` keyed by case name; two files of one case are an error."""
    if not folder.is_dir():
        raise InputError(f"{folder}: folder not found.")
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not is_image_file(path) or path.name.startswith("."):
            continue
        case = case_name(path)
        if case in files:
            raise InputError(f"{path}: case {case!r} also has file {files[case].name} in the same folder.")
        files[case] = path
    return files


def _label_array(array: np.ndarray, path: Path) -> np.ndarray:
    """Integer label map; float files are accepted only when every value is a whole number."""
    if np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_:
        return array
    rounded = np.rint(array)
    if not np.array_equal(rounded, array):
        raise InputError(f"{path}: not a label map (it holds non-integer values).")
    return rounded.astype(np.int64)


def _default_name(value: int) -> str:
    return f"label_{value}"


def _both_empty_scores(options: "EvaluateConfig | None" = None) -> dict[str, Any]:
    """Scores of a label absent from both masks (identical for every grid and spacing, except
    ``n_slices``, which the caller sets)."""
    from delineo.evaluate.scoring import score_case_full

    empty = np.zeros((1, 1), dtype=bool)
    row = score_case_full(empty, empty, (1.0, 1.0), {1: "x"}, options)[0][0]
    return {k: v for k, v in row.items() if k not in ("case", "label")}


def summarise_full(rows: Sequence[Row], lesion_rows: Sequence[Row], options: "EvaluateConfig") -> dict[str, Any]:
    """:func:`summarise` plus the named aggregations, the HD95 definition in use and, with
    lesions on, pooled lesion metrics by size bracket (``summary["lesions"]``)."""
    from delineo.evaluate.aggregate import aggregate
    from delineo.evaluate.distances import HD95
    from delineo.evaluate.lesions import summarise_lesions

    summary = summarise(rows)
    summary["hd95_definition"] = {"name": options.hd95, "description": HD95.get(options.hd95).description}
    summary["aggregations"] = aggregate(rows, options.aggregate)
    if options.lesions.enabled:
        n_cases: dict[str, int] = {}
        for row in rows:
            n_cases[str(row["label"])] = n_cases.get(str(row["label"]), 0) + 1
        summary["lesions"] = {
            "rules": options.lesions.model_dump(mode="json"),
            "labels": summarise_lesions(lesion_rows, n_cases, options.lesions.size_brackets, options.lesions.size_unit),
        }
    return summary


def _stats(values: list[float], n_undefined: int) -> dict[str, float | int | None]:
    arr = np.asarray(values, dtype=np.float64)
    n = int(arr.size)
    return {
        "mean": float(arr.mean()) if n else None,
        "median": float(np.median(arr)) if n else None,
        "std": float(arr.std(ddof=1)) if n > 1 else None,
        "n": n,
        "n_undefined": n_undefined,
    }


def _number(text: str, integer: bool) -> int | float:
    value = float(text)
    return int(value) if integer or (value.is_integer() and "." not in text and "e" not in text.lower()) else value


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    return str(value)
