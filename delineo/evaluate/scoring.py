"""One case, every number the evaluation reports: overlap and distances
(:mod:`~delineo.evaluate.metrics`), the WMH-challenge set and pixel-level F-beta, per-slice Dice
for the ``per_slice`` aggregation, and lesion counts with the lesion-table rows
(:mod:`~delineo.evaluate.lesions`). Run evaluation and folder evaluation both go through
:func:`score_case_full`, so a run and ``delineo evaluate PRED REF`` report the same columns.

Extra per-case columns (after :data:`~delineo.evaluate.metrics.METRICS`):

* ``avd_percent``: absolute volume difference, ``|Vpred - Vref| / Vref * 100`` (WMH challenge);
  undefined with an empty reference;
* ``hd95_pooled`` and ``hd95_max_directed``: both HD95 definitions, whatever ``hd95`` holds;
* ``f<beta>`` (e.g. ``f2``): pixel-level F-beta, ``(1+b^2) TP / ((1+b^2) TP + b^2 FN + FP)``,
  1 when both masks are empty; beta > 1 weighs recall more;
* ``slice_dice`` and ``n_slices``: the mean Dice over the case's slices along the slice axis
  (both empty 1, one empty 0) and their number; a 2D case is one slice;
* the lesion columns of :data:`~delineo.evaluate.lesions.LESION_METRICS` when lesions are on.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from delineo.config import EvaluateConfig
from delineo.evaluate.distances import HD95, directed_surface_distances
from delineo.evaluate.lesions import LesionRules, score_lesions
from delineo.evaluate.metrics import score_binary

Row = dict[str, Any]


def lesion_rules(options: EvaluateConfig) -> LesionRules:
    les = options.lesions
    return LesionRules(connectivity=les.connectivity, min_size=les.min_size, min_overlap=les.min_overlap)


def fbeta_name(beta: float) -> str:
    return f"f{beta:g}"


def score_case_full(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float],
    labels: dict[int, str],
    options: EvaluateConfig | None = None,
    affine: Optional[np.ndarray] = None,
    case: str = "",
    slice_axis: int = 2,
) -> tuple[list[Row], list[Row]]:
    """(rows of ``cases.csv``, rows of ``lesions.csv``) of one case, one row per label value > 0."""
    options = options or EvaluateConfig()
    pred = np.asarray(pred)
    ref = np.asarray(ref)
    rows: list[Row] = []
    lesion_rows: list[Row] = []
    for value, name in sorted(labels.items()):
        if value <= 0:
            continue
        p, r = pred == value, ref == value
        metrics: Row = score_binary(p, r, spacing, options.hd95)
        metrics.update(extra_metrics(p, r, spacing, metrics, options.fbeta, slice_axis))
        if options.lesions.enabled:
            lesion_metrics, table = score_lesions(p, r, spacing, lesion_rules(options), affine, case, name)
            metrics.update(lesion_metrics)
            lesion_rows += table
        rows.append({"case": case, "label": name, **metrics})
    return rows, lesion_rows


def extra_metrics(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], base: Row,
                  betas: Sequence[float], slice_axis: int) -> Row:
    """The columns of this module's notes that :func:`~delineo.evaluate.metrics.score_binary` lacks."""
    tp, fp, fn = base["tp"], base["fp"], base["fn"]
    v_ref, v_pred = base["volume_ref_ml"], base["volume_pred_ml"]
    out: Row = {"avd_percent": abs(v_pred - v_ref) / v_ref * 100 if v_ref else None}
    if pred.any() and ref.any():
        directed = directed_surface_distances(pred, ref, spacing)
        for name in HD95.names():
            out[f"hd95_{name}"] = HD95.get(name).fn(*directed)
    else:
        for name in HD95.names():
            out[f"hd95_{name}"] = base["hd95"]  # 0 (both empty) or undefined, as for hd95
    for beta in betas:
        b2 = float(beta) ** 2
        den = (1 + b2) * tp + b2 * fn + fp
        out[fbeta_name(beta)] = (1 + b2) * tp / den if den else 1.0
    out["slice_dice"], out["n_slices"] = slice_dice(pred, ref, slice_axis)
    return out


def slice_dice(pred: np.ndarray, ref: np.ndarray, axis: int = 2) -> tuple[float, int]:
    """(mean Dice over 2D slices along ``axis``, number of slices); both empty 1, one empty 0."""
    pred = np.asarray(pred, dtype=bool)
    ref = np.asarray(ref, dtype=bool)
    if pred.ndim == 2:
        pred, ref, axis = pred[..., None], ref[..., None], 2
    other = tuple(i for i in range(pred.ndim) if i != axis)
    tp = np.count_nonzero(pred & ref, axis=other)
    total = np.count_nonzero(pred, axis=other) + np.count_nonzero(ref, axis=other)
    dice = np.where(total > 0, 2 * tp / np.maximum(total, 1), 1.0)
    return float(dice.mean()), int(dice.size)
