"""Losses; importing this package registers the built-in ones with ``delineo.registry.LOSSES``."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from delineo.losses import dice  # noqa: F401
from delineo.losses import combo, overlap, pixel  # noqa: F401
from delineo.losses.dice import CrossEntropyLoss, DiceCELoss, DiceLoss, probabilities


def deep_supervised(loss_fn, outputs, target: torch.Tensor) -> torch.Tensor:
    """Weighted sum over deep-supervision outputs (weights 1, 1/2, 1/4, normalised), targets
    downsampled with nearest neighbour to each output's size."""
    if not isinstance(outputs, (list, tuple)):
        return loss_fn(outputs, target)
    weights = [0.5**i for i in range(len(outputs))]
    total = 0.0
    tgt = target if target.dim() == outputs[0].dim() else target.unsqueeze(1)
    for w, out in zip(weights, outputs):
        t = tgt if out.shape[2:] == tgt.shape[2:] else F.interpolate(tgt.float(), size=out.shape[2:], mode="nearest")
        total = total + w * loss_fn(out, t)
    return total / sum(weights)


__all__ = ["DiceLoss", "DiceCELoss", "CrossEntropyLoss", "probabilities", "deep_supervised"]
