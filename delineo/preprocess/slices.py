"""Fit the slices of a volume to one in-plane size (e.g. 256 x 256, the white-matter-hyperintensity
pipeline's input) and put predictions back exactly.

Along each in-plane axis a slice smaller than the target is padded symmetrically (the odd voxel
after) with **that slice's minimum**, so the padding looks like the background of that slice
rather than a zero that a z-scored image would read as mid-grey; a larger one is centre-cropped.
:func:`restore_slices` undoes both with index arithmetic only: on the kept region the round trip
is exact, and what the crop removed comes back as ``fill`` (background for a prediction).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SliceFit:
    """What :func:`restore_slices` needs: the slice axis and, per in-plane axis, the original
    length, the padding (before, after) and the crop (start, stop) on the original axis."""

    axis: int
    original: tuple[int, int]
    pads: tuple[tuple[int, int], tuple[int, int]]
    crops: tuple[tuple[int, int], tuple[int, int]]


def fit_slices(volume: np.ndarray, size: tuple[int, int] = (256, 256), axis: int = 2,
               pad_value: float | None = None) -> tuple[np.ndarray, SliceFit]:
    """``volume`` (3D) with each slice along ``axis`` padded or centre-cropped to ``size``;
    padding holds each slice's minimum, or ``pad_value`` (e.g. 0 for a label map)."""
    if volume.ndim != 3:
        raise ValueError(f"fit_slices needs a 3D volume, got shape {volume.shape}")
    x = np.moveaxis(volume, axis, -1)
    pads, crops = [], []
    for n, target in zip(x.shape[:2], size):
        if n <= target:
            before = (target - n) // 2
            pads.append((before, target - n - before))
            crops.append((0, n))
        else:
            start = (n - target) // 2
            pads.append((0, 0))
            crops.append((start, start + target))
    x = x[crops[0][0]:crops[0][1], crops[1][0]:crops[1][1]]
    if pad_value is not None:
        minimum = np.full(x.shape[-1], pad_value, dtype=volume.dtype)
    else:
        minimum = x.reshape(-1, x.shape[-1]).min(axis=0) if x.size else np.zeros(x.shape[-1], x.dtype)
    out = np.empty((size[0], size[1], x.shape[-1]), dtype=volume.dtype)
    out[...] = minimum[None, None, :]
    out[pads[0][0]:pads[0][0] + x.shape[0], pads[1][0]:pads[1][0] + x.shape[1]] = x
    record = SliceFit(axis, (int(volume.shape[[a for a in range(3) if a != axis][0]]),
                             int(volume.shape[[a for a in range(3) if a != axis][1]])),
                      (tuple(pads[0]), tuple(pads[1])), (tuple(crops[0]), tuple(crops[1])))
    return np.moveaxis(out, -1, axis), record


def restore_slices(array: np.ndarray, record: SliceFit, fill: float = 0) -> np.ndarray:
    """The inverse of :func:`fit_slices` for an array on the fitted grid (3D)."""
    x = np.moveaxis(array, record.axis, -1)
    (pb0, _), (pb1, _) = record.pads
    (c0, d0), (c1, d1) = record.crops
    kept = x[pb0:pb0 + (d0 - c0), pb1:pb1 + (d1 - c1)]
    out = np.full(record.original + (x.shape[-1],), fill, dtype=array.dtype)
    out[c0:d0, c1:d1] = kept
    return np.moveaxis(out, -1, record.axis)


def fitted_shift(record: SliceFit) -> list[int]:
    """Index offset (per axis) from the fitted grid to the grid before fitting: voxel i of the
    fitted grid is voxel ``i + shift`` before it (negative in the padding)."""
    in_plane = [a for a in range(3) if a != record.axis]
    shift = [0, 0, 0]
    for a, (before, _), (start, _) in zip(in_plane, record.pads, record.crops):
        shift[a] = start - before
    return shift
