"""Per-case metric tables, their summary statistics, and evaluation of two folders of label maps.

A *row* is one (case, label) pair: ``{"case": str, "label": str, <metric>: float | int | None}``
with the metrics of :data:`delineo.evaluate.metrics.METRICS`. Rows are the single exchange format
between scoring, CSV files, summaries, plots and the HTML report.

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
from typing import Any, Iterable, Sequence

import numpy as np
from tqdm import tqdm

from delineo.errors import InputError
from delineo.evaluate.metrics import METRICS, score_case
from delineo.io.atomic import write_text_atomic
from delineo.io.files import case_name, is_image_file, read_image

log = logging.getLogger(__name__)

Row = dict[str, Any]

CASES_CSV = Path("metrics") / "cases.csv"
SUMMARY_JSON = Path("metrics") / "summary.json"
_COUNT_METRICS = frozenset({"tp", "fp", "fn"})


def rows_from_scores(case: str, scores: dict[str, dict[str, float | None]]) -> list[Row]:
    """Flatten the output of :func:`~delineo.evaluate.metrics.score_case` into table rows."""
    return [{"case": case, "label": label, **metrics} for label, metrics in scores.items()]


def write_cases_csv(rows: Iterable[Row], path: str | Path) -> Path:
    """Write one line per (case, label) atomically; undefined values are empty cells."""
    path = Path(path)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["case", "label", *METRICS])
    for row in rows:
        writer.writerow([row["case"], row["label"], *(_cell(row.get(m)) for m in METRICS)])
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
            for metric in METRICS:
                text = (raw.get(metric) or "").strip()
                row[metric] = None if not text else (int(text) if metric in _COUNT_METRICS else float(text))
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
    for row in rows:
        label = str(row["label"])
        per_metric = values.setdefault(label, {m: [] for m in METRICS})
        per_undefined = undefined.setdefault(label, {m: 0 for m in METRICS})
        for metric in METRICS:
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
) -> list[Row]:
    """Score every reference case against the prediction of the same case name.

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

    scores: dict[str, dict[int, dict[str, float | None]]] = {}
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
        by_name = score_case(pred, ref, ref_img.spacing, case_labels)
        scores[case] = {v: by_name[name] for v, name in case_labels.items()}
        log.debug("%s: %s", case, {n: m["dice"] for n, m in by_name.items()})

    if labels is None:
        labels = {v: _default_name(v) for v in sorted(seen)}
        log.info("labels inferred from the data: %s", labels)
    empty = _both_empty_scores()
    rows: list[Row] = []
    for case in sorted(scores):
        for value, name in sorted(labels.items()):
            if value > 0:
                rows.append({"case": case, "label": name, **scores[case].get(value, empty)})
    return rows


def evaluate_folders(
    pred_dir: str | Path,
    ref_dir: str | Path,
    labels: dict[int, str] | None,
    out_dir: str | Path,
) -> dict[str, Any]:
    """Score ``pred_dir`` against ``ref_dir`` (see :func:`score_folders`) and write the tables.

    Writes ``out_dir/metrics/cases.csv`` and ``out_dir/metrics/summary.json`` and returns the
    summary of :func:`summarise`.
    """
    out_dir = Path(out_dir)
    rows = score_folders(pred_dir, ref_dir, labels)
    summary = summarise(rows)
    write_cases_csv(rows, out_dir / CASES_CSV)
    write_summary_json(summary, out_dir / SUMMARY_JSON)
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


def _both_empty_scores() -> dict[str, float | None]:
    """Scores of a label absent from both masks (identical for every grid and spacing)."""
    empty = np.zeros((1,), dtype=bool)
    return score_case(empty, empty, (1.0,), {1: "x"})["x"]


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


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    return str(value)
