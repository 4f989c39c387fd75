"""Training-slice selection for 2D and 2.5D sampling: which slices of a training volume may be
drawn at all. Used by :class:`delineo.sampling.patches.PatchSampler` for training only;
validation, test and prediction always see every slice (they never go through a sampler).

Published white-matter-lesion and pneumothorax set-ups drop near-empty slices (air above the
head, blank padding) by image entropy before training: such slices teach the network nothing
but "background" and dilute the batches.

Filters (a registry, ``@SLICE_FILTERS.register(name)``), combined with ``all`` (every filter must
keep a slice) or ``any`` (one is enough):

* ``entropy``: Shannon entropy, in bits per pixel, of the slice's intensity histogram
  (``bins`` equal bins between the slice's own minimum and maximum, default 256) above
  ``entropy_threshold`` (default 2.0). A constant slice has entropy 0; a slice whose pixels are
  spread equally over 256 levels has 8. Because the bins follow the slice's own range, the
  value does not depend on linear intensity scaling (z-score, HU windows inside the range).
* ``foreground``: the slice holds at least one labelled voxel.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from delineo.errors import ConfigError

log = logging.getLogger(__name__)

FilterFn = Callable[[np.ndarray, np.ndarray, int, Any], np.ndarray]
SLICE_FILTERS: dict[str, FilterFn] = {}


def register(name: str) -> Callable[[FilterFn], FilterFn]:
    def deco(fn: FilterFn) -> FilterFn:
        SLICE_FILTERS[name] = fn
        return fn

    return deco


def slice_entropy(image: np.ndarray, bins: int = 256) -> float:
    """Shannon entropy (bits) of the ``bins``-bin histogram of a 2D slice over its own value range."""
    values = np.asarray(image, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return 0.0
    counts = np.histogram(values, bins=int(bins), range=(lo, hi))[0]
    p = counts[counts > 0] / values.size
    return float(-(p * np.log2(p)).sum())


def entropy_profile(volume: np.ndarray, axis: int = 2, bins: int = 256) -> np.ndarray:
    """Entropy of every slice of a 3D volume along ``axis`` (one value per slice)."""
    volume = np.asarray(volume)
    return np.array([slice_entropy(np.take(volume, k, axis=axis), bins) for k in range(volume.shape[axis])])


def foreground_profile(label: np.ndarray, axis: int = 2) -> np.ndarray:
    """True for every slice along ``axis`` that holds a labelled (non-zero) voxel."""
    label = np.asarray(label)
    other = tuple(i for i in range(label.ndim) if i != axis)
    return (label > 0).any(axis=other)


@register("entropy")
def _entropy(image: np.ndarray, label: np.ndarray, axis: int, cfg: Any) -> np.ndarray:
    channel = int(getattr(cfg, "channel", 0))
    if channel >= image.shape[0]:
        raise ConfigError(f"sampling.slice_filter.channel {channel}: the images have {image.shape[0]} channel(s).")
    return entropy_profile(image[channel], axis, cfg.bins) > cfg.entropy_threshold


@register("foreground")
def _foreground(image: np.ndarray, label: np.ndarray, axis: int, cfg: Any) -> np.ndarray:
    return foreground_profile(label, axis)


def select_slices(image: np.ndarray, label: np.ndarray, axis: int, cfg: Any) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(kept slices, {filter name: slices it keeps}) of one case; ``image`` is (C, *S), ``label`` (*S)."""
    masks = {}
    for name in cfg.filters:
        if name not in SLICE_FILTERS:
            raise ConfigError(f"sampling.slice_filter: unknown filter '{name}'; valid: {', '.join(SLICE_FILTERS)}.")
        masks[name] = np.asarray(SLICE_FILTERS[name](image, label, axis, cfg), dtype=bool)
    stacked = np.stack(list(masks.values()))
    kept = stacked.all(axis=0) if cfg.combine == "all" else stacked.any(axis=0)
    return kept, masks


@dataclass
class SliceSelection:
    """The slices each training case may contribute, and how many each filter kept."""

    allowed: dict[str, np.ndarray]  # case id -> sorted kept slice indices
    fg_coords: dict[str, dict[int, np.ndarray]]  # case id -> label -> foreground coords on kept slices
    counts: dict[str, Any] = field(default_factory=dict)

    def centre(self, case_id: str, shape: Sequence[int], axis: int, rng: np.random.Generator) -> np.ndarray:
        """A random voxel on a kept slice."""
        allowed = self.allowed[case_id]
        centre = np.array([int(rng.integers(s)) for s in shape])
        centre[axis] = int(allowed[int(rng.integers(len(allowed)))])
        return centre


def build_selection(cases: Sequence[Any], axis: int, cfg: Any) -> SliceSelection:
    """Apply the filters to every training case (``CachedCase``-like: ``case_id``, ``image``,
    ``label``, ``fg_coords``) and log how many slices each filter kept."""
    allowed: dict[str, np.ndarray] = {}
    fg: dict[str, dict[int, np.ndarray]] = {}
    total, kept_total = 0, 0
    per_filter = {name: 0 for name in cfg.filters}
    for case in cases:
        label = np.asarray(case.label) if case.label is not None else np.zeros(case.image.shape[1:], np.uint8)
        kept, masks = select_slices(np.asarray(case.image), label, axis, cfg)
        total += kept.size
        kept_total += int(kept.sum())
        for name, mask in masks.items():
            per_filter[name] += int(mask.sum())
        allowed[case.case_id] = np.flatnonzero(kept)
        fg[case.case_id] = {v: c[kept[c[:, axis]]] for v, c in (case.fg_coords or {}).items() if len(c)}
    counts = {"filters": list(cfg.filters), "combine": cfg.combine, "total": total,
              "kept": {**per_filter, "combined": kept_total},
              "entropy_threshold": cfg.entropy_threshold, "bins": cfg.bins,
              "cases_without_slices": sorted(cid for cid, a in allowed.items() if not len(a))}
    log.info("training-slice filter (%s, %s): %s of %d slices kept (%s)", "+".join(cfg.filters), cfg.combine,
             kept_total, total, ", ".join(f"{n} {k}" for n, k in per_filter.items()))
    return SliceSelection(allowed, fg, counts)
