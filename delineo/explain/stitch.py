"""Whole volumes from patch- or slice-wise computations.

Networks are trained on patches (3D) or slices (2D / 2.5D); a whole scan is processed the same
way. :func:`stitch_patches` slides a window over the volume and blends overlapping results with
a Gaussian importance map, so patch borders (where the network sees little context) weigh
less than patch centres and no seams appear. The same :func:`gaussian_importance` is meant to
be shared with sliding-window prediction so that maps and predictions are blended alike.

:func:`slice_by_slice` runs a 2D computation on every slice along one axis; for 2.5D models the
``context`` neighbouring slices on each side are stacked as channels, channel-major
(``channel = c * (2 * context + 1) + offset + context``), edges replicated: the order of
:func:`delineo.sampling.patches.slab`, used by 2.5D training and prediction.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from delineo.errors import DelineoError
from delineo.infer.sliding import gaussian_importance, window_starts  # the same windows and weights as predict

__all__ = ["gaussian_importance", "window_starts", "stitch_patches", "stack_neighbours", "slice_by_slice"]


def _patch_tuple(patch_size: int | Sequence[int], n: int) -> tuple[int, ...]:
    patch = (int(patch_size),) * n if isinstance(patch_size, int) else tuple(int(p) for p in patch_size)
    if len(patch) != n or min(patch) < 1:
        raise DelineoError(f"patch size {patch_size} does not fit a {n}D volume.")
    return patch


def _pad_to(t: torch.Tensor, spatial: Sequence[int], value: float) -> torch.Tensor:
    pads: list[int] = []
    for have, want in zip(reversed(t.shape[1:]), reversed(tuple(spatial))):
        pads += [0, max(0, want - have)]
    return F.pad(t, pads, value=value) if any(pads) else t


def stitch_patches(fn: Callable[..., torch.Tensor], volume: torch.Tensor, patch_size: int | Sequence[int],
                   overlap: float = 0.5, *, extras: Sequence[torch.Tensor] = (), sigma_scale: float = 0.125,
                   pad_value: float = 0.0) -> torch.Tensor:
    """Apply ``fn`` (``(C, *P) -> (C_out, *P)``) patch by patch and blend into ``(C_out, *S)``.

    ``volume`` is ``(C, *S)``. Axes shorter than the patch are padded with ``pad_value`` (and
    cropped back). ``extras`` are further ``(C_e, *S)`` tensors (e.g. a reference mask) cut the
    same way and passed to ``fn`` as additional arguments.
    """
    if not 0 <= overlap < 1:
        raise DelineoError(f"overlap must be in [0, 1), got {overlap}.")
    spatial = tuple(volume.shape[1:])
    patch = _patch_tuple(patch_size, len(spatial))
    padded = tuple(max(s, p) for s, p in zip(spatial, patch))
    vol = _pad_to(volume, padded, pad_value)
    extra = [_pad_to(e, padded, 0.0) for e in extras]
    weight = gaussian_importance(patch, sigma_scale).to(vol.device)
    grids = torch.meshgrid(*[torch.tensor(window_starts(s, p, overlap)) for s, p in zip(padded, patch)],
                           indexing="ij")
    out = norm = None
    for start in torch.stack([g.reshape(-1) for g in grids], 1).tolist():
        window = (slice(None),) + tuple(slice(s, s + p) for s, p in zip(start, patch))
        result = fn(vol[window], *[e[window] for e in extra])
        if tuple(result.shape[1:]) != patch:
            raise DelineoError(f"the patch function returned shape {tuple(result.shape)} for a patch {patch}.")
        if out is None:
            out = torch.zeros((result.shape[0],) + padded, dtype=torch.float32, device=vol.device)
            norm = torch.zeros(padded, dtype=torch.float32, device=vol.device)
        out[window] += result.detach().float() * weight
        norm[window[1:]] += weight
    out = out / norm
    return out[(slice(None),) + tuple(slice(0, s) for s in spatial)]


def stack_neighbours(volume: torch.Tensor, axis: int, index: int, context: int = 0) -> torch.Tensor:
    """2D input for slice ``index`` along spatial ``axis`` of ``volume`` (``(C, *S)``):
    ``(C * (2 * context + 1), *S without axis)``, channel-major, edge slices replicated."""
    n = volume.shape[axis + 1]
    picks = torch.tensor([min(max(index + d, 0), n - 1) for d in range(-context, context + 1)], device=volume.device)
    taken = volume.index_select(axis + 1, picks).movedim(axis + 1, 1)  # (C, k, *plane)
    return taken.reshape((-1,) + tuple(taken.shape[2:]))


def slice_by_slice(fn: Callable[..., torch.Tensor], volume: torch.Tensor, axis: int = 2, context: int = 0,
                   *, extras: Sequence[torch.Tensor] = ()) -> torch.Tensor:
    """Apply a 2D ``fn`` to every slice along spatial ``axis`` of ``volume`` (``(C, X, Y, Z)``)
    and stack the ``(C_out, H, W)`` results back into ``(C_out, X, Y, Z)``.

    ``fn`` gets the :func:`stack_neighbours` input (``context`` slices each side as channels)
    and the matching single slices of ``extras``.
    """
    if volume.dim() != 4:
        raise DelineoError(f"slice-wise processing needs a (C, X, Y, Z) volume, got shape {tuple(volume.shape)}.")
    if axis not in (0, 1, 2):
        raise DelineoError(f"slice axis must be 0, 1 or 2, got {axis}.")
    slices = []
    for i in range(volume.shape[axis + 1]):
        result = fn(stack_neighbours(volume, axis, i, context), *[e.select(axis + 1, i) for e in extras])
        slices.append(result.detach().float())
    return torch.stack(slices, axis + 1)
