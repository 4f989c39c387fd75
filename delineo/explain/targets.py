"""Segmentation targets: the scalar ``J`` whose attribution an explanation method computes.

Classification explainers attribute one class score. A segmentation network outputs one score
per voxel, so "what is being explained" must be chosen explicitly: the predicted structure, the
correctly predicted part of it, one label, one region or one connected component, or a
reduction. Every target maps the network's logits ``(B, K, *S)`` to one value per batch item
``(B,)``; explanation methods differentiate (or difference) that value.

Probabilities follow :func:`delineo.losses.dice.probabilities`: ``K == 1`` is a sigmoid output,
``K > 1`` a softmax over labels including background.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from scipy import ndimage

from delineo.errors import DelineoError
from delineo.losses.dice import probabilities
from delineo.registry import closest

#: A target: logits (B, K, *S) -> J (B,).
TargetFn = Callable[[torch.Tensor], torch.Tensor]

TARGETS = ("positive-prediction", "true-positive", "class", "region", "mean", "max", "min")


def label_channel(num_outputs: int, label: int | None) -> int:
    """Output channel holding ``label``'s probability (sigmoid: 0; softmax: first foreground by default)."""
    if num_outputs == 1:
        if label not in (None, 0, 1):
            raise DelineoError(f"label {label} requested but the model has one (sigmoid) output; use 1 or leave it out.")
        return 0
    label = 1 if label is None else int(label)
    if not 0 <= label < num_outputs:
        raise DelineoError(f"label {label} is out of range for a model with {num_outputs} output labels (0-{num_outputs - 1}).")
    return label


def label_probability(logits: torch.Tensor, label: int | None = None) -> torch.Tensor:
    """Probability map ``(B, *S)`` of one label, differentiable in the logits."""
    if isinstance(logits, (list, tuple)):  # deep supervision in training mode: finest first
        logits = logits[0]
    return probabilities(logits)[:, label_channel(logits.shape[1], label)]


def region_mask(prediction: np.ndarray, component: int | Sequence[int] | str = "largest") -> np.ndarray:
    """Mask of one connected component of a binary prediction.

    ``component`` is ``'largest'``, a rank (1 = largest, 2 = second largest, ...) or a voxel
    index tuple lying inside the wanted component. Full (face, edge and corner) connectivity.
    """
    pred = np.asarray(prediction) > 0
    labels, n = ndimage.label(pred, structure=np.ones((3,) * pred.ndim, dtype=bool))
    if n == 0:
        raise DelineoError("the prediction is empty, so it has no connected component to explain.")
    if isinstance(component, str):
        if component != "largest":
            raise DelineoError(f"component must be 'largest', a rank or a voxel index, got '{component}'.")
        component = 1
    if isinstance(component, (int, np.integer)):
        sizes = np.bincount(labels.ravel())[1:]
        order = np.argsort(-sizes, kind="stable")
        if not 1 <= component <= n:
            raise DelineoError(f"component rank {component} requested but the prediction has {n} components.")
        return labels == order[component - 1] + 1
    index = tuple(int(i) for i in component)
    if len(index) != pred.ndim:
        raise DelineoError(f"component voxel {index} has {len(index)} indices for a {pred.ndim}D prediction.")
    value = labels[index]
    if value == 0:
        raise DelineoError(f"voxel {index} is not inside the predicted structure.")
    return labels == value


def _batch_mask(mask: torch.Tensor | np.ndarray, p: torch.Tensor, what: str) -> torch.Tensor:
    """Bring a mask given as (*S), (B, *S) or (B, 1, *S) to p's shape (B, *S)."""
    m = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask).to(p.device)
    if m.dim() == p.dim() + 1 and m.shape[1] == 1:
        m = m[:, 0]
    if m.dim() == p.dim() - 1:
        m = m.unsqueeze(0)
    if tuple(m.shape[1:]) != tuple(p.shape[1:]):
        raise DelineoError(f"the {what} has shape {tuple(m.shape[1:])} but the model output has {tuple(p.shape[1:])}.")
    return m.to(p.dtype).expand_as(p)


def make_target(name: str | TargetFn, *, threshold: float = 0.5, label: int | None = None,
                reference: torch.Tensor | np.ndarray | None = None,
                mask: torch.Tensor | np.ndarray | None = None,
                component: int | Sequence[int] | str = "largest") -> TargetFn:
    """The target function called ``name`` (or ``name`` itself when it is already a callable).

    - ``positive-prediction``: ``J = sum p * [p >= threshold]``; the indicator is detached so the
      gradient is that of the predicted structure's probability mass.
    - ``true-positive``: ``J = sum p * [y >= 0.5]`` with ``reference`` y.
    - ``class``: ``J = sum p`` over all voxels of ``label``.
    - ``region``: ``J = sum p * mask``; without ``mask``, the mask is one connected component
      (``component``) of the thresholded prediction, found on the detached output.
    - ``mean`` / ``max`` / ``min``: that reduction of ``p`` (inside ``mask`` when given).
    """
    if callable(name):
        return name
    key = str(name).lower()
    if key not in TARGETS:
        raise DelineoError(f"unknown target '{name}'{closest(key, TARGETS)}; known: {', '.join(TARGETS)}.")
    if key == "true-positive" and reference is None:
        raise DelineoError("target 'true-positive' needs a reference mask.")

    def reduce_sum(v: torch.Tensor) -> torch.Tensor:
        return v.flatten(1).sum(1)

    def target(logits: torch.Tensor) -> torch.Tensor:
        p = label_probability(logits, label)
        if key == "positive-prediction":
            return reduce_sum(p * (p >= threshold).detach().to(p.dtype))
        if key == "true-positive":
            return reduce_sum(p * (_batch_mask(reference, p, "reference") >= 0.5).to(p.dtype))
        if key == "class":
            return reduce_sum(p)
        if key == "region":
            if mask is not None:
                m = _batch_mask(mask, p, "region mask")
            else:
                pred = (p >= threshold).detach().cpu().numpy()
                m = torch.as_tensor(np.stack([region_mask(b, component) for b in pred])).to(p)
            return reduce_sum(p * m)
        flat = p.flatten(1)
        if mask is not None:
            inside = _batch_mask(mask, p, "mask").flatten(1) > 0
            if key == "mean":
                return (flat * inside).sum(1) / inside.sum(1).clamp(min=1)
            fill = -torch.inf if key == "max" else torch.inf
            flat = torch.where(inside, flat, torch.full_like(flat, fill))
        return {"mean": flat.mean, "max": flat.amax, "min": flat.amin}[key](1)

    target.__name__ = f"target_{key.replace('-', '_')}"
    return target
