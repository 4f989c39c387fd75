"""Post-processing chosen on validation data (the nnU-Net rule): per label, a probability
threshold and a sequence of connected-component steps, each kept only if it raises the mean
per-case Dice of that label on cross-validation predictions.

Steps (registry ``STEPS``, all per label, arrays in, arrays out):

- ``largest``: keep the largest connected component;
- ``min_size``: remove components under ``voxels`` voxels or ``ml`` millilitres;
- ``near_largest``: remove components farther than ``mm`` millimetres from the largest;
- ``fraction``: remove components smaller than ``fraction`` of the largest;
- ``fill_holes``: fill holes (background not connected to the border).
- ``per_slice``: in every slice the largest component and the others near it and not small
  relative to it (the liver recipe's per-slice rule).

``connectivity`` is 6, 18 or 26 (3D neighbours) or 4 or 8 (in-plane, slice by slice along
``slice_axis``, for 2D models). The search is greedy in the order of the candidates: a step
is tried on top of the steps kept so far and kept only if the mean per-case Dice rises by more
than ``min_gain``; the table records every trial. Dice with both masks empty is 1.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np
from scipy import ndimage

from delineo.errors import ConfigError

log = logging.getLogger(__name__)

CONNECTIVITY = {6: (3, 1), 18: (3, 2), 26: (3, 3), 4: (2, 1), 8: (2, 2)}


def structure(connectivity: int) -> np.ndarray:
    if connectivity not in CONNECTIVITY:
        raise ConfigError(f"connectivity {connectivity}: choose 6, 18 or 26 (3D) or 4 or 8 (2D, per slice).")
    rank, conn = CONNECTIVITY[connectivity]
    s = ndimage.generate_binary_structure(rank, conn)
    if rank == 2:  # in-plane only: a 3x3x3 structure whose neighbours lie in the middle slice
        s3 = np.zeros((3, 3, 3), bool)
        s3[:, :, 1] = s
        s = s3
    return s


def _orient(s: np.ndarray, slice_axis: int) -> np.ndarray:
    return np.moveaxis(s, 2, slice_axis)


def components(mask: np.ndarray, connectivity: int = 26, slice_axis: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """(component labels, sizes with sizes[0] = 0) of a binary 3D mask."""
    lab, _ = ndimage.label(mask, structure=_orient(structure(connectivity), slice_axis))
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab, sizes


Step = Callable[..., np.ndarray]
STEPS: dict[str, Step] = {}


def step(name: str) -> Callable[[Step], Step]:
    def deco(fn: Step) -> Step:
        STEPS[name] = fn
        return fn

    return deco


@step("largest")
def keep_largest(mask: np.ndarray, spacing: Sequence[float], connectivity: int = 26, slice_axis: int = 2) -> np.ndarray:
    lab, sizes = components(mask, connectivity, slice_axis)
    if sizes.size <= 2:
        return mask.astype(bool)
    return lab == int(sizes.argmax())


@step("min_size")
def remove_small(mask: np.ndarray, spacing: Sequence[float], voxels: int = 0, ml: float = 0.0,
                 connectivity: int = 26, slice_axis: int = 2) -> np.ndarray:
    lab, sizes = components(mask, connectivity, slice_axis)
    limit = max(float(voxels), float(ml) * 1000.0 / float(np.prod(spacing)))
    keep = sizes >= limit
    keep[0] = False
    return keep[lab]


@step("fraction")
def remove_fraction(mask: np.ndarray, spacing: Sequence[float], fraction: float = 0.1, connectivity: int = 26,
                    slice_axis: int = 2) -> np.ndarray:
    lab, sizes = components(mask, connectivity, slice_axis)
    if sizes.max(initial=0) == 0:
        return mask.astype(bool)
    keep = sizes >= fraction * sizes.max()
    keep[0] = False
    return keep[lab]


@step("near_largest")
def remove_far(mask: np.ndarray, spacing: Sequence[float], mm: float = 20.0, connectivity: int = 26,
               slice_axis: int = 2) -> np.ndarray:
    lab, sizes = components(mask, connectivity, slice_axis)
    if (sizes > 0).sum() <= 1:
        return mask.astype(bool)
    largest = lab == int(sizes.argmax())
    dist = ndimage.distance_transform_edt(~largest, sampling=spacing)
    nearest = ndimage.minimum(dist, lab, index=np.arange(len(sizes)))
    keep = np.asarray(nearest) <= mm
    keep[0] = False
    return keep[lab]


@step("per_slice")
def per_slice(mask: np.ndarray, spacing: Sequence[float], mm: float = 20.0, fraction: float = 0.1,
              connectivity: int = 8, slice_axis: int = 2) -> np.ndarray:
    """The liver clean-up of Christ et al. (2016), slice by slice: in every slice keep the largest
    in-plane component and the others that are both within ``mm`` millimetres of it and at least
    ``fraction`` of its area; far or small pieces go. Unlike ``largest`` with connectivity 8, which
    keeps one component of the whole volume, each slice keeps its own. ``connectivity`` is the
    in-plane one (4 or 8; a 3D value counts as its in-plane part: 6 -> 4, 18 and 26 -> 8)."""
    plane = {4: 1, 6: 1, 8: 2, 18: 2, 26: 2}.get(int(connectivity))
    if plane is None:
        raise ConfigError(f"per_slice: connectivity {connectivity}: choose 4 or 8.")
    struct = ndimage.generate_binary_structure(2, plane)
    in_plane = [s for i, s in enumerate(spacing) if i != slice_axis]
    src = np.moveaxis(mask.astype(bool), slice_axis, 0)
    out = np.zeros_like(src)
    for k in range(src.shape[0]):
        lab, n = ndimage.label(src[k], structure=struct)
        if n == 0:
            continue
        sizes = np.bincount(lab.ravel())
        sizes[0] = 0
        big = int(sizes.argmax())
        dist = ndimage.distance_transform_edt(lab != big, sampling=in_plane)
        nearest = np.asarray(ndimage.minimum(dist, lab, index=np.arange(n + 1)))
        keep = (nearest <= mm) & (sizes >= fraction * sizes[big])
        keep[0], keep[big] = False, True
        out[k] = keep[lab]
    return np.moveaxis(out, 0, slice_axis)


@step("fill_holes")
def fill_holes(mask: np.ndarray, spacing: Sequence[float], connectivity: int = 26, slice_axis: int = 2) -> np.ndarray:
    if CONNECTIVITY.get(connectivity, (3,))[0] == 2:  # in-plane: fill each slice (4-connected holes)
        out = np.moveaxis(mask.astype(bool).copy(), slice_axis, 0)
        for i in range(out.shape[0]):
            out[i] = ndimage.binary_fill_holes(out[i])
        return np.moveaxis(out, 0, slice_axis)
    # background connectivity is the complement of the foreground's: 26 -> 6 holes and vice versa
    return ndimage.binary_fill_holes(mask, structure=ndimage.generate_binary_structure(3, 1))


def apply_steps(mask: np.ndarray, steps: Sequence[dict[str, Any]], spacing: Sequence[float]) -> np.ndarray:
    """Apply ``[{"name": ..., params}, ...]`` in order to a binary mask."""
    out = mask.astype(bool)
    for spec in steps:
        fn = STEPS.get(spec["name"])
        if fn is None:
            raise ConfigError(f"post-processing step '{spec['name']}': unknown (one of {', '.join(STEPS)}).")
        out = fn(out, spacing, **{k: v for k, v in spec.items() if k != "name"})
    return out


def apply_label_steps(seg: np.ndarray, chosen: dict[int, list[dict[str, Any]]], spacing: Sequence[float]) -> np.ndarray:
    """Apply each label's chosen steps to its own mask of ``seg``; labels keep their value and a
    voxel filled by one label's step never overwrites another label."""
    if not any(chosen.values()):
        return seg
    out = seg.copy()
    for value, steps in chosen.items():
        if not steps:
            continue
        m = seg == int(value)
        new = apply_steps(m, steps, spacing)
        out[m & ~new] = 0
        out[new & (out == 0)] = int(value)
    return out


def dice(a: np.ndarray, b: np.ndarray) -> float:
    sa, sb = int(a.sum()), int(b.sum())
    if sa + sb == 0:
        return 1.0
    return 2.0 * int(np.logical_and(a, b).sum()) / (sa + sb)


DEFAULT_CANDIDATES: list[dict[str, Any]] = [
    {"name": "largest"},
    {"name": "min_size", "voxels": 20},
    {"name": "fraction", "fraction": 0.1},
    {"name": "near_largest", "mm": 20.0},
    {"name": "fill_holes"},
]


@dataclass
class SearchCase:
    """One cross-validation case: its label map (already thresholded), reference and spacing."""

    seg: np.ndarray
    reference: np.ndarray
    spacing: tuple[float, ...]


def search_steps(cases: Sequence[SearchCase], values: Sequence[int], candidates: Sequence[dict[str, Any]],
                 min_gain: float = 1e-4) -> tuple[dict[int, list[dict[str, Any]]], list[dict[str, Any]]]:
    """Greedy per-label search; returns (chosen steps per label value, table of every trial)."""
    chosen: dict[int, list[dict[str, Any]]] = {}
    table: list[dict[str, Any]] = []
    for v in values:
        masks = [c.seg == v for c in cases]
        refs = [c.reference == v for c in cases]
        current = masks
        base = float(np.mean([dice(m, r) for m, r in zip(current, refs)]))
        table.append({"label": int(v), "step": "none (arg-max or threshold)", "dice": base, "kept": True})
        kept: list[dict[str, Any]] = []
        for cand in candidates:
            trial = [apply_steps(m, [cand], c.spacing) for m, c in zip(current, cases)]
            score = float(np.mean([dice(m, r) for m, r in zip(trial, refs)]))
            keep = score > base + min_gain
            table.append({"label": int(v), "step": describe_step(cand), "dice": score, "kept": bool(keep)})
            if keep:
                kept.append(dict(cand))
                current, base = trial, score
        chosen[int(v)] = kept
    return chosen, table


def search_thresholds(probs: Sequence[np.ndarray], refs: Sequence[np.ndarray], values: Sequence[int],
                      candidates: Sequence[float], min_gain: float = 1e-4,
                      ) -> tuple[dict[int, float], list[dict[str, Any]]]:
    """Per label, the probability threshold with the best mean per-case Dice (kept only if it
    beats the arg-max by more than ``min_gain``); probs are (1 + L, *S) per case."""
    from delineo.infer.pipeline.stages import mask_from_probs

    out: dict[int, float] = {}
    table = []
    for v in values:
        def score(thr: Optional[float]) -> float:
            per = []
            for p, r in zip(probs, refs):
                seg = mask_from_probs(p, list(values), {int(v): thr} if thr is not None else None)
                per.append(dice(seg == v, r == v))
            return float(np.mean(per))

        base = score(None)
        table.append({"label": int(v), "threshold": "arg-max", "dice": base})
        best, best_t = base, None
        for t in candidates:
            s = score(float(t))
            table.append({"label": int(v), "threshold": float(t), "dice": s})
            if s > best + min_gain:
                best, best_t = s, float(t)
        if best_t is not None:
            out[int(v)] = best_t
    return out, table


def describe_step(spec: dict[str, Any]) -> str:
    params = ", ".join(f"{k}={v}" for k, v in spec.items() if k != "name")
    return f"{spec['name']}({params})" if params else spec["name"]
