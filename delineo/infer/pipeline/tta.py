"""Test-time augmentation for pipeline members, and per-voxel uncertainty.

Augmentations act on the whole preprocessed case (C, *S), not on each sliding window: the
window starts are symmetric (``linspace`` from both ends) and the Gaussian weights are
symmetric, so a mirrored volume is covered by mirrored windows and the result equals
per-window mirroring, while each augmentation's prediction stays available on its own for the
uncertainty maps.

Only what a member was trained on is used: flips along the axes of its ``augment.flip``
(when ``p > 0``) and 90-degree rotations in the plane of its ``augment.rot90`` (when ``p > 0``).
For a 2D or 2.5D model the patch axes (0, 1) are the two volume axes other than the slice axis.
A stage's chosen TTA names *volume* axes; each member uses the ones it was trained on.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from delineo.config import ExperimentConfig
from delineo.modelfile.checkpoint import ModelMeta


@dataclass(frozen=True)
class Augmentation:
    """Flip the given spatial axes, then rotate ``quarter_turns`` x 90 degrees in ``plane``."""

    flips: tuple[int, ...] = ()
    quarter_turns: int = 0
    plane: tuple[int, int] = (0, 1)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """(C, *S) -> augmented (C, *S')."""
        if self.flips:
            x = np.flip(x, tuple(a + 1 for a in self.flips))
        if self.quarter_turns:
            x = np.rot90(x, self.quarter_turns, axes=(self.plane[0] + 1, self.plane[1] + 1))
        return np.ascontiguousarray(x)

    def inverse(self, y: np.ndarray) -> np.ndarray:
        """Undo :meth:`forward` on an output (K, *S')."""
        if self.quarter_turns:
            y = np.rot90(y, -self.quarter_turns, axes=(self.plane[0] + 1, self.plane[1] + 1))
        if self.flips:
            y = np.flip(y, tuple(a + 1 for a in self.flips))
        return np.ascontiguousarray(y)

    def describe(self) -> str:
        parts = [f"flip {list(self.flips)}"] if self.flips else []
        if self.quarter_turns:
            parts.append(f"rot {90 * self.quarter_turns}")
        return " + ".join(parts) or "identity"


def _volume_axes(meta: ModelMeta, patch_axes: Sequence[int]) -> list[int]:
    """Patch axes of a model -> spatial axes of the preprocessed volume."""
    if meta.dims == 3:
        return [int(a) for a in patch_axes if 0 <= a < 3]
    plane = [d for d in range(3) if d != meta.axis]
    return [plane[int(a)] for a in patch_axes if 0 <= a < 2]


def trained_flip_axes(cfg: ExperimentConfig, meta: ModelMeta) -> list[int]:
    """Volume axes the model was trained to be mirror-invariant on (empty without flips)."""
    flip = cfg.augment.flip
    return sorted(set(_volume_axes(meta, flip.axes))) if flip.p > 0 else []


def trained_rot_plane(cfg: ExperimentConfig, meta: ModelMeta) -> Optional[tuple[int, int]]:
    """The volume plane of trained 90-degree rotations, or None."""
    rot = cfg.augment.rot90
    if rot.p <= 0:
        return None
    axes = _volume_axes(meta, rot.axes)
    return (axes[0], axes[1]) if len(axes) == 2 and axes[0] != axes[1] else None


def augmentations(cfg: ExperimentConfig, meta: ModelMeta, flip_axes: Sequence[int],
                  rot90: bool) -> list[Augmentation]:
    """Every combination of the chosen flips (restricted to trained ones) and, with ``rot90``,
    of the four quarter turns in the trained plane; the identity comes first."""
    axes = [a for a in sorted(set(int(a) for a in flip_axes)) if a in trained_flip_axes(cfg, meta)]
    plane = trained_rot_plane(cfg, meta) if rot90 else None
    turns = range(4) if plane is not None else range(1)
    out = []
    for r in range(len(axes) + 1):
        for combo in itertools.combinations(axes, r):
            for k in turns:
                out.append(Augmentation(tuple(combo), k, plane or (0, 1)))
    return out


class Welford:
    """Running mean and variance of (K, *S) samples, without holding them all."""

    def __init__(self) -> None:
        self.n = 0
        self.mean: Optional[np.ndarray] = None
        self.m2: Optional[np.ndarray] = None

    def add(self, x: np.ndarray) -> None:
        x = x.astype(np.float64)
        self.n += 1
        if self.mean is None:
            self.mean, self.m2 = x.copy(), np.zeros_like(x)
            return
        delta = x - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (x - self.mean)

    def variance(self) -> np.ndarray:
        """Per-voxel total variance: the sum over channels of each channel's variance across the
        samples (0 when all augmentations and members agree; at most 0.5 for two channels)."""
        assert self.m2 is not None
        return (self.m2 / max(self.n, 1)).sum(0).astype(np.float32)


def entropy(probs: np.ndarray) -> np.ndarray:
    """Entropy of the mean probability vector per voxel, divided by log(K): 0 = certain,
    1 = uniform over the K channels."""
    p = np.clip(probs.astype(np.float64), 1e-12, 1.0)
    h = -(p * np.log(p)).sum(0)
    return (h / np.log(max(probs.shape[0], 2))).astype(np.float32)


UNCERTAINTY = ("variance", "entropy")
