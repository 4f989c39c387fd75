"""SIIM-ACR pneumothorax run-length masks, and Kaggle-style CSV files of them.

The challenge's masks are run-length encoded **column-major** (down the first column, then the
next: the image is transposed before flattening), as space-separated ``start length`` pairs,
with ``-1`` for an image without pneumothorax. Two flavours exist:

- ``relative`` (the challenge's ``train-rle.csv`` and its ``mask_functions.py``): each start is
  counted from the end of the previous run, 0-based;
- ``absolute`` (the stage-2 submission format and most Kaggle competitions): each start is the
  1-based position in the flattened image.

An image with several pneumothoraces has several rows in ``train-rle.csv``, one per region;
:func:`read_rle_csv` merges them into one mask (union). Masks are (rows, columns) arrays.
"""

from __future__ import annotations

import csv
from collections import OrderedDict
from pathlib import Path
from typing import Iterable, Literal

import numpy as np

from delineo.errors import InputError
from delineo.io.atomic import atomic_path

Flavour = Literal["relative", "absolute"]
EMPTY = "-1"


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """0-based starts and lengths of the foreground runs of ``mask`` flattened column-major."""
    flat = (np.asarray(mask).T.reshape(-1) > 0).astype(np.int8)
    edges = np.diff(np.concatenate([[0], flat, [0]]))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    return starts, ends - starts


def encode(mask: np.ndarray, flavour: Flavour = "relative") -> str:
    """Run-length string of a (rows, columns) mask; ``-1`` when it has no foreground."""
    starts, lengths = _runs(mask)
    if starts.size == 0:
        return EMPTY
    if flavour == "relative":
        previous_end = np.concatenate([[0], (starts + lengths)[:-1]])
        starts = starts - previous_end
    elif flavour == "absolute":
        starts = starts + 1
    else:
        raise ValueError(f"unknown run-length flavour '{flavour}' (relative or absolute)")
    return " ".join(f"{s} {n}" for s, n in zip(starts.tolist(), lengths.tolist()))


def decode(text: str, shape: tuple[int, int], flavour: Flavour = "relative", source: str = "run-length mask") -> np.ndarray:
    """(rows, columns) uint8 mask (0/1) of a run-length string; ``-1`` or empty gives zeros."""
    rows, cols = shape
    flat = np.zeros(rows * cols, dtype=np.uint8)
    text = (text or "").strip()
    if text in ("", EMPTY):
        return flat.reshape(cols, rows).T.copy()
    try:
        values = np.array([int(v) for v in text.split()], dtype=np.int64)
    except ValueError:
        raise InputError(f"{source}: run-length values must be integers, got '{text[:40]}'.") from None
    if values.size % 2:
        raise InputError(f"{source}: run-length string has an odd number of values ({values.size}).")
    starts, lengths = values[0::2], values[1::2]
    if flavour == "relative":
        position = 0
        absolute = np.empty_like(starts)
        for i, (s, n) in enumerate(zip(starts, lengths)):
            position += s
            absolute[i] = position
            position += n
        starts = absolute
    elif flavour == "absolute":
        starts = starts - 1
    else:
        raise ValueError(f"unknown run-length flavour '{flavour}' (relative or absolute)")
    if (lengths < 0).any() or (starts < 0).any() or (starts + lengths > flat.size).any():
        raise InputError(f"{source}: a run falls outside the {rows}x{cols} image.")
    for s, n in zip(starts, lengths):
        flat[s:s + n] = 1
    return flat.reshape(cols, rows).T.copy()


def read_rle_csv(path: str | Path, shape: tuple[int, int] = (1024, 1024),
                 flavour: Flavour = "relative") -> "OrderedDict[str, np.ndarray]":
    """ImageId -> mask from a SIIM-style CSV (``ImageId`` and ``EncodedPixels`` columns; the
    challenge file has a space after each comma, which is tolerated). Rows of one image are merged."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: run-length CSV not found.")
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh, skipinitialspace=True)
        fields = [f.strip() for f in (reader.fieldnames or [])]
        id_col = next((f for f in fields if f.lower() in ("imageid", "image_id")), None)
        rle_col = next((f for f in fields if f.lower() in ("encodedpixels", "encoded_pixels")), None)
        if id_col is None or rle_col is None:
            raise InputError(f"{path}: needs ImageId and EncodedPixels columns (found {', '.join(fields)}).")
        masks: "OrderedDict[str, np.ndarray]" = OrderedDict()
        for i, row in enumerate(reader):
            row = {k.strip(): v for k, v in row.items() if k is not None}
            image_id = (row.get(id_col) or "").strip()
            if not image_id:
                raise InputError(f"{path}: row {i + 2} has no ImageId.")
            mask = decode(row.get(rle_col) or "", shape, flavour, source=f"{path} row {i + 2}")
            masks[image_id] = mask if image_id not in masks else np.maximum(masks[image_id], mask)
    return masks


def write_rle_csv(path: str | Path, predictions: Iterable[tuple[str, np.ndarray]],
                  flavour: Flavour = "absolute", split_components: bool = False) -> Path:
    """A Kaggle-style submission: ``ImageId,EncodedPixels``, one row per image (``-1`` when
    empty), or one row per connected region when ``split_components`` (as ``train-rle.csv``)."""
    from scipy import ndimage

    path = Path(path)
    with atomic_path(path, suffix=".csv") as tmp:
        with open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["ImageId", "EncodedPixels"])
            for image_id, mask in predictions:
                mask = np.asarray(mask) > 0
                if split_components and mask.any():
                    regions, n = ndimage.label(mask)
                    for r in range(1, n + 1):
                        writer.writerow([image_id, encode(regions == r, flavour)])
                else:
                    writer.writerow([image_id, encode(mask, flavour)])
    return path
