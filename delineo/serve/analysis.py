"""The structures and lesions table: connected components of a mask with volume and diameter.

Volume is voxel count x voxel volume (ml). The largest diameter is the longest distance between
two voxel centres of the component in world millimetres (found on the convex hull, so it is
exact and cheap even for large organs); a one-voxel lesion has diameter 0. The centre (world mm,
RAS) lets the viewer jump to the component.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from scipy import ndimage

from delineo.errors import InputError


def largest_diameter(points_mm: np.ndarray) -> float:
    """Longest distance between any two of ``points_mm`` (N, 3)."""
    from scipy.spatial import ConvexHull
    from scipy.spatial.distance import pdist

    pts = np.unique(points_mm, axis=0)
    if len(pts) < 2:
        return 0.0
    if len(pts) > 64:
        try:
            pts = pts[ConvexHull(pts).vertices]
        except Exception:  # flat (one slice) or degenerate: joggle, then fall back to a subsample
            try:
                pts = pts[ConvexHull(pts, qhull_options="QJ").vertices]
            except Exception:
                pts = pts[:: max(1, len(pts) // 2000)]
    return float(pdist(pts).max())


def _ranked(mask: np.ndarray, value: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(component labels, sizes, indices largest first) of ``value``'s voxels (26-connectivity).
    Ties keep the scan order (stable sort), so a rank means the same component every time:
    the table's row and the lesion an explanation is asked for are found by this one function."""
    lab, n = ndimage.label(np.asarray(mask) == value, structure=np.ones((3, 3, 3), dtype=bool))
    sizes = np.bincount(lab.ravel(), minlength=n + 1)[1:]
    return lab, sizes, np.argsort(-sizes, kind="stable")


def component_mask(mask: np.ndarray, value: int, rank: int) -> np.ndarray:
    """The voxels of component ``rank`` (1 = largest) of label ``value``: the lesion of one
    row of :func:`components`, as a boolean array (InputError when there is no such row)."""
    lab, sizes, order = _ranked(mask, int(value))
    if not 1 <= int(rank) <= sizes.size:
        raise InputError(f"label {value} has {sizes.size} connected component(s); there is no component {rank}.")
    return lab == order[int(rank) - 1] + 1


def components(mask: np.ndarray, affine: np.ndarray, labels: Mapping[int, str], min_voxels: int = 1,
               limit: int = 200) -> list[dict[str, Any]]:
    """One row per connected component (26-connectivity) of each label, largest first per label."""
    voxel_ml = float(abs(np.linalg.det(affine[:3, :3]))) / 1000.0
    rows: list[dict[str, Any]] = []
    present = np.flatnonzero(np.bincount(np.asarray(mask).ravel())) if np.asarray(mask).size else []
    for value in (int(v) for v in present if v != 0):  # bincount: np.unique would sort every voxel
        lab, sizes, order = _ranked(mask, value)
        if not sizes.size:
            continue
        slices = ndimage.find_objects(lab)
        for rank, idx in enumerate(order[:limit]):
            if sizes[idx] < min_voxels:
                continue
            sl = slices[idx]
            inside_box = lab[sl] == idx + 1
            offset = np.array([s.start for s in sl])
            local = np.argwhere(inside_box) + offset
            # the farthest pair of voxel centres are corners of the convex hull, and a voxel with all
            # six face neighbours in the component is their midpoint, never a corner: the diameter is
            # found among the surface voxels alone (a liver: ~5% of its voxels, so the hull is cheap)
            surface = np.argwhere(inside_box & ~ndimage.binary_erosion(inside_box)) + offset
            world = surface @ affine[:3, :3].T + affine[:3, 3]
            centre_vox = local.mean(axis=0)
            # jump to a voxel inside the component (the centroid of a C-shape may lie outside)
            inside = local[np.argmin(((local - centre_vox) ** 2).sum(axis=1))]
            rows.append({
                "label": value,
                "name": labels.get(value, f"label_{value}"),
                "component": rank + 1,
                "voxels": int(sizes[idx]),
                "volume_ml": round(float(sizes[idx]) * voxel_ml, 4),
                "diameter_mm": round(largest_diameter(world), 2),
                "centre_voxel": [int(v) for v in inside],
                "centre_mm": [round(float(v), 3) for v in (affine[:3, :3] @ inside + affine[:3, 3])],
            })
    return rows


def boundary(mask: np.ndarray) -> np.ndarray:
    """The mask's contour voxels: labelled voxels with a 6-neighbour of another value (the
    grid's edge counts as background). Shown instead of the filled mask in "contours only".
    Neighbours are compared through shifted views, without padded or rolled copies of the volume."""
    m = np.asarray(mask)
    edge = np.zeros(m.shape, dtype=bool)
    for axis in range(m.ndim):
        lo = tuple(slice(None, -1) if a == axis else slice(None) for a in range(m.ndim))
        hi = tuple(slice(1, None) if a == axis else slice(None) for a in range(m.ndim))
        differs = m[lo] != m[hi]
        edge[lo] |= differs
        edge[hi] |= differs
        for end in (0, -1):  # outside the grid is background
            edge[tuple(end if a == axis else slice(None) for a in range(m.ndim))] = True
    return np.where(edge & (m > 0), m, 0).astype(m.dtype)
