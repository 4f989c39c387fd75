"""Lesion-wise evaluation: lesions are connected components, counted as found, missed or invented.

A model can reach Dice 0.8 by outlining two large lesions and missing twenty small ones; lesion
counts show it. The rules, stated once (and tested in ``tests/test_lesions.py``):

* **Lesions** are the connected components of ``mask == label``, per label. Connectivity is
  6, 18 or 26 in 3D and 4 or 8 in 2D; the default is full connectivity (26 / 8), as in the WMH
  challenge's evaluation (SimpleITK ``FullyConnected``). Components smaller than ``min_size``
  voxels are removed from *both* masks before anything else (they are neither found nor
  invented, and do not count as overlap).
* **Detection** of a reference lesion: at least ``min_overlap`` of its voxels are covered by the
  prediction (any predicted lesion); ``min_overlap = 0`` means "any voxel overlaps".
* **False positive**: a predicted lesion that touches no reference voxel. A predicted lesion
  that touches one is *correct*.
* **Merged and split lesions** are counted on each side independently, the WMH-challenge rule:
  lesion recall counts reference lesions (detected / all), lesion precision counts predicted
  lesions (correct / all), and lesion F1 is their harmonic mean. One predicted blob covering two
  reference lesions thus detects both (recall 2/2) and is one correct prediction (precision 1/1);
  two predicted pieces on one reference lesion detect it once (recall 1/1) and are both correct
  (precision 2/2). ``merged`` (predicted lesions touching two or more reference lesions) and
  ``split`` (reference lesions touched by two or more predicted lesions) are reported next to
  the counts so neither case is hidden.
* **Empty masks** follow :mod:`delineo.evaluate.metrics`: with no lesion on either side recall,
  precision and F1 are 1; recall is undefined (None) without reference lesions and precision
  without predicted ones; F1 is 0 when exactly one side is empty (every lesion is an error).
* **Size brackets** are half-open ``[lo, hi)`` in voxels (default 0, 10, 400, 1000, inf) or in
  ml. Reference lesions are bracketed by their own size for recall, predicted lesions by theirs
  for precision and false positives.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np
from scipy import ndimage

from delineo.errors import ConfigError, InputError
from delineo.io.atomic import write_text_atomic

#: Per-case lesion columns added to a row of ``cases.csv``.
LESION_METRICS: tuple[str, ...] = (
    "lesion_n_ref", "lesion_n_pred", "lesion_detected", "lesion_missed", "lesion_correct", "lesion_fp",
    "lesion_merged", "lesion_split", "lesion_recall", "lesion_precision", "lesion_f1",
)
#: Columns of the lesion table (``metrics/lesions.csv``), one row per reference and predicted lesion.
LESION_COLUMNS: tuple[str, ...] = (
    "case", "label", "side", "id", "voxels", "ml", "centroid_x_mm", "centroid_y_mm", "centroid_z_mm",
    "matched", "overlap_voxels", "overlap_fraction", "status",
)
DEFAULT_BRACKETS: tuple[float, ...] = (0, 10, 400, 1000)
_CONNECTIVITY = {3: {6: 1, 18: 2, 26: 3}, 2: {4: 1, 8: 2}}


@dataclass(frozen=True)
class LesionRules:
    """How lesions are found and matched (see the module notes)."""

    connectivity: Optional[int] = None  # None = full (26 in 3D, 8 in 2D)
    min_size: int = 0
    min_overlap: float = 0.0

    def structure(self, ndim: int) -> np.ndarray:
        if ndim not in _CONNECTIVITY:
            raise InputError(f"lesions need a 2D or 3D mask, got {ndim}D.")
        if self.connectivity is None:
            return ndimage.generate_binary_structure(ndim, ndim)
        rank = _CONNECTIVITY[ndim].get(int(self.connectivity))
        if rank is None:
            raise ConfigError(f"connectivity {self.connectivity} is not valid in {ndim}D; "
                              f"use one of {', '.join(map(str, _CONNECTIVITY[ndim]))}.")
        return ndimage.generate_binary_structure(ndim, rank)


def label_lesions(mask: np.ndarray, rules: LesionRules) -> tuple[np.ndarray, int]:
    """Connected components of a binary mask (1..n, 0 background), those below ``min_size`` removed
    and the rest renumbered in scan order."""
    labelled, n = ndimage.label(np.asarray(mask, dtype=bool), structure=rules.structure(np.ndim(mask)))
    if rules.min_size > 1 and n:
        sizes = np.bincount(labelled.ravel(), minlength=n + 1)
        keep = sizes >= rules.min_size
        keep[0] = False
        new_ids = np.zeros(n + 1, dtype=labelled.dtype)
        new_ids[keep] = np.arange(1, int(keep.sum()) + 1)
        labelled, n = new_ids[labelled], int(keep.sum())
    return labelled, int(n)


def score_lesions(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float],
    rules: LesionRules = LesionRules(),
    affine: Optional[np.ndarray] = None,
    case: str = "",
    label: str = "",
) -> tuple[dict[str, float | int | None], list[dict[str, Any]]]:
    """Lesion counts of one binary pair and its lesion-table rows (see the module rules).

    ``affine`` (4x4, voxel index -> scanner mm) places the centroids; without it they are
    index times spacing. Returns ``(metrics, table_rows)`` with the keys of
    :data:`LESION_METRICS` and :data:`LESION_COLUMNS`.
    """
    pred = np.asarray(pred, dtype=bool)
    ref = np.asarray(ref, dtype=bool)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    if not 0.0 <= rules.min_overlap <= 1.0:
        raise ConfigError(f"min_overlap {rules.min_overlap} must be a fraction between 0 and 1.")
    ref_lab, n_ref = label_lesions(ref, rules)
    pred_lab, n_pred = label_lesions(pred, rules)
    ref_mask, pred_mask = ref_lab > 0, pred_lab > 0
    voxel_ml = float(np.prod(spacing)) / 1000.0

    # contingency of (ref lesion, pred lesion) overlaps, computed on the overlapping voxels only
    both = ref_mask & pred_mask
    pairs = np.stack([ref_lab[both], pred_lab[both]], axis=1) if both.any() else np.zeros((0, 2), int)
    pair_ids, pair_counts = (np.unique(pairs, axis=0, return_counts=True) if len(pairs)
                             else (np.zeros((0, 2), int), np.zeros(0, int)))
    ref_sizes = np.bincount(ref_lab.ravel(), minlength=n_ref + 1)
    pred_sizes = np.bincount(pred_lab.ravel(), minlength=n_pred + 1)
    ref_cover = np.bincount(ref_lab[both], minlength=n_ref + 1)  # voxels of each ref lesion predicted
    pred_cover = np.bincount(pred_lab[both], minlength=n_pred + 1)
    ref_partners: dict[int, list[int]] = {}
    pred_partners: dict[int, list[int]] = {}
    for (r, p), _count in zip(pair_ids.tolist(), pair_counts.tolist()):
        ref_partners.setdefault(r, []).append(p)
        pred_partners.setdefault(p, []).append(r)

    def detected(r: int) -> bool:
        covered = ref_cover[r] / ref_sizes[r]
        return ref_cover[r] > 0 and (rules.min_overlap == 0 or covered >= rules.min_overlap)

    n_detected = sum(detected(r) for r in range(1, n_ref + 1))
    n_correct = int(np.count_nonzero(pred_cover[1:]))
    metrics = _counts_to_metrics(n_ref, n_pred, n_detected, n_correct)
    metrics["lesion_merged"] = sum(len(v) > 1 for v in pred_partners.values())
    metrics["lesion_split"] = sum(len(v) > 1 for v in ref_partners.values())

    rows: list[dict[str, Any]] = []
    for side, lab, n, sizes, cover, partners in (
        ("reference", ref_lab, n_ref, ref_sizes, ref_cover, ref_partners),
        ("prediction", pred_lab, n_pred, pred_sizes, pred_cover, pred_partners),
    ):
        if not n:
            continue
        centroids = _centroids_mm(lab, n, spacing, affine)
        for i in range(1, n + 1):
            if side == "reference":
                status = "detected" if detected(i) else "missed"
            else:
                status = "correct" if cover[i] else "false_positive"
            rows.append({
                "case": case, "label": label, "side": side, "id": i, "voxels": int(sizes[i]),
                "ml": float(sizes[i]) * voxel_ml,
                "centroid_x_mm": centroids[i - 1][0], "centroid_y_mm": centroids[i - 1][1],
                "centroid_z_mm": centroids[i - 1][2],
                "matched": ";".join(str(j) for j in sorted(partners.get(i, []))),
                "overlap_voxels": int(cover[i]), "overlap_fraction": float(cover[i]) / float(sizes[i]),
                "status": status,
            })
    return metrics, rows


def _counts_to_metrics(n_ref: int, n_pred: int, n_detected: int, n_correct: int) -> dict[str, float | int | None]:
    """Recall, precision and F1 from lesion counts with the module's empty-mask conventions."""
    both_empty = n_ref == 0 and n_pred == 0
    recall = n_detected / n_ref if n_ref else (1.0 if both_empty else None)
    precision = n_correct / n_pred if n_pred else (1.0 if both_empty else None)
    return {
        "lesion_n_ref": n_ref, "lesion_n_pred": n_pred, "lesion_detected": n_detected,
        "lesion_missed": n_ref - n_detected, "lesion_correct": n_correct, "lesion_fp": n_pred - n_correct,
        "lesion_recall": recall, "lesion_precision": precision, "lesion_f1": _f1(recall, precision, both_empty),
    }


def _f1(recall: float | None, precision: float | None, both_empty: bool) -> float:
    if both_empty:
        return 1.0
    if recall is None or precision is None or recall + precision == 0:
        return 0.0
    return 2 * recall * precision / (recall + precision)


def _centroids_mm(lab: np.ndarray, n: int, spacing: Sequence[float], affine: Optional[np.ndarray]) -> list[tuple[float, float, float]]:
    """Centre of mass of each component in scanner mm (3 values; z = 0 for a 2D mask without affine)."""
    idx = np.asarray(ndimage.center_of_mass(np.ones(lab.shape), lab, range(1, n + 1)), dtype=np.float64).reshape(n, -1)
    if idx.shape[1] < 3:
        idx = np.concatenate([idx, np.zeros((n, 3 - idx.shape[1]))], axis=1)
    if affine is None:
        sp = list(spacing) + [1.0] * (3 - len(spacing))
        return [tuple(float(v) for v in row * np.asarray(sp[:3])) for row in idx]
    mm = (np.asarray(affine, dtype=np.float64) @ np.concatenate([idx, np.ones((n, 1))], axis=1).T).T[:, :3]
    return [tuple(float(v) for v in row) for row in mm]


# ------------------------------------------------------------------ summaries by size bracket

def bracket_names(edges: Sequence[float], unit: str = "voxels") -> list[str]:
    """'[0,10)', '[10,400)', ..., '[1000,inf)' for lower edges ``edges``."""
    edges = _check_edges(edges)
    highs = list(edges[1:]) + [math.inf]
    return [f"[{_num(lo)},{_num(hi)}) {unit}" for lo, hi in zip(edges, highs)]


def summarise_lesions(
    table: Sequence[dict[str, Any]],
    n_cases: dict[str, int] | int,
    edges: Sequence[float] = DEFAULT_BRACKETS,
    unit: str = "voxels",
) -> dict[str, dict[str, dict[str, float | int | None]]]:
    """Pooled lesion metrics per label, overall and per size bracket, from lesion-table rows.

    ``n_cases`` (per label, or one number) divides false positives into FP per case. Returns
    ``{label: {"all" | bracket name: {n_ref, n_detected, recall, n_pred, n_correct, precision,
    f1, fp, fp_per_case, recall_mean_per_case, precision_mean_per_case}}}``; a bracket's recall
    uses the reference lesions in it and its precision the predicted lesions in it; the
    ``*_mean_per_case`` values average over the cases holding such lesions.
    """
    if unit not in ("voxels", "ml"):
        raise ConfigError(f"size unit '{unit}' must be 'voxels' or 'ml'.")
    edges = _check_edges(edges)
    names = bracket_names(edges, unit)
    labels = sorted({str(r["label"]) for r in table} | (set(n_cases) if isinstance(n_cases, dict) else set()))
    out: dict[str, dict[str, dict[str, float | int | None]]] = {}
    for label in labels:
        rows = [r for r in table if str(r["label"]) == label]
        cases = n_cases.get(label, 0) if isinstance(n_cases, dict) else int(n_cases)
        groups: dict[str, list[dict[str, Any]]] = {"all": rows}
        for name in names:
            groups[name] = []
        for r in rows:
            size = float(r[unit])
            k = int(np.searchsorted(edges, size, side="right")) - 1
            groups[names[max(k, 0)]].append(r)
        out[label] = {name: _pooled(group, cases) for name, group in groups.items()}
    return out


def _pooled(rows: Iterable[dict[str, Any]], n_cases: int) -> dict[str, float | int | None]:
    rows = list(rows)
    per_case: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        per_case.setdefault(str(r["case"]), []).append(r)
    case_recalls = [sum(r["status"] == "detected" for r in rs) / n for rs in per_case.values()
                    if (n := sum(r["side"] == "reference" for r in rs))]
    case_precisions = [sum(r["status"] == "correct" for r in rs) / n for rs in per_case.values()
                       if (n := sum(r["side"] == "prediction" for r in rs))]
    n_ref = sum(r["side"] == "reference" for r in rows)
    n_det = sum(r["status"] == "detected" for r in rows)
    n_pred = sum(r["side"] == "prediction" for r in rows)
    n_cor = sum(r["status"] == "correct" for r in rows)
    recall = n_det / n_ref if n_ref else None
    precision = n_cor / n_pred if n_pred else None
    return {
        "n_ref": n_ref, "n_detected": n_det, "recall": recall, "n_pred": n_pred, "n_correct": n_cor,
        # a bracket may hold reference lesions but no predicted ones (or the reverse): F1 is then undefined
        "precision": precision, "f1": None if recall is None or precision is None else _f1(recall, precision, False),
        "fp": n_pred - n_cor, "fp_per_case": (n_pred - n_cor) / n_cases if n_cases else None,
        # mean over the cases that have such lesions (a case without any has no recall to average)
        "recall_mean_per_case": float(np.mean(case_recalls)) if case_recalls else None,
        "precision_mean_per_case": float(np.mean(case_precisions)) if case_precisions else None,
    }


def _check_edges(edges: Sequence[float]) -> list[float]:
    edges = [float(e) for e in edges]
    if not edges or edges[0] != 0 or any(b <= a for a, b in zip(edges, edges[1:])):
        raise ConfigError(f"size brackets {edges} must start at 0 and increase strictly.")
    return edges


def _num(x: float) -> str:
    return "inf" if math.isinf(x) else (str(int(x)) if float(x).is_integer() else f"{x:g}")


# ------------------------------------------------------------------ the lesion table on disk

def write_lesion_table(rows: Iterable[dict[str, Any]], path: str | Path) -> Path:
    """``metrics/lesions.csv``: one line per reference and per predicted lesion, written atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(LESION_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (repr(float(v)) if isinstance(v, float) else v) for k, v in row.items() if k in LESION_COLUMNS})
    write_text_atomic(Path(path), buffer.getvalue())
    return Path(path)


def read_lesion_table(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a file written by :func:`write_lesion_table`, numbers parsed back."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found.")
    ints = {"id", "voxels", "overlap_voxels"}
    floats = {"ml", "centroid_x_mm", "centroid_y_mm", "centroid_z_mm", "overlap_fraction"}
    with open(path, newline="") as fh:
        return [{k: int(v) if k in ints else float(v) if k in floats else v for k, v in r.items()}
                for r in csv.DictReader(fh)]
