"""Patch and slice samplers: 3D patches, 2D slices and 2.5D "k neighbouring slices of every
channel as channels" (edges replicated), with foreground oversampling so that a set fraction of
samples is centred on a labelled voxel and small structures are seen.

Samplers draw from a ``numpy.random.Generator`` the caller seeds per epoch and rank, which is
what makes training resumable with identical results.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from delineo.data.cache import CachedCase
from delineo.errors import ConfigError


def round_up(n: int, divisor: int) -> int:
    return int(-(-n // divisor) * divisor)


def default_patch_size(shapes: Sequence[Sequence[int]], mode: str, axis: int, divisor: int,
                       cap: int = 128) -> list[int]:
    """The largest case extent rounded up to the network divisor (capped), per patch axis."""
    arr = np.asarray(shapes)
    full = [min(round_up(int(s), divisor), round_up(cap, divisor)) for s in arr.max(0)]
    if mode == "3d":
        return full
    return [s for i, s in enumerate(full) if i != axis]


def crop_padded(volume: np.ndarray, start: Sequence[int], size: Sequence[int], fill: float = 0) -> np.ndarray:
    """``volume[..., start:start+size]`` over the last len(size) axes, zero-padded outside."""
    nd = len(size)
    lead = volume.shape[: volume.ndim - nd]
    out = np.full(lead + tuple(size), fill, dtype=volume.dtype)
    src, dst = [slice(None)] * len(lead), [slice(None)] * len(lead)
    for s0, n, dim in zip(start, size, volume.shape[-nd:]):
        a, b = max(s0, 0), min(s0 + n, dim)
        if b <= a:
            return out
        src.append(slice(a, b))
        dst.append(slice(a - s0, b - s0))
    out[tuple(dst)] = volume[tuple(src)]
    return out


def slab(image: np.ndarray, axis: int, index: int, context: int) -> np.ndarray:
    """(C, *S) volume -> (C * (2*context+1), *S without axis): neighbouring slices of every
    channel as channels, channel-major, edges replicated."""
    n = image.shape[1 + axis]
    idx = np.clip(np.arange(index - context, index + context + 1), 0, n - 1)
    taken = np.take(image, idx, axis=1 + axis)  # (C, ..., k, ...)
    taken = np.moveaxis(taken, 1 + axis, 1)  # (C, k, *plane)
    return taken.reshape((-1,) + taken.shape[2:])


class PatchSampler:
    """Draws training batches (x: (B, C', *P) float32, y: (B, 1, *P) uint8)."""

    def __init__(self, cases: list[CachedCase], mode: str, patch_size: Sequence[int], axis: int = 2,
                 context: int = 1, foreground_fraction: float = 0.33, positive_only: bool = False,
                 slice_filter: Optional[Any] = None) -> None:
        if not cases:
            raise ValueError("no cases to sample from")
        if positive_only:
            # every sample is centred on a foreground voxel, so its mask is never empty
            cases = [c for c in cases if any(len(v) for v in c.fg_coords.values())]
            if not cases:
                raise ConfigError("sampling.positive_only: no training case has any foreground.")
            foreground_fraction = 1.0
        # training-slice selection (2D / 2.5D): only kept slices are drawn, see sampling.slice_filter
        self.selection = None
        if slice_filter is not None and mode != "3d":
            from delineo.sampling.slice_filter import build_selection

            self.selection = build_selection(cases, axis, slice_filter)
            cases = [c for c in cases if len(self.selection.allowed[c.case_id])
                     and (not positive_only or any(len(v) for v in self.selection.fg_coords[c.case_id].values()))]
            if not cases:
                raise ConfigError("sampling.slice_filter: no training slice passes the filter(s); lower "
                                  "entropy_threshold or combine with 'any'.")
        self.cases, self.mode = cases, mode
        self.patch = list(patch_size)
        self.axis, self.context = axis, context if mode == "2.5d" else 0
        self.fg_fraction = foreground_fraction
        self.positive_only = positive_only

    def sample(self, batch_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for _ in range(batch_size):
            case = self.cases[int(rng.integers(len(self.cases)))]
            x, y = self._one(case, rng)
            xs.append(x)
            ys.append(y)
        return np.stack(xs), np.stack(ys)[:, None]

    def _centre(self, case: CachedCase, rng: np.random.Generator) -> np.ndarray:
        shape = case.image.shape[1:]
        fg_coords = self.selection.fg_coords[case.case_id] if self.selection else case.fg_coords
        if fg_coords and (self.positive_only or rng.random() < self.fg_fraction):
            labels = sorted(fg_coords)
            coords = fg_coords[labels[int(rng.integers(len(labels)))]]
            if len(coords):
                return coords[int(rng.integers(len(coords)))]
        if self.selection is not None:
            return self.selection.centre(case.case_id, shape, self.axis, rng)
        return np.array([int(rng.integers(s)) for s in shape])

    def _one(self, case: CachedCase, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        centre = self._centre(case, rng)
        shape = case.image.shape[1:]
        if self.mode == "3d":
            start = _start(centre, shape, self.patch, rng)
            return (crop_padded(case.image, start, self.patch),
                    crop_padded(case.label, start, self.patch))
        index = int(centre[self.axis])
        plane_shape = [s for i, s in enumerate(shape) if i != self.axis]
        plane_centre = [c for i, c in enumerate(centre) if i != self.axis]
        start = _start(np.asarray(plane_centre), plane_shape, self.patch, rng)
        x = slab(np.asarray(case.image), self.axis, index, self.context)
        y = np.take(np.asarray(case.label), index, axis=self.axis)
        return crop_padded(x, start, self.patch), crop_padded(y, start, self.patch)


def _start(centre: np.ndarray, shape: Sequence[int], patch: Sequence[int], rng: np.random.Generator) -> list[int]:
    """Patch start so that the patch holds ``centre``, stays inside the volume when it fits,
    and is placed at a random offset around the volume when the volume is smaller."""
    out = []
    for c, s, p in zip(centre, shape, patch):
        if s >= p:
            out.append(int(np.clip(c - p // 2, 0, s - p)))
        else:
            out.append(-int(rng.integers(0, p - s + 1)))
    return out


def patch_grid_count(shape: Sequence[int], patch: Optional[Sequence[int]]) -> int:
    return 1 if patch is None else int(np.prod([max(1, -(-s // p)) for s, p in zip(shape, patch)]))
