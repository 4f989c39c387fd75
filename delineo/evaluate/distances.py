"""Hausdorff-95 definitions, by name: the field uses two, and they give different numbers.

Both start from the same directed surface distances (see
:func:`delineo.evaluate.metrics.surface_distances`): for each surface voxel of the prediction the
distance (mm) to the nearest reference surface voxel, and vice versa.

* ``pooled`` (MedPy ``hd95``, as used by nnU-Net; Delineo's default, what ``hd95`` in
  ``cases.csv`` means): the 95th percentile of the *union* of both directed sets.
* ``max_directed`` (MONAI ``compute_hausdorff_distance(percentile=95)``, DeepMind
  ``surface-distance`` ``compute_robust_hausdorff(.., 95)``, the WMH challenge): the larger of the
  two directed 95th percentiles. A quantile of a union lies between the quantiles of its parts,
  so this is never smaller than ``pooled`` (up to interpolation); it is the stricter figure when
  one mask holds a far-away false positive that the other side's many close voxels would dilute.

Percentiles are ``numpy.percentile`` with linear interpolation, as in MedPy and MONAI.
A new definition is one decorated function: ``@HD95.register("name")``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from scipy import ndimage

from delineo.errors import ConfigError

#: The definition behind the ``hd95`` column when nothing else is asked for.
DEFAULT_HD95 = "pooled"

Directed = tuple[np.ndarray, np.ndarray]
HD95Fn = Callable[[np.ndarray, np.ndarray], float]


@dataclass(frozen=True)
class HD95Definition:
    name: str
    description: str
    fn: HD95Fn


class _Registry:
    """Name -> HD95 definition; an unknown name is a ConfigError listing the valid ones."""

    def __init__(self) -> None:
        self._items: dict[str, HD95Definition] = {}

    def register(self, name: str, description: str) -> Callable[[HD95Fn], HD95Fn]:
        def deco(fn: HD95Fn) -> HD95Fn:
            self._items[name] = HD95Definition(name, description, fn)
            return fn

        return deco

    def get(self, name: str) -> HD95Definition:
        if name not in self._items:
            raise ConfigError(f"unknown HD95 definition '{name}'; valid: {', '.join(self._items)}.")
        return self._items[name]

    def names(self) -> list[str]:
        return list(self._items)


HD95 = _Registry()


@HD95.register("pooled", "95th percentile of the union of both directed surface distances (MedPy, nnU-Net)")
def _pooled(pred_to_ref: np.ndarray, ref_to_pred: np.ndarray) -> float:
    return float(np.percentile(np.concatenate([pred_to_ref, ref_to_pred]), 95))


@HD95.register("max_directed", "larger of the two directed 95th percentiles (MONAI, surface-distance, WMH challenge)")
def _max_directed(pred_to_ref: np.ndarray, ref_to_pred: np.ndarray) -> float:
    return float(max(np.percentile(pred_to_ref, 95), np.percentile(ref_to_pred, 95)))


def directed_surface_distances(a: np.ndarray, b: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """(surface of ``a`` -> surface of ``b``, surface of ``b`` -> surface of ``a``) distances in mm.

    Both masks must be non-empty. The work is done on the bounding box of both masks padded by
    one background voxel: the nearest surface voxel of either mask always lies inside that box,
    so the result is exact while the distance transforms stay small for small structures in
    large volumes. The padding is zeros, which is what makes voxels on the array border count as
    surface (background outside the image).
    """
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    spacing = tuple(float(s) for s in spacing)
    box = _bounding_box(a | b)
    if box is None or not a.any() or not b.any():
        raise ValueError("surface distances need two non-empty masks")
    a = np.pad(a[box], 1)
    b = np.pad(b[box], 1)
    surface_a = _surface(a)
    surface_b = _surface(b)
    # distance_transform_edt measures distance to the nearest zero, so invert each surface.
    to_b = ndimage.distance_transform_edt(~surface_b, sampling=spacing)
    to_a = ndimage.distance_transform_edt(~surface_a, sampling=spacing)
    return to_b[surface_a], to_a[surface_b]


def _surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with at least one face-connected background neighbour."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """Smallest slices containing every True voxel of ``mask``, or None if it is empty."""
    box = []
    for axis in range(mask.ndim):
        other = tuple(i for i in range(mask.ndim) if i != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        if hits.size == 0:
            return None
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


def hd95(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], definition: str = DEFAULT_HD95) -> float | None:
    """HD95 (mm) by the named definition; 0 when both are empty, None when exactly one is."""
    fn = HD95.get(definition).fn
    pred = np.asarray(pred, dtype=bool)
    ref = np.asarray(ref, dtype=bool)
    if not pred.any() and not ref.any():
        return 0.0
    if not pred.any() or not ref.any():
        return None
    return fn(*directed_surface_distances(pred, ref, spacing))
