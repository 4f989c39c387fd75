"""The one image type of Delineo: voxels plus the geometry that places them in the patient.

Geometry is sacred: every reader returns an :class:`Image` whose ``affine`` maps voxel indices
(i, j, k) to RAS+ world millimetres (the NIfTI convention), and every writer puts that exact
geometry back. Spacing, origin and direction are derived from the affine, never stored twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Flip from ITK/DICOM LPS world coordinates to NIfTI RAS world coordinates (its own inverse).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


@dataclass
class Image:
    """A 3D (or channel-first 4D) voxel array and the affine that maps voxel indices to RAS mm.

    ``array`` is indexed ``[i, j, k]`` (or ``[c, i, j, k]`` for several channels), in the order
    the voxels are stored in the file. ``modality`` is a free label ("CT", "MR", "PT", ...);
    ``meta`` carries source metadata (file path, DICOM identifiers) that writers may reuse.
    """

    array: np.ndarray
    affine: np.ndarray
    modality: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.affine.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got {self.affine.shape}")

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape[-3:])

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size in mm along i, j, k."""
        return np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))

    @property
    def origin(self) -> np.ndarray:
        """World (RAS mm) position of voxel (0, 0, 0)."""
        return self.affine[:3, 3].copy()

    @property
    def direction(self) -> np.ndarray:
        """Unit direction cosines of the i, j, k axes (columns) in RAS."""
        return self.affine[:3, :3] / self.spacing[None, :]

    def with_array(self, array: np.ndarray, **meta: Any) -> "Image":
        """A new image on the same grid (same affine) holding ``array``."""
        if tuple(array.shape[-3:]) != self.spatial_shape:
            raise ValueError(f"array shape {array.shape} does not fit grid {self.spatial_shape}")
        return Image(array, self.affine.copy(), self.modality, {**self.meta, **meta})

    def same_grid(self, other: "Image", atol: float = 1e-3) -> bool:
        """True when both images have the same voxel grid (shape and affine)."""
        return self.spatial_shape == other.spatial_shape and bool(
            np.allclose(self.affine, other.affine, atol=atol)
        )


def affine_from_itk(spacing, origin, direction) -> np.ndarray:
    """RAS affine from ITK-style (LPS) spacing, origin and 3x3 direction, for arrays indexed i, j, k."""
    direction = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = LPS_TO_RAS @ direction @ np.diag(np.asarray(spacing, dtype=np.float64))
    affine[:3, 3] = LPS_TO_RAS @ np.asarray(origin, dtype=np.float64)
    return affine


def itk_from_affine(affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ITK-style (LPS) spacing, origin and direction (3x3) from a RAS affine."""
    affine = np.asarray(affine, dtype=np.float64)
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    direction = LPS_TO_RAS @ affine[:3, :3] / spacing[None, :]
    origin = LPS_TO_RAS @ affine[:3, 3]
    return spacing, origin, direction
