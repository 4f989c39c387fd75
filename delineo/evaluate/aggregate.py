"""Aggregations of per-case rows, by name: the same predictions give different headline numbers
depending on how cases are combined, so every number in a summary says which way it was made.

* ``mean_per_case`` (Delineo's convention so far): the mean over cases of each per-case metric;
  undefined values (a distance to an empty mask, precision of an empty prediction) are left out
  and counted in ``n_undefined``.
* ``pooled``: voxel and lesion counts summed over all cases, then the ratios (Dice, IoU,
  precision, recall, F-beta, AVD, lesion recall / precision / F1) computed once; large cases
  weigh more. Distances cannot be pooled from per-case rows and are not given.
* ``per_slice``: every 2D image (or slice of a volume along the slice axis) scored on its own,
  "both empty scores 1, one empty scores 0" (the pneumothorax-challenge convention), averaged
  over all images; only Dice.

A new aggregation is one ``@AGGREGATIONS.register(name, description)`` function
``rows -> {label: {metric: value}}``. The names also appear in ``config.EvaluateConfig.aggregate``.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np

from delineo.errors import ConfigError

Row = dict[str, Any]
AggregateFn = Callable[[Sequence[Row]], dict[str, dict[str, float | int | None]]]


class _Registry:
    def __init__(self) -> None:
        self.items: dict[str, tuple[str, AggregateFn]] = {}

    def register(self, name: str, description: str) -> Callable[[AggregateFn], AggregateFn]:
        def deco(fn: AggregateFn) -> AggregateFn:
            self.items[name] = (description, fn)
            return fn

        return deco

    def get(self, name: str) -> tuple[str, AggregateFn]:
        if name not in self.items:
            raise ConfigError(f"unknown aggregation '{name}'; valid: {', '.join(self.items)}.")
        return self.items[name]


AGGREGATIONS = _Registry()


def aggregate(rows: Sequence[Row], names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``{name: {"description": str, "labels": {label: {metric: value}}}}`` for each named aggregation."""
    out = {}
    for name in names:
        description, fn = AGGREGATIONS.get(name)
        out[name] = {"description": description, "labels": fn(rows)}
    return out


def _by_label(rows: Sequence[Row]) -> dict[str, list[Row]]:
    groups: dict[str, list[Row]] = {}
    for row in rows:
        groups.setdefault(str(row["label"]), []).append(row)
    return groups


def _defined(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and not math.isfinite(value))


@AGGREGATIONS.register("mean_per_case", "mean over cases; undefined values left out and counted (n_undefined)")
def _mean_per_case(rows: Sequence[Row]) -> dict[str, dict[str, float | int | None]]:
    out: dict[str, dict[str, float | int | None]] = {}
    for label, group in _by_label(rows).items():
        metrics = [k for k in group[0] if k not in ("case", "label", "fold")]
        stats: dict[str, float | int | None] = {}
        for metric in metrics:
            values = [float(r[metric]) for r in group if _defined(r.get(metric)) and not isinstance(r.get(metric), str)]
            stats[metric] = float(np.mean(values)) if values else None
            stats[f"{metric}_n_undefined"] = len(group) - len(values)
        out[label] = stats
    return out


@AGGREGATIONS.register("pooled", "voxel and lesion counts summed over all cases, ratios computed once")
def _pooled(rows: Sequence[Row]) -> dict[str, dict[str, float | int | None]]:
    out: dict[str, dict[str, float | int | None]] = {}
    for label, group in _by_label(rows).items():
        s = {k: sum(float(r.get(k) or 0) for r in group)
             for k in ("tp", "fp", "fn", "volume_pred_ml", "volume_ref_ml", "lesion_n_ref", "lesion_n_pred",
                       "lesion_detected", "lesion_correct", "lesion_fp")}
        tp, fp, fn = s["tp"], s["fp"], s["fn"]
        empty = tp + fp + fn == 0
        stats: dict[str, float | int | None] = {
            "dice": _ratio(2 * tp, 2 * tp + fp + fn, empty),
            "iou": _ratio(tp, tp + fp + fn, empty),
            "precision": _ratio(tp, tp + fp, empty),
            "recall": _ratio(tp, tp + fn, empty),
            "volume_pred_ml": s["volume_pred_ml"],
            "volume_ref_ml": s["volume_ref_ml"],
            "avd_percent": (abs(s["volume_pred_ml"] - s["volume_ref_ml"]) / s["volume_ref_ml"] * 100
                            if s["volume_ref_ml"] else None),
            "tp": int(tp), "fp": int(fp), "fn": int(fn),
        }
        for key in group[0]:
            if key.startswith("f") and key[1:].replace(".", "", 1).isdigit():  # f2, f0.5, ...
                beta = float(key[1:])
                b2 = beta * beta
                stats[key] = _ratio((1 + b2) * tp, (1 + b2) * tp + b2 * fn + fp, empty)
        if "lesion_n_ref" in group[0]:
            n_ref, n_pred = s["lesion_n_ref"], s["lesion_n_pred"]
            both_empty = n_ref == 0 and n_pred == 0
            recall = _ratio(s["lesion_detected"], n_ref, both_empty)
            precision = _ratio(s["lesion_correct"], n_pred, both_empty)
            stats.update({
                "lesion_n_ref": int(n_ref), "lesion_n_pred": int(n_pred),
                "lesion_detected": int(s["lesion_detected"]), "lesion_fp": int(s["lesion_fp"]),
                "lesion_recall": recall, "lesion_precision": precision,
                "lesion_f1": 1.0 if both_empty else (2 * recall * precision / (recall + precision)
                                                     if recall and precision else 0.0),
                "lesion_fp_per_case": s["lesion_fp"] / len(group),
            })
        out[label] = stats
    return out


@AGGREGATIONS.register("per_slice", "mean over every 2D image/slice; both empty = 1, one empty = 0")
def _per_slice(rows: Sequence[Row]) -> dict[str, dict[str, float | int | None]]:
    out: dict[str, dict[str, float | int | None]] = {}
    for label, group in _by_label(rows).items():
        pairs = [(float(r["slice_dice"]), int(r["n_slices"])) for r in group
                 if _defined(r.get("slice_dice")) and r.get("n_slices")]
        n = sum(k for _, k in pairs)
        out[label] = {"dice": sum(d * k for d, k in pairs) / n if n else None, "n_slices": n}
    return out


def _ratio(num: float, den: float, empty: bool) -> float | None:
    if den:
        return num / den
    return 1.0 if empty else None
