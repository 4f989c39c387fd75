"""Preprocessing with exact inverses: reorient, resample, crop to the non-zero region,
normalise intensities. A :class:`GeometryRecord` remembers each step so that a prediction made
on the preprocessed grid goes back to the exact grid (shape and affine) of the input scan.

Reorientation and cropping are exactly invertible (permutations, flips, index ranges);
resampling is inverted by resampling probabilities back to the original shape, which is what
nnU-Net does too.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import nibabel.orientations as nio
import numpy as np
from scipy import ndimage

from delineo.config import IntensityConfig, PreprocessConfig
from delineo.errors import InputError
from delineo.io.image import Image


@dataclass
class GeometryRecord:
    """What :func:`restore` needs to map an array on the preprocessed grid back to the input."""

    original_shape: tuple[int, int, int]
    original_affine: list[list[float]]
    ornt_transform: Optional[list[list[float]]]  # nibabel orientation transform, or None
    resampled_from: tuple[int, int, int]  # shape after reorientation, before resampling
    resampled_to: tuple[int, int, int]  # shape after resampling, before cropping
    bbox: tuple[tuple[int, int], ...]  # crop (start, stop) per axis on the resampled grid
    spacing: tuple[float, float, float]  # spacing of the preprocessed grid (mm)
    slice_fit: Optional[dict] = None  # delineo.preprocess.slices.SliceFit as a dict, after the crop

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GeometryRecord":
        return cls(**{k: (tuple(tuple(x) for x in v) if k == "bbox" else v) for k, v in d.items()})


def check_case(images: list[Image], label: Optional[Image], name: str = "") -> None:
    """Channels and label must share one grid; raise a one-sentence InputError otherwise."""
    ref = images[0]
    for img in images[1:]:
        if not ref.same_grid(img):
            raise InputError(
                f"{img.meta.get('path', name)}: channel grid {img.spatial_shape} does not match "
                f"{ref.meta.get('path', name)} {ref.spatial_shape} (shape or affine differ)."
            )
    if label is not None and not ref.same_grid(label):
        what = "shape" if ref.spatial_shape != label.spatial_shape else "affine"
        raise InputError(
            f"{label.meta.get('path', name)}: label {what} does not match image "
            f"{ref.meta.get('path', name)} ({label.spatial_shape} vs {ref.spatial_shape})."
        )


def preprocess(images: list[Image], label: Optional[Image], cfg: PreprocessConfig,
               name: str = "") -> tuple[np.ndarray, Optional[np.ndarray], GeometryRecord]:
    """(image (C, *S) float32, label (*S) uint8 or None, record) on the preprocessed grid."""
    check_case(images, label, name)
    ref = images[0]
    shape0 = ref.spatial_shape
    affine = ref.affine
    arrays = [np.asarray(im.array, dtype=np.float32) for im in images]
    lab = None if label is None else np.asarray(label.array)
    transform = None
    if cfg.orientation:
        current = nio.io_orientation(affine)
        target = nio.axcodes2ornt(tuple(cfg.orientation))
        transform = nio.ornt_transform(current, target)
        if not np.array_equal(transform, [[0, 1], [1, 1], [2, 1]]):
            arrays = [nio.apply_orientation(a, transform) for a in arrays]
            lab = None if lab is None else nio.apply_orientation(lab, transform)
            affine = affine @ nio.inv_ornt_aff(transform, shape0)
        else:
            transform = None
    shape1 = arrays[0].shape
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(0))
    target_spacing = np.asarray(cfg.spacing, dtype=float) if cfg.spacing else spacing
    shape2 = tuple(int(max(1, round(s * sp / t))) for s, sp, t in zip(shape1, spacing, target_spacing))
    if shape2 != tuple(shape1):
        order = 3 if cfg.interpolation == "cubic" else 1
        arrays = [_resize(a, shape2, order) for a in arrays]
        lab = None if lab is None else _resize(lab, shape2, 0)
    real_spacing = tuple(float(sp * s1 / s2) for sp, s1, s2 in zip(spacing, shape1, shape2))
    stack = np.stack(arrays)
    if cfg.crop_foreground:
        bbox = nonzero_bbox(np.any(stack != 0, axis=0))
    else:
        bbox = tuple((0, s) for s in shape2)
    sl = tuple(slice(a, b) for a, b in bbox)
    stack = stack[(slice(None),) + sl]
    lab = None if lab is None else lab[sl]
    stack = normalise(stack, cfg.intensity)
    fit = None
    if cfg.slice_fit is not None:  # after normalisation: the padding is each slice's normalised minimum
        stack, lab, fit = _fit_slices(stack, lab, tuple(cfg.slice_fit.size), cfg.slice_fit.axis)
    record = GeometryRecord(tuple(int(s) for s in shape0), ref.affine.tolist(),
                            None if transform is None else transform.tolist(),
                            tuple(int(s) for s in shape1), tuple(int(s) for s in shape2),
                            tuple((int(a), int(b)) for a, b in bbox), real_spacing, fit)
    out_label = None if lab is None else np.ascontiguousarray(lab).astype(np.uint8)
    return np.ascontiguousarray(stack, dtype=np.float32), out_label, record


def restore(array: np.ndarray, record: GeometryRecord, is_label: bool = False, fill: float = 0.0,
            probabilities: bool = False) -> np.ndarray:
    """Map ``array`` ((K, *S) maps or probabilities, or (*S) labels, on the preprocessed grid)
    back to the input grid: un-crop, resample back, undo the reorientation. Outside the crop the
    value is ``fill``, except that ``probabilities`` puts probability 1 on background there."""
    channels = array.ndim == 4
    arr = array if channels else array[None]
    if record.slice_fit is not None:
        from delineo.preprocess.slices import SliceFit, restore_slices

        sf = SliceFit(record.slice_fit["axis"], tuple(record.slice_fit["original"]),
                      tuple(tuple(p) for p in record.slice_fit["pads"]), tuple(tuple(c) for c in record.slice_fit["crops"]))
        arr = np.stack([restore_slices(c, sf, 1.0 if probabilities and i == 0 and len(arr) > 1 else fill)
                        for i, c in enumerate(arr)])
    full = np.full((arr.shape[0],) + tuple(record.resampled_to), fill, dtype=arr.dtype)
    if probabilities and channels and arr.shape[0] > 1:
        full[0] = 1.0  # background probability outside the crop
    sl = tuple(slice(a, b) for a, b in record.bbox)
    full[(slice(None),) + sl] = arr
    if tuple(record.resampled_to) != tuple(record.resampled_from):
        full = np.stack([_resize(c, record.resampled_from, 0 if is_label else 1) for c in full])
    if record.ornt_transform is not None:
        inverse = nio.ornt_transform(_target_of(record), nio.io_orientation(np.asarray(record.original_affine)))
        full = np.stack([nio.apply_orientation(c, inverse) for c in full])
    out = full if channels else full[0]
    if tuple(out.shape[-3:]) != tuple(record.original_shape):
        raise RuntimeError(f"restore produced {out.shape}, expected {record.original_shape}")
    return np.ascontiguousarray(out)


def _target_of(record: GeometryRecord) -> np.ndarray:
    """The orientation (as nibabel ornt) of the reoriented grid."""
    start = nio.io_orientation(np.asarray(record.original_affine))
    transform = np.asarray(record.ornt_transform)
    # apply transform to the start orientation: axis i goes to transform[i, 0] with flip transform[i, 1]
    target = np.zeros_like(start)
    for i, (new_axis, flip) in enumerate(transform):
        target[int(new_axis)] = [start[i, 0], start[i, 1] * flip]
    return target


def preprocessed_affine(record: GeometryRecord) -> np.ndarray:
    """The affine of the preprocessed (cropped) grid, for writing intermediate volumes."""
    affine = np.asarray(record.original_affine)
    if record.ornt_transform is not None:
        affine = affine @ nio.inv_ornt_aff(np.asarray(record.ornt_transform), record.original_shape)
    scale = np.diag([f / t for f, t in zip(record.resampled_from, record.resampled_to)] + [1.0])
    affine = affine @ scale
    shift = np.eye(4)
    shift[:3, 3] = [a for a, _ in record.bbox]
    if record.slice_fit is not None:
        from delineo.preprocess.slices import SliceFit, fitted_shift

        sf = SliceFit(record.slice_fit["axis"], tuple(record.slice_fit["original"]),
                      tuple(tuple(p) for p in record.slice_fit["pads"]), tuple(tuple(c) for c in record.slice_fit["crops"]))
        shift[:3, 3] += fitted_shift(sf)
    return affine @ shift


def _fit_slices(stack: np.ndarray, lab: Optional[np.ndarray], size: tuple[int, int],
                axis: int) -> tuple[np.ndarray, Optional[np.ndarray], dict]:
    """Every channel's slices fitted to ``size`` (padding: that slice's minimum), the label with 0."""
    from dataclasses import asdict as _asdict

    from delineo.preprocess.slices import fit_slices

    fitted = [fit_slices(c, size, axis) for c in stack]
    out_lab = None if lab is None else fit_slices(lab, size, axis, pad_value=0)[0]
    return np.stack([f for f, _ in fitted]), out_lab, _asdict(fitted[0][1])


def _resize(a: np.ndarray, shape, order: int) -> np.ndarray:
    """Resample to ``shape`` with voxel centres aligned (corner-to-corner, as ITK does)."""
    if tuple(a.shape) == tuple(shape):
        return a
    if order == 0:
        # nearest: index arithmetic keeps label values exact and is much faster than zoom
        idx = [np.minimum(((np.arange(n) + 0.5) * a.shape[i] / n).astype(int), a.shape[i] - 1)
               for i, n in enumerate(shape)]
        return a[np.ix_(*idx)]
    coords = np.meshgrid(*[(np.arange(n) + 0.5) * a.shape[i] / n - 0.5 for i, n in enumerate(shape)],
                         indexing="ij", sparse=False)
    return ndimage.map_coordinates(a.astype(np.float32), coords, order=order, mode="nearest").astype(np.float32)


def nonzero_bbox(mask: np.ndarray) -> tuple[tuple[int, int], ...]:
    """Bounding box (start, stop) per axis of the non-zero voxels (whole array if none)."""
    if not mask.any():
        return tuple((0, s) for s in mask.shape)
    out = []
    for ax in range(mask.ndim):
        other = tuple(i for i in range(mask.ndim) if i != ax)
        nz = np.flatnonzero(mask.any(axis=other))
        out.append((int(nz[0]), int(nz[-1]) + 1))
    return tuple(out)


def normalise(stack: np.ndarray, presets: list[IntensityConfig]) -> np.ndarray:
    """Per-channel intensity presets; one preset applies to every channel."""
    if len(presets) not in (1, stack.shape[0]):
        raise InputError(f"preprocess.intensity has {len(presets)} presets for {stack.shape[0]} channels.")
    out = np.empty_like(stack, dtype=np.float32)
    for c in range(stack.shape[0]):
        preset = presets[c if len(presets) > 1 else 0]
        if preset.preset in ("window", "imagenet"):  # delineo.preprocess.intensity
            out[c] = _extra_intensity(stack[c], preset, c, stack.shape[0])
        else:
            out[c] = normalise_channel(stack[c], preset)
    return out


def _extra_intensity(x: np.ndarray, p: IntensityConfig, channel: int, n_channels: int) -> np.ndarray:
    from delineo.preprocess import intensity

    if p.preset == "window":
        return intensity.window(x, *(p.window or (-1000.0, 1000.0)))
    return intensity.imagenet(x, channel, n_channels, p.window[1] if p.window else None)


def normalise_channel(x: np.ndarray, p: IntensityConfig) -> np.ndarray:
    x = x.astype(np.float32, copy=False)
    if p.preset == "none":
        return x.copy()
    if p.preset == "ct":
        lo, hi = p.window or (-1000.0, 1000.0)
        return ((np.clip(x, lo, hi) - (lo + hi) / 2) / ((hi - lo) / 2)).astype(np.float32)
    if p.preset == "pet":
        hi = (p.window or (0.0, 20.0))[1]
        return (np.clip(x, 0, hi) / hi).astype(np.float32)
    if p.preset == "percentile":
        lo, hi = np.percentile(x, p.percentiles)
        x = np.clip(x, lo, hi)
    mask = x != 0 if p.foreground_only else None
    values = x[mask] if mask is not None and mask.any() else x
    mean, std = float(values.mean()), float(values.std())
    y = (x - mean) / max(std, 1e-6)
    if mask is not None:
        y[~mask] = 0.0
    return y.astype(np.float32)
