"""Tumour burden and the agreement of networks' errors (the liver recipe's analyses).

- :func:`burden_ml`: the volume of a label in millilitres, voxel count x voxel volume (mm^3)
  / 1000, and the *tumour burden* as the tumour's share of the liver volume.
- :func:`error_overlap_matrix`: for N networks predicting the same cases, the N x N matrix of
  Dice coefficients between their **error** masks (prediction XOR reference). A high entry means
  two networks miss and over-segment the same voxels, so combining them gains little; the
  diagonal is 1 (0 errors on both sides counts as agreement, Dice 1, by the empty-mask rule).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from delineo.io.image import Image


def voxel_ml(image: Image) -> float:
    """Volume of one voxel in millilitres (spacing from the image's affine)."""
    return float(abs(np.linalg.det(image.affine[:3, :3]))) / 1000.0


def burden_ml(mask: Image, label: int = 1) -> float:
    """Volume of ``label`` in ``mask``, in ml."""
    return float(np.count_nonzero(np.asarray(mask.array) == label)) * voxel_ml(mask)


def tumour_burden(mask: Image, liver: int = 1, tumour: int = 2) -> dict[str, float]:
    """Liver and tumour volumes (ml) and the tumour's share of the whole liver (tumour counts as
    liver tissue, as in LiTS, where tumour voxels are labelled inside the liver)."""
    tumour_ml = burden_ml(mask, tumour)
    liver_ml = burden_ml(mask, liver) + tumour_ml
    return {"liver_ml": liver_ml, "tumour_ml": tumour_ml,
            "tumour_burden": tumour_ml / liver_ml if liver_ml > 0 else float("nan")}


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def error_overlap_matrix(predictions: Sequence[Sequence[np.ndarray]], references: Sequence[np.ndarray],
                         label: int = 1) -> np.ndarray:
    """(N, N) Dice between the networks' error masks, errors pooled over all cases.

    ``predictions[n][c]`` is network n's label map of case c; ``references[c]`` the reference.
    """
    n = len(predictions)
    if any(len(p) != len(references) for p in predictions):
        raise ValueError("every network needs one prediction per reference case")
    errors = [np.concatenate([((np.asarray(p) == label) ^ (np.asarray(r) == label)).ravel()
                              for p, r in zip(preds, references)]) for preds in predictions]
    out = np.eye(n)
    for i in range(n):
        for j in range(i + 1, n):
            out[i, j] = out[j, i] = _dice(errors[i], errors[j])
    return out
