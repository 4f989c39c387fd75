"""Whole-volume prediction: sliding windows with Gaussian blending for 3D models, batched
slice-wise prediction for 2D and 2.5D models, and flip test-time augmentation.

Written here rather than calling MONAI's ``sliding_window_inference`` so that the explain stage
can stitch attribution maps with exactly the same windows and weights (``gaussian_importance``
and ``window_starts`` are public), and to keep MONAI's import time out of ``delineo predict``.
"""

from __future__ import annotations

import itertools
from functools import lru_cache
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from delineo.sampling.patches import round_up


@lru_cache(maxsize=8)
def _gaussian(patch_size: tuple[int, ...], sigma_scale: float) -> torch.Tensor:
    grids = torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in patch_size], indexing="ij")
    g = torch.ones(patch_size)
    for grid, n in zip(grids, patch_size):
        sigma = max(n * sigma_scale, 1e-3)
        g = g * torch.exp(-0.5 * ((grid - (n - 1) / 2) / sigma) ** 2)
    g = g / g.max()
    return g.clamp_min(1e-3)  # never zero: edge voxels of a lone window still count


def gaussian_importance(patch_size: Sequence[int], sigma_scale: float = 0.125) -> torch.Tensor:
    """nnU-Net's blending weights: a Gaussian centred on the patch, sigma = size * scale."""
    return _gaussian(tuple(int(p) for p in patch_size), float(sigma_scale))


def window_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Evenly spaced window starts covering ``size`` with at least ``overlap`` between windows."""
    if size <= patch:
        return [0]
    step = max(1, int(patch * (1 - overlap)))
    n = int(np.ceil((size - patch) / step)) + 1
    return [int(round(x)) for x in np.linspace(0, size - patch, n)]


def pad_to(x: torch.Tensor, size: Sequence[int]) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Zero-pad the spatial axes of (B, C, *S) to at least ``size`` (centred); return the crop back."""
    spatial = x.shape[2:]
    pads, crop = [], []
    for s, t in zip(spatial, size):
        total = max(0, t - s)
        crop.append(slice(total // 2, total // 2 + s))
        pads.append((total // 2, total - total // 2))
    flat = [p for pair in reversed(pads) for p in pair]
    return (F.pad(x, flat) if any(flat) else x), tuple(crop)


def sliding_window(fn: Callable[[torch.Tensor], torch.Tensor], volume: torch.Tensor, patch_size: Sequence[int],
                   overlap: float = 0.5, batch_size: int = 4, divisor: int = 1,
                   progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """Apply ``fn`` ((B, C, *P) -> (B, K, *P)) over ``volume`` (C, *S) with Gaussian blending.

    Returns (K, *S). Windows never exceed the (padded) volume; a volume smaller than the patch
    is padded up to a multiple of ``divisor`` and predicted in one window.
    """
    x = volume[None]
    patch = [min(p, round_up(s, divisor)) for p, s in zip(patch_size, x.shape[2:])]
    x, crop = pad_to(x, patch)
    spatial = x.shape[2:]
    weight = gaussian_importance(patch).to(volume.device)
    starts = list(itertools.product(*[window_starts(s, p, overlap) for s, p in zip(spatial, patch)]))
    out = None
    norm = torch.zeros(spatial, device=volume.device)
    for i in range(0, len(starts), batch_size):
        chunk = starts[i : i + batch_size]
        batch = torch.cat([x[(slice(None), slice(None)) + tuple(slice(s, s + p) for s, p in zip(st, patch))]
                           for st in chunk])
        pred = fn(batch)
        if out is None:
            out = torch.zeros((pred.shape[1],) + tuple(spatial), device=volume.device, dtype=pred.dtype)
        for st, p in zip(chunk, pred):
            sl = tuple(slice(s, s + q) for s, q in zip(st, patch))
            out[(slice(None),) + sl] += p * weight
            norm[sl] += weight
        if progress:
            progress(len(chunk))
    out = out / norm
    return out[(slice(None),) + crop]


def slice_wise(fn: Callable[[torch.Tensor], torch.Tensor], volume: torch.Tensor, axis: int, context: int = 0,
               batch_size: int = 32, divisor: int = 1) -> torch.Tensor:
    """Apply a 2D ``fn`` slice by slice along ``axis`` of (C, *S); 2.5D when ``context`` > 0
    (k = 2*context+1 neighbouring slices of every channel as channels, edges replicated)."""
    c = volume.shape[0]
    n = volume.shape[1 + axis]
    moved = volume.movedim(1 + axis, 1)  # (C, N, H, W)
    plane = moved.shape[2:]
    target = [round_up(s, divisor) for s in plane]
    outs = []
    for i in range(0, n, batch_size):
        idx = torch.arange(i, min(i + batch_size, n))
        if context > 0:
            offs = torch.arange(-context, context + 1)
            nb = (idx[:, None] + offs[None, :]).clamp(0, n - 1)  # (b, k)
            batch = moved[:, nb]  # (C, b, k, H, W)
            batch = batch.permute(1, 0, 2, 3, 4).reshape(len(idx), c * len(offs), *plane)
        else:
            batch = moved[:, idx].permute(1, 0, 2, 3)
        padded, crop = pad_to(batch, target)
        outs.append(fn(padded)[(slice(None), slice(None)) + crop])
    out = torch.cat(outs)  # (N, K, H, W)
    return out.permute(1, 0, 2, 3).movedim(1, 1 + axis)


def flip_tta(fn: Callable[[torch.Tensor], torch.Tensor], axes: Sequence[int]) -> Callable[[torch.Tensor], torch.Tensor]:
    """Average ``fn`` over every mirroring of the given spatial ``axes`` (2**len(axes) passes).

    Only axes the network was trained to be mirror-invariant on may be used: a mirrored input
    the network never saw (e.g. anterior/posterior swapped) gives confidently wrong labels."""
    dims = sorted({int(a) + 2 for a in axes})

    def wrapped(x: torch.Tensor) -> torch.Tensor:
        total = None
        combos = [c for r in range(len(dims) + 1) for c in itertools.combinations(dims, r)]
        for axes in combos:
            xi = torch.flip(x, axes) if axes else x
            yi = fn(xi)
            yi = torch.flip(yi, axes) if axes else yi
            total = yi if total is None else total + yi
        return total / len(combos)

    return wrapped


# ---------------------------------------------------------------- memory-capped prediction
#: bytes per voxel of one output channel that the network needs for a window beyond its output,
#: a rough figure measured on the U-Nets here (full-resolution blocks, softmax, blending); it
#: only decides the window batch size under a tight cap.
NETWORK_BYTES_PER_OUTPUT_VOXEL = 48
_PLANES = 4  # finished planes turned into labels at once


def capped_plan(n_out: int, channels: int, spatial: Sequence[int], patch: Sequence[int], batch_size: int,
                max_bytes: int, axis: int) -> tuple[torch.dtype, int, int]:
    """(accumulator dtype, window batch size, estimated peak bytes) for a slab-wise prediction.

    The slab spans one patch along ``axis`` and the whole volume across it; the fixed costs are
    the input volume (float32) and the uint8 label map. float32 accumulators when they fit, else
    float16 (probabilities and Gaussian weights are <= 1, so a few windows' sums keep ~3 digits,
    changing only near-tied labels); the window batch shrinks until the network's share fits.
    """
    vox = int(np.prod(spatial))
    slab = int(np.prod([p if i == axis else s for i, (s, p) in enumerate(zip(spatial, patch))]))
    fixed = 2 * channels * vox * 4 + vox  # the input (float32, as read and as a tensor) + labels uint8
    per_window = int(np.prod(patch)) * (n_out + channels) * NETWORK_BYTES_PER_OUTPUT_VOXEL // 4
    for dtype, size in ((torch.float32, 4), (torch.float16, 2)):
        acc = slab * (n_out + 1) * size
        for b in range(batch_size, 0, -1):
            total = fixed + acc + b * per_window
            if total <= max_bytes:
                return dtype, b, total
    return torch.float16, 1, fixed + slab * (n_out + 1) * 2 + per_window


def sliding_window_labels(fn: Callable[[torch.Tensor], torch.Tensor], volume: torch.Tensor,
                          patch_size: Sequence[int], to_labels: Callable[[torch.Tensor], torch.Tensor],
                          overlap: float = 0.5, batch_size: int = 4, divisor: int = 1,
                          max_bytes: int | None = None, n_out: int | None = None,
                          progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """Labels (uint8, *S) of :func:`sliding_window`, holding probabilities for one slab only.

    Windows are taken in order of their start along the longest axis; once every window starting
    at or before a plane is added, the planes before the next start are final, so they are
    normalised, turned into labels by ``to_labels`` ((K, *slab) probabilities -> (*slab) labels)
    and dropped. The accumulator therefore spans one patch along that axis instead of the whole
    volume: memory grows with the cross-section, not the length. The sums per voxel are the same
    windows with the same weights as the unbounded path, so labels agree up to float rounding
    (ties) and, with float16 accumulators under a tight ``max_bytes``, near-ties.
    """
    x = volume[None]
    patch = [min(p, round_up(s, divisor)) for p, s in zip(patch_size, x.shape[2:])]
    x, crop = pad_to(x, patch)
    spatial = tuple(x.shape[2:])
    axis = int(np.argmax(spatial))
    acc_dtype = torch.float32
    if max_bytes is not None and n_out is not None:
        acc_dtype, batch_size, _ = capped_plan(n_out, x.shape[1], spatial, patch, batch_size, max_bytes, axis)
    weight = gaussian_importance(patch).to(volume.device)
    per_axis = [window_starts(s, p, overlap) for s, p in zip(spatial, patch)]
    others = [i for i in range(len(spatial)) if i != axis]
    cross = list(itertools.product(*[per_axis[i] for i in others]))
    pa = patch[axis]
    slab_shape = tuple(pa if i == axis else s for i, s in enumerate(spatial))
    labels = torch.zeros(spatial, dtype=torch.uint8, device=volume.device)
    buf = None
    norm = torch.zeros(slab_shape, device=volume.device, dtype=acc_dtype)
    along = per_axis[axis]

    def put(lo: int, hi: int) -> tuple:  # [lo, hi) on the slab axis, everything across it
        return tuple(slice(lo, hi) if i == axis else slice(None) for i in range(len(spatial)))

    for j, s in enumerate(along):
        starts = [tuple(s if i == axis else c[others.index(i)] for i in range(len(spatial))) for c in cross]
        for b in range(0, len(starts), batch_size):
            chunk = starts[b : b + batch_size]
            batch = torch.cat([x[(slice(None), slice(None)) + tuple(slice(t, t + p) for t, p in zip(st, patch))]
                               for st in chunk])
            pred = fn(batch)
            if buf is None:
                buf = torch.zeros((pred.shape[1],) + slab_shape, device=volume.device, dtype=acc_dtype)
            for st, p in zip(chunk, pred):
                sl = tuple(slice(t - s, t - s + q) if i == axis else slice(t, t + q)
                           for i, (t, q) in enumerate(zip(st, patch)))
                buf[(slice(None),) + sl] += (p * weight).to(acc_dtype)
                norm[sl] += weight.to(acc_dtype)
            if progress:
                progress(len(chunk))
        nxt = along[j + 1] if j + 1 < len(along) else spatial[axis]
        done = nxt - s  # planes [s, nxt) are final: labels, a few planes at a time (small temporaries)
        for lo in range(0, done, _PLANES):
            hi = min(done, lo + _PLANES)
            probs = buf[(slice(None),) + put(lo, hi)].float() / norm[put(lo, hi)].float()
            labels[put(s + lo, s + hi)] = to_labels(probs).to(torch.uint8)
        if j + 1 < len(along):  # shift the unfinished planes to the front, plane by plane (no copy of the slab)
            for k in range(pa - done):
                buf[(slice(None),) + put(k, k + 1)] = buf[(slice(None),) + put(done + k, done + k + 1)]
                norm[put(k, k + 1)] = norm[put(done + k, done + k + 1)]
            buf[(slice(None),) + put(pa - done, pa)] = 0
            norm[put(pa - done, pa)] = 0
    return labels[crop]


def slice_wise_labels(fn: Callable[[torch.Tensor], torch.Tensor], volume: torch.Tensor, axis: int,
                      to_labels: Callable[[torch.Tensor], torch.Tensor], context: int = 0, batch_size: int = 32,
                      divisor: int = 1) -> torch.Tensor:
    """Labels (uint8, *S) of :func:`slice_wise`, turning every batch of slices into labels at once
    so that probabilities for the whole volume never exist."""
    n = volume.shape[1 + axis]
    outs = []
    for i in range(0, n, batch_size):
        part = volume.narrow(1 + axis, max(0, i - context), min(n, i + batch_size + context) - max(0, i - context))
        probs = slice_wise(fn, part, axis, context, batch_size=batch_size + 2 * context, divisor=divisor)
        lo = i - max(0, i - context)
        probs = probs.narrow(1 + axis, lo, min(batch_size, n - i))
        outs.append(to_labels(probs).to(torch.uint8))
    return torch.cat(outs, dim=axis)
