"""Per-case segmentation metrics: overlap, surface distances and volumes, in physical units.

Every metric is computed per label value on the binary masks ``pred == v`` and ``ref == v``.
Distances are in millimetres (they use the voxel ``spacing``), volumes in millilitres.

Surface distances follow the usual implementations (MedPy as used by nnU-Net, MONAI,
DeepMind ``surface-distance``): the surface of a mask is its voxels that have at least one
6-connected (4-connected in 2D) background neighbour, with everything outside the array counted
as background; for every surface voxel of one mask we take the Euclidean distance (mm) to the
nearest surface voxel of the other, in both directions. ``hd95`` is by default the 95th percentile
(``numpy.percentile``, linear interpolation) over the union of both directed sets (MedPy's
definition; ``hd95="max_directed"`` gives MONAI's, see :mod:`delineo.evaluate.distances`) and
``assd`` is the mean over that union.

Conventions for empty masks (chosen so that means over cases are not skewed by made-up numbers):

* ratio metrics are ``x / y`` with ``0 / 0`` meaning "nothing to get wrong": it is ``1.0`` when
  *both* masks are empty and ``None`` (undefined) when only the other mask is non-empty.
  Hence, when both are empty: dice = iou = precision = recall = 1; when only the reference is
  empty: dice = iou = precision = 0 and recall = None; when only the prediction is empty:
  dice = iou = recall = 0 and precision = None;
* ``hd95`` and ``assd`` are 0 when both masks are empty and ``None`` when exactly one is
  empty: a distance to nothing is not defined, and a large sentinel value would dominate any
  mean (report ``n_undefined`` next to the mean instead, see :mod:`delineo.evaluate.table`);
* ``rvd`` = (Vpred - Vref) / Vref is ``None`` whenever the reference is empty;
* ``tp``, ``fp``, ``fn`` (voxel counts) and the volumes are always defined.

``None`` rather than NaN marks undefined values so that they survive JSON and CSV unchanged and
cannot silently poison an average.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from delineo.evaluate.distances import DEFAULT_HD95, HD95, directed_surface_distances

log = logging.getLogger(__name__)

#: Metric names in the order they appear in tables and reports.
METRICS: tuple[str, ...] = (
    "dice",
    "iou",
    "precision",
    "recall",
    "hd95",
    "assd",
    "volume_pred_ml",
    "volume_ref_ml",
    "rvd",
    "tp",
    "fp",
    "fn",
)


def score_case(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float],
    labels: dict[int, str],
    hd95: str = DEFAULT_HD95,
) -> dict[str, dict[str, float | None]]:
    """Metrics of one case for every label value > 0 in ``labels``, keyed by label name.

    ``pred`` and ``ref`` are label maps of the same shape (2D or 3D); ``spacing`` is the voxel
    size in mm along each array axis. The background (value 0) is never scored.
    """
    pred = np.asarray(pred)
    ref = np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    spacing = _check_spacing(spacing, ref.ndim)
    names = [name for value, name in labels.items() if value > 0]
    if len(set(names)) != len(names):
        raise ValueError(f"label names must be unique, got {labels}")
    return {
        name: score_binary(pred == value, ref == value, spacing, hd95)
        for value, name in sorted(labels.items())
        if value > 0
    }


def score_binary(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float],
                 hd95: str = DEFAULT_HD95) -> dict[str, float | None]:
    """All metrics of :data:`METRICS` for one pair of binary masks (see the module conventions).

    ``hd95`` names the Hausdorff-95 definition (:data:`delineo.evaluate.distances.HD95`)."""
    hd95_fn = HD95.get(hd95).fn
    pred = np.asarray(pred, dtype=bool)
    ref = np.asarray(ref, dtype=bool)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    spacing = _check_spacing(spacing, ref.ndim)
    n_pred = int(np.count_nonzero(pred))
    n_ref = int(np.count_nonzero(ref))
    tp = int(np.count_nonzero(pred & ref)) if n_pred and n_ref else 0
    fp = n_pred - tp
    fn = n_ref - tp
    both_empty = n_pred == 0 and n_ref == 0
    voxel_ml = float(np.prod(spacing)) / 1000.0

    if n_pred and n_ref:
        pred_to_ref, ref_to_pred = directed_surface_distances(pred, ref, spacing)
        hd: float | None = hd95_fn(pred_to_ref, ref_to_pred)
        assd: float | None = float(np.concatenate([pred_to_ref, ref_to_pred]).mean())
    elif both_empty:
        hd = assd = 0.0
    else:
        hd = assd = None

    return {
        "dice": _ratio(2 * tp, n_pred + n_ref, both_empty),
        "iou": _ratio(tp, tp + fp + fn, both_empty),
        "precision": _ratio(tp, n_pred, both_empty),
        "recall": _ratio(tp, n_ref, both_empty),
        "hd95": hd,
        "assd": assd,
        "volume_pred_ml": n_pred * voxel_ml,
        "volume_ref_ml": n_ref * voxel_ml,
        "rvd": (n_pred - n_ref) / n_ref if n_ref else None,
        "tp": tp,
        "fp": fp,
        "fn": fn,
    }


def surface_distances(a: np.ndarray, b: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Distances (mm) from each surface voxel of ``a`` to the surface of ``b`` and vice versa
    (the two directed sets of :func:`directed_surface_distances`, concatenated)."""
    return np.concatenate(directed_surface_distances(a, b, spacing))


def _ratio(num: int, den: int, both_empty: bool) -> float | None:
    """``num / den``; for ``0 / 0`` 1.0 when both masks are empty, else undefined (None)."""
    if den:
        return num / den
    return 1.0 if both_empty else None


def _check_spacing(spacing: Sequence[float], ndim: int) -> tuple[float, ...]:
    values = tuple(float(s) for s in spacing)
    if len(values) != ndim:
        raise ValueError(f"spacing {values} has {len(values)} values for a {ndim}D array")
    if not all(np.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"spacing {values} must be finite and positive")
    return values
