"""Restrict an image to an organ, and map predictions made there back: the geometry of the
second (and later) stages of a region cascade (segment the liver, then look for lesions only
inside it).

The restriction works on the preprocessed grid (after reorientation, resampling and intensity
normalisation) and is one function shared by training (with the reference organ, through the
case cache) and inference (with the organ a previous stage predicted), so that a stage sees
the same kind of input in both:

1. crop to the organ's bounding box grown by a margin in mm (optionally made square, or cubic,
   over the network's input axes; a box larger than the image is padded);
2. set everything outside the organ to the organ's mean intensity or to a constant
   ("keep" leaves the surroundings visible);
3. optionally equalise contrast with CLAHE (scikit-image's, on the crop rescaled to [0, 1],
   then scaled back to the crop's own range so that the network sees familiar magnitudes);
4. optionally resize the crop to a fixed size.

:func:`unrestrict` is the inverse used at prediction: resize back to the box, put background
outside the organ (the output is kept inside it), and paste the box into an array of the full
grid. Cropping and pasting are exact (index ranges); a resize is undone by resampling back to
the exact box shape, as :func:`delineo.preprocess.pipeline.restore` undoes resampling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import numpy as np

from delineo.errors import ConfigError, InputError
from delineo.preprocess.pipeline import _resize

Box = tuple[tuple[int, int], ...]


@dataclass
class RegionRecord:
    """What :func:`unrestrict` needs: the full grid, the box cut from it and the output shape.

    ``box`` may reach outside ``[0, shape)`` (a square box around an organ at the image edge);
    that part was padded. ``organ`` is the organ mask on the box grid (not resized), used to
    keep predictions inside the organ; it is not serialised (the cache stores it as an array).
    """

    shape: tuple[int, ...]
    box: Box
    out_shape: tuple[int, ...]
    organ: Optional[np.ndarray] = field(default=None, repr=False)

    @property
    def box_shape(self) -> tuple[int, ...]:
        return tuple(b - a for a, b in self.box)

    def to_dict(self) -> dict:
        return {"shape": list(self.shape), "box": [list(b) for b in self.box], "out_shape": list(self.out_shape)}

    @classmethod
    def from_dict(cls, d: dict, organ: Optional[np.ndarray] = None) -> "RegionRecord":
        return cls(tuple(int(s) for s in d["shape"]), tuple((int(a), int(b)) for a, b in d["box"]),
                   tuple(int(s) for s in d["out_shape"]), organ)


def region_axes(mode: str, axis: int) -> tuple[int, ...]:
    """The axes a square box and a fixed size apply to: the network's input plane (2D / 2.5D,
    every axis but the slice axis) or all three axes (3D)."""
    return (0, 1, 2) if mode == "3d" else tuple(a for a in range(3) if a != axis)


def organ_box(organ: np.ndarray, spacing: Sequence[float], margin_mm: float = 0.0,
              square_axes: Sequence[int] = ()) -> Optional[Box]:
    """The organ's bounding box grown by ``margin_mm`` on each side (clipped to the image), or
    None for an empty organ. With ``square_axes`` the box gets the largest of its extents along
    those axes, centred on the organ and shifted inside the image when it fits (else padded)."""
    organ = np.asarray(organ, bool)
    if not organ.any():
        return None
    box = []
    for ax in range(organ.ndim):
        other = tuple(i for i in range(organ.ndim) if i != ax)
        nz = np.flatnonzero(organ.any(axis=other))
        grow = int(math.ceil(margin_mm / float(spacing[ax]) - 1e-9)) if margin_mm > 0 else 0
        box.append([max(0, int(nz[0]) - grow), min(organ.shape[ax], int(nz[-1]) + 1 + grow)])
    if square_axes:
        side = max(box[a][1] - box[a][0] for a in square_axes)
        for a in square_axes:
            start, stop = box[a]
            start -= (side - (stop - start)) // 2
            if side <= organ.shape[a]:
                start = min(max(start, 0), organ.shape[a] - side)
            box[a] = [start, start + side]
    return tuple((int(a), int(b)) for a, b in box)


def crop_box(array: np.ndarray, box: Box, fill: float = 0) -> np.ndarray:
    """``array[..., box]`` over the last ``len(box)`` axes; the part of the box outside the
    array is ``fill``."""
    nd = len(box)
    lead = array.shape[: array.ndim - nd]
    out = np.full(lead + tuple(b - a for a, b in box), fill, dtype=array.dtype)
    src, dst = _overlap(box, array.shape[-nd:])
    if src is not None:
        out[(Ellipsis,) + dst] = array[(Ellipsis,) + src]
    return out


def paste_box(values: np.ndarray, box: Box, shape: Sequence[int], fill: Union[float, np.ndarray] = 0) -> np.ndarray:
    """The inverse of :func:`crop_box`: an array of spatial ``shape`` (leading axes of
    ``values`` kept) holding ``values`` at ``box`` and ``fill`` elsewhere (a per-channel
    ``fill`` array broadcasts over the leading axis)."""
    nd = len(box)
    lead = values.shape[: values.ndim - nd]
    out = np.empty(lead + tuple(shape), dtype=values.dtype)
    fill_arr = np.asarray(fill, dtype=values.dtype)
    out[...] = fill_arr.reshape(fill_arr.shape + (1,) * nd) if fill_arr.ndim else fill_arr
    src, dst = _overlap(box, shape)
    if src is not None:
        out[(Ellipsis,) + src] = values[(Ellipsis,) + dst]
    return out


def _overlap(box: Box, shape: Sequence[int]):
    """(slices into the full grid, slices into the box array) of their common part."""
    src, dst = [], []
    for (a, b), n in zip(box, shape):
        lo, hi = max(a, 0), min(b, n)
        if hi <= lo:
            return None, None
        src.append(slice(lo, hi))
        dst.append(slice(lo - a, hi - a))
    return tuple(src), tuple(dst)


def _resized_shape(box_shape: Sequence[int], size: Optional[Sequence[int]], axes: Sequence[int]) -> tuple[int, ...]:
    out = list(box_shape)
    if size is not None:
        if len(size) != len(axes):
            raise ConfigError(f"preprocess.region.size has {len(size)} sizes for {len(axes)} input axes {tuple(axes)}.")
        for a, s in zip(axes, size):
            out[a] = int(s)
    return tuple(out)


def clahe(channel: np.ndarray, clip_limit: float) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation of one channel (any dimension),
    returned in the channel's own value range."""
    try:
        from skimage.exposure import equalize_adapthist
    except ImportError:  # an optional dependency: only region stages with CLAHE need it
        raise ConfigError("preprocess.region.clahe needs scikit-image: pip install 'delineo[region]'.") from None
    lo, hi = float(channel.min()), float(channel.max())
    if hi <= lo:
        return channel.astype(np.float32)
    unit = (channel.astype(np.float64) - lo) / (hi - lo)
    eq = equalize_adapthist(unit, clip_limit=clip_limit)
    return (eq * (hi - lo) + lo).astype(np.float32)


def restrict(image: np.ndarray, organ: np.ndarray, spacing: Sequence[float], margin_mm: float = 10.0,
             axes: Sequence[int] = (0, 1, 2), square: bool = False, size: Optional[Sequence[int]] = None,
             background: Union[str, float] = "mean", clahe_clip: Optional[float] = None,
             name: str = "") -> tuple[np.ndarray, RegionRecord]:
    """Restrict a preprocessed ``(C, *S)`` image to ``organ`` (``*S`` mask); see the module
    notes. Returns the restricted ``(C, *S')`` image and the record that maps back."""
    organ = np.asarray(organ, bool)
    if organ.shape != tuple(image.shape[1:]):
        raise InputError(f"{name or 'region'}: organ mask {organ.shape} does not match the image {image.shape[1:]}.")
    box = organ_box(organ, spacing, margin_mm, tuple(axes) if square else ())
    if box is None:
        raise InputError(f"{name or 'region'}: the organ mask is empty, so there is no region to restrict to.")
    organ_b = crop_box(organ, box, False)
    img = np.asarray(image, dtype=np.float32)
    # the padded part of a box reaching outside the image gets each channel's lowest value
    crop = crop_box(img, box, np.nan)
    for c in range(crop.shape[0]):
        ch = crop[c]
        inside = ch[organ_b]
        if background == "keep":
            ch[np.isnan(ch)] = np.nanmin(ch)
        else:
            value = float(inside.mean()) if background == "mean" else float(background)
            ch[~organ_b] = value
    if clahe_clip:
        crop = np.stack([clahe(c, clahe_clip) for c in crop])
    out_shape = _resized_shape(crop.shape[1:], size, axes)
    if out_shape != tuple(crop.shape[1:]):
        crop = np.stack([_resize(c, out_shape, 1) for c in crop])
    record = RegionRecord(tuple(int(s) for s in organ.shape), box, out_shape, organ_b)
    return np.ascontiguousarray(crop, dtype=np.float32), record


def restrict_label(label: np.ndarray, record: RegionRecord) -> np.ndarray:
    """A ``(*S)`` label map on the full grid cut and resized (nearest) like the image."""
    crop = crop_box(np.asarray(label), record.box, 0)
    return np.ascontiguousarray(_resize(crop, record.out_shape, 0))


def unrestrict(values: np.ndarray, record: RegionRecord, is_label: bool = False) -> np.ndarray:
    """Map an array made on the restricted grid back to the full grid: ``(K, *S')``
    probabilities (background 1 outside the organ for K > 1, 0 for one sigmoid output) or a
    ``(*S')`` label map (0 outside the organ)."""
    channels = values.ndim == len(record.shape) + 1 and not is_label
    arr = values if channels else values[None]
    if tuple(arr.shape[1:]) != tuple(record.out_shape):
        raise ValueError(f"unrestrict: got {arr.shape[1:]}, the region record expects {record.out_shape}")
    box_shape = record.box_shape
    if tuple(arr.shape[1:]) != box_shape:
        arr = np.stack([_resize(c, box_shape, 0 if is_label else 1) for c in arr])
    fill = np.zeros(arr.shape[0], dtype=arr.dtype)
    if channels and arr.shape[0] > 1:
        fill[0] = 1  # background probability
    arr = np.array(arr, copy=True)
    if record.organ is not None:
        outside = ~np.asarray(record.organ, bool)
        for c in range(arr.shape[0]):
            arr[c][outside] = fill[c]
    full = paste_box(arr, record.box, record.shape, fill)
    return full if channels else full[0]
