"""Writing explanations: NIfTI maps on the input's exact grid, and PNG panels for reading.

Maps are written with the input :class:`~delineo.io.image.Image`'s affine so they overlay the
scan in any viewer. Panels use matplotlib's Agg canvas directly (no global backend switch, no
display needed): per chosen slice the image, the image with predicted (red) and reference
(green) contours, and the map over the image with a colour bar. Without chosen slices, the
slices where the structure is largest are shown, because that is where a reader looks first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from delineo.errors import DelineoError
from delineo.io.atomic import atomic_path
from delineo.io.files import write_image
from delineo.io.image import Image


def save_map_nifti(attribution: np.ndarray, image: Image, path: str | Path) -> Path:
    """Write ``attribution`` (``(*S)`` or ``(C, *S)``, ``S`` the image's spatial shape) as float32
    NIfTI with ``image``'s affine. A channel axis becomes the 4th NIfTI dimension."""
    array = np.asarray(attribution, dtype=np.float32)
    if array.ndim not in (3, 4) or tuple(array.shape[-3:]) != image.spatial_shape:
        raise DelineoError(f"map of shape {array.shape} does not fit the image grid {image.spatial_shape}.")
    meta = {k: v for k, v in image.meta.items() if k != "nifti_header"}  # no stale scaling/intent
    return write_image(Image(array, image.affine.copy(), image.modality, meta), path)


def choose_slices(mask: np.ndarray, axis: int = 2, count: int = 3) -> list[int]:
    """The ``count`` slices along ``axis`` where ``mask`` has most voxels (ascending order); the
    middle slice when the mask is empty."""
    mask = np.asarray(mask)
    if not np.any(mask > 0):
        return [mask.shape[axis] // 2]
    other = tuple(a for a in range(mask.ndim) if a != axis)
    area = (np.asarray(mask) > 0).sum(axis=other)
    best = [int(i) for i in np.argsort(-area, kind="stable")[:count] if area[i] > 0]
    return sorted(best)


def _slice(volume: np.ndarray | None, axis: int, index: int) -> np.ndarray | None:
    return None if volume is None else np.take(np.asarray(volume), index, axis=axis).T


def save_panels(path: str | Path, image: np.ndarray, attribution: np.ndarray,
                prediction: np.ndarray | None = None, reference: np.ndarray | None = None,
                slices: Sequence[int] | None = None, axis: int = 2, count: int = 3, channel: int = 0,
                title: str = "", alpha: float = 0.5) -> Path:
    """PNG with one row per slice: image | contours | map over image (+ colour bar).

    ``image`` and ``attribution`` are ``(*S)`` or ``(C, *S)`` (channel ``channel`` is shown; a
    map with a different channel count shows its own channel ``min(channel, C - 1)``).
    ``prediction`` / ``reference`` are ``(*S)`` masks. Signed maps use a symmetric diverging
    colour scale, non-negative maps a sequential one. Slices default to :func:`choose_slices`
    of the prediction (else the reference, else the middle slice).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    img = np.asarray(image, dtype=np.float32)
    amap = np.asarray(attribution, dtype=np.float32)
    if img.ndim == 4:
        img = img[min(channel, img.shape[0] - 1)]
    if amap.ndim == 4:
        amap = amap[min(channel, amap.shape[0] - 1)]
    if img.shape != amap.shape:
        raise DelineoError(f"map shape {amap.shape} does not match image shape {img.shape}.")
    if slices is None:
        structure = prediction if prediction is not None and np.any(prediction) else reference
        slices = choose_slices(structure, axis, count) if structure is not None else [img.shape[axis] // 2]
    slices = [int(s) for s in slices]
    for s in slices:
        if not 0 <= s < img.shape[axis]:
            raise DelineoError(f"slice {s} is outside the image (0-{img.shape[axis] - 1} along axis {axis}).")
    signed = bool(amap.min() < 0)
    limit = float(np.abs(amap).max()) or 1.0
    norm = dict(vmin=-limit, vmax=limit, cmap="RdBu_r") if signed else dict(vmin=0.0, vmax=limit, cmap="inferno")

    fig = Figure(figsize=(10.5, 3.4 * len(slices)), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(slices), 3, squeeze=False)
    for row, s in enumerate(slices):
        base = _slice(img, axis, s)
        pred, ref, m = _slice(prediction, axis, s), _slice(reference, axis, s), _slice(amap, axis, s)
        ax_img, ax_cont, ax_map = axes[row]
        for ax in (ax_img, ax_cont, ax_map):
            ax.imshow(base, cmap="gray", origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
        for mask, colour in ((pred, "red"), (ref, "lime")):
            if mask is not None and np.any(mask > 0) and not np.all(mask > 0):
                ax_cont.contour((mask > 0).astype(float), levels=[0.5], colors=colour, linewidths=1.0)
        shown = ax_map.imshow(m, origin="lower", alpha=alpha, **norm)
        fig.colorbar(shown, ax=ax_map, fraction=0.046, pad=0.04)
        ax_img.set_ylabel(f"slice {s} (axis {axis})")
        if row == 0:
            ax_img.set_title("image")
            ax_cont.set_title("prediction (red) / reference (green)")
            ax_map.set_title(title or "map")
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    return path
