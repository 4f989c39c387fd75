"""NumPy ``.npy`` arrays as images (brain-tumour pipelines that store slices and volumes so).

An ``.npy`` file holds no geometry, so it reads with a unit-spacing identity affine and a
prediction written back as ``.npy`` has the input's exact shape. Layout: a 2D array is one
slice ``[i, j]``; 3D is a volume ``[i, j, k]``; 4D is channel-last ``[i, j, k, c]`` (as a 4D
NIfTI is). Files are read with ``allow_pickle=False``: an array file can never run code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from delineo.errors import InputError
from delineo.io.atomic import atomic_path
from delineo.io.image import Image


def read_npy(path: Path) -> Image:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise InputError(f"{path}: not a readable .npy array ({str(exc).splitlines()[0][:120]}).") from None
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "biuf":
        raise InputError(f"{path}: .npy array of type {getattr(array, 'dtype', type(array))}; numbers expected.")
    if array.ndim not in (2, 3, 4):
        raise InputError(f"{path}: {array.ndim}D array; 2D slices, 3D volumes or 4D channel-last volumes expected.")
    if array.dtype == np.float64:
        array = array.astype(np.float32)
    return Image(np.ascontiguousarray(array), np.eye(4), meta={"path": str(path), "npy_ndim": int(array.ndim)})


def write_npy(image: Image, path: Path) -> None:
    """The array as stored (a channel-first 4D image goes back to channel-last; an image read
    from a 2D ``.npy`` is written 2D again, so a prediction has its input's exact shape)."""
    array = np.asarray(image.array)
    if array.ndim == 4:
        array = np.moveaxis(array, 0, -1)
    elif array.ndim == 3 and array.shape[-1] == 1 and image.meta.get("npy_ndim") == 2:
        array = array[..., 0]
    with atomic_path(path, suffix=".npy") as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, np.ascontiguousarray(array), allow_pickle=False)
