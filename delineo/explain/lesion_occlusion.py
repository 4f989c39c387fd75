"""Lesion-level occlusion: which parts of a slice make the model find its lesions.

Pixel occlusion (``occlusion``) reports how a probability sum changes; a radiologist asks a
different question: *if this region were blank, would the model still find the lesion?* Here a
box filled with the image minimum (per input channel) slides over the input, the model predicts
each occluded copy, and the map holds the change in the number of detected lesions,
``n(original) - n(occluded)``, averaged over the boxes covering each pixel: positive where
hiding the region makes lesions disappear, negative where it makes the model invent some.

"Detected lesions" are the connected components (:func:`delineo.evaluate.lesions.label_lesions`)
of ``probability(label) >= threshold``; components below ``min_size`` voxels are ignored. It is
registered as the explanation method ``lesion-occlusion`` (a spatial map), so it runs slice by
slice or patch by patch like every other method.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

from delineo.evaluate.lesions import LesionRules, label_lesions
from delineo.explain.api import register_method
from delineo.explain.attribution import _first, _per_dim, _window_starts
from delineo.explain.layers import eval_mode
from delineo.explain.targets import label_channel
from delineo.losses.dice import probabilities


def count_lesions(logits: torch.Tensor, label: Optional[int], threshold: float, rules: LesionRules) -> list[int]:
    """Number of predicted lesions in each item of a batch of logits ``(B, K, *S)``."""
    probs = probabilities(logits)
    channel = label_channel(probs.shape[1], label)
    masks = (probs[:, channel] >= threshold).cpu().numpy()
    return [label_lesions(m, rules)[1] for m in masks]


@torch.no_grad()
def lesion_occlusion(model: nn.Module, x: torch.Tensor, patch: int | Sequence[int] = 16,
                     stride: int | Sequence[int] | None = None, label: Optional[int] = None, threshold: float = 0.5,
                     connectivity: Optional[int] = None, min_size: int = 0, batch_size: int = 8) -> tuple[torch.Tensor, int]:
    """(map ``(B, 1, *S)`` of the change in detected lesions, lesions found in the first input)."""
    rules = LesionRules(connectivity=connectivity, min_size=int(min_size))
    spatial = tuple(x.shape[2:])
    patch = tuple(min(p, s) for p, s in zip(_per_dim(patch, len(spatial), "patch"), spatial))
    stride = patch if stride is None else _per_dim(stride, len(spatial), "stride")
    grids = np.meshgrid(*[np.asarray(_window_starts(s, p, st)) for s, p, st in zip(spatial, patch, stride)], indexing="ij")
    starts = np.stack([g.reshape(-1) for g in grids], 1).tolist()
    result = torch.zeros((x.shape[0], 1) + spatial, dtype=x.dtype)
    n_first = 0
    with eval_mode(model):
        for b in range(x.shape[0]):
            xb = x[b:b + 1]
            fill = xb.amin(dim=tuple(range(2, xb.dim())), keepdim=True)  # the image minimum, per channel
            n0 = count_lesions(_first(model(xb)), label, threshold, rules)[0]
            if b == 0:
                n_first = n0
            total = torch.zeros(spatial, dtype=x.dtype)
            count = torch.zeros(spatial, dtype=x.dtype)
            for i in range(0, len(starts), batch_size):
                chunk = starts[i:i + batch_size]
                windows = [tuple(slice(s, s + p) for s, p in zip(st, patch)) for st in chunk]
                batch = xb.repeat(len(chunk), *([1] * (x.dim() - 1)))
                for k, w in enumerate(windows):
                    batch[(k, slice(None)) + w] = fill[0].expand_as(batch[(k, slice(None)) + w])
                counts = count_lesions(_first(model(batch)), label, threshold, rules)
                for k, w in enumerate(windows):
                    total[w] += n0 - counts[k]
                    count[w] += 1
            result[b, 0] = total / count.clamp(min=1)
    return result, n_first


@register_method("lesion-occlusion", "spatial")
def _lesion_occlusion(model, x, target, layer, patch: int | Sequence[int] = 16, stride=None, label: int | None = None,
                      threshold: float = 0.5, connectivity: int | None = None, min_size: int = 0, batch_size: int = 8):
    """Change in the number of detected lesions when a box of the image minimum hides a region."""
    return lesion_occlusion(model, x, patch, stride, label, threshold, connectivity, min_size, batch_size)[0]
