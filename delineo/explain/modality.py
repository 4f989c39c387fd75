"""Which modality drove a contour: the PET-vs-CT gradient panels of the head-and-neck recipe.

The visualisation protocol of the deoxys head-and-neck work compares, per input channel (CT,
PET), the gradient of the predicted tumour with respect to the input: its **magnitude** |g|
(how sensitive the contour is to that modality), its **positive** part max(g, 0) (where more
signal would grow the contour) and its **negative** part max(-g, 0) (where more signal would
shrink it). :func:`modality_gradients` computes the signed gradient (plain saliency, target
``positive-prediction``) of a multi-channel case through :mod:`delineo.explain` and maps it back
to the input grid; :func:`save_modality_panels` draws one row per channel: image | magnitude |
positive | negative, on the slice with the largest predicted area, all rows on one colour scale
so the modalities compare directly. The mean magnitude inside the prediction per channel is
returned as well (the numbers behind "PET dominates").
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from delineo.io.atomic import atomic_path
from delineo.io.image import Image


def modality_gradients(predictor, images: list[Image]) -> tuple[np.ndarray, np.ndarray]:
    """(signed gradient (C, *S), predicted mask (*S)) on the grid of ``images[0]``."""
    import torch

    from delineo.explain.api import explain_full
    from delineo.preprocess.pipeline import preprocess, restore

    meta, cfg = predictor.meta, predictor.cfg
    x, _, record = preprocess(images, None, cfg.preprocess)
    label = 1 if len(meta.labels) == 1 or meta.out_channels == 1 else None
    model = predictor.model.float().to(memory_format=torch.contiguous_format)
    result = explain_full(model, x, "saliency", "positive-prediction", None, mode=meta.mode,
                          patch_size=meta.patch_size if meta.mode == "3d" else None, axis=meta.axis,
                          context=meta.context, threshold=0.5, label=label)
    grad = restore(np.asarray(result.map, dtype=np.float32), record)
    pred = restore(result.prediction.astype(np.uint8), record, is_label=True)
    return grad, pred


def channel_summary(grad: np.ndarray, pred: np.ndarray, names: Sequence[str]) -> dict[str, dict[str, float]]:
    """Mean |g|, max(g, 0) and max(-g, 0) inside the prediction (whole image when it is empty)."""
    inside = pred > 0 if pred.any() else np.ones(pred.shape, bool)
    return {name: {"magnitude": float(np.abs(g[inside]).mean()), "positive": float(np.maximum(g[inside], 0).mean()),
                   "negative": float(np.maximum(-g[inside], 0).mean())} for name, g in zip(names, grad)}


def save_modality_panels(path: str | Path, images: np.ndarray, grad: np.ndarray, pred: np.ndarray,
                         names: Sequence[str], axis: int = 2, index: Optional[int] = None) -> Path:
    """PNG: one row per channel, image | magnitude | positive | negative of slice ``index``
    along ``axis`` (default: the slice with the largest predicted area), contour in each panel."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if index is None:
        area = pred.sum(axis=tuple(a for a in range(3) if a != axis))
        index = int(np.argmax(area)) if area.any() else pred.shape[axis] // 2

    def cut(volume: np.ndarray) -> np.ndarray:
        return np.take(volume, index, axis=axis).T

    scale = float(np.abs(grad).max()) or 1.0
    fig = Figure(figsize=(11, 2.8 * len(names)))
    for row, name in enumerate(names):
        parts = [("image", cut(images[row]), "gray", None), ("magnitude", cut(np.abs(grad[row])), "magma", scale),
                 ("positive", cut(np.maximum(grad[row], 0)), "Reds", scale),
                 ("negative", cut(np.maximum(-grad[row], 0)), "Blues", scale)]
        for col, (title, data, cmap, vmax) in enumerate(parts):
            ax = fig.add_subplot(len(names), 4, row * 4 + col + 1)
            shown = ax.imshow(data, cmap=cmap, origin="lower", vmin=0 if vmax else None, vmax=vmax)
            if pred.any():
                ax.contour(cut(pred > 0).astype(float), levels=[0.5], colors="lime", linewidths=0.6)
            ax.set_title(f"{name}: {title}", fontsize=8)
            ax.axis("off")
            if col == 3:
                fig.colorbar(shown, ax=ax, fraction=0.046)
    fig.suptitle(f"gradient of the predicted structure per input channel, slice {index}", fontsize=9)
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        FigureCanvasAgg(fig).print_png(str(tmp))
    return path
