"""``sampling.flip_copies``: mirrored copies of every training case added to the training set, as
the WMH system did (horizontal and vertical flips as extra copies), instead of flips drawn at
random per batch (``augment.flip``).

A copy is the case flipped along one spatial axis, image and label alike, with its foreground
coordinates mirrored, so foreground oversampling finds the same voxels in the copy. A copy is a
reversed view of the case's memory-mapped arrays, not a second array: it costs no memory and no
disk, and is read from the same mapped file as the case itself.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import numpy as np

from delineo.data.cache import CachedCase


def mirrored(case: CachedCase, axis: int) -> CachedCase:
    """``case`` flipped along spatial ``axis`` (0, 1 or 2); its id gets ``#flip<axis>``."""
    image = np.flip(case.image, axis=1 + axis)  # a view: nothing is read or copied here
    label = None if case.label is None else np.flip(case.label, axis=axis)
    n = case.image.shape[1 + axis]
    fg = {}
    for value, coords in case.fg_coords.items():
        c = np.array(coords, copy=True)
        if len(c):
            c[:, axis] = n - 1 - c[:, axis]
        fg[value] = c
    return replace(case, case_id=f"{case.case_id}#flip{axis}", image=image, label=label, fg_coords=fg)


def with_flip_copies(cases: Sequence[CachedCase], axes: Sequence[int]) -> list[CachedCase]:
    """The cases followed by one mirrored copy of each per axis: N cases, k axes -> N * (1 + k)."""
    out = list(cases)
    for axis in axes:
        out += [mirrored(c, axis) for c in cases]
    return out
