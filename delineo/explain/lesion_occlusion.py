"""Lesion-level occlusion: which parts of a slice make the model find its lesions.

Pixel occlusion (``occlusion``) reports how a probability sum changes; a radiologist asks a
different question: *if this region were blank, would the model still find the lesion?* Here a
box filled with the image minimum (per input channel) slides over the input, the model predicts
each occluded copy, and the map holds the change in the number of detected lesions,
``n(original) - n(occluded)``, averaged over the boxes covering each pixel: positive where
hiding the region makes lesions disappear, negative where it makes the model invent some.

"Detected lesions" are the connected components (:func:`delineo.evaluate.lesions.label_lesions`)
of ``probability(label) >= threshold``; components below ``min_size`` voxels are ignored. With a
reference mask they are the *reference* lesions the prediction detects, by the rule of
:mod:`delineo.evaluate.lesions` (any predicted voxel on the lesion, or at least ``min_overlap``
of its voxels): the map then shows where hiding the image makes the model miss true lesions,
and invented lesions do not count. It is registered as the explanation method ``lesion-occlusion`` (a spatial map), so it runs slice by
slice or patch by patch like every other method.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

from delineo.errors import InputError
from delineo.evaluate.lesions import LesionRules, label_lesions
from delineo.explain.api import register_method
from delineo.explain.attribution import _first, _per_dim, _window_starts
from delineo.explain.layers import eval_mode
from delineo.explain.targets import label_channel
from delineo.losses.dice import probabilities


def count_lesions(logits: torch.Tensor, label: Optional[int], threshold: float, rules: LesionRules,
                  reference: Optional[np.ndarray] = None) -> list[int]:
    """Number of detected lesions in each item of a batch of logits ``(B, K, *S)``: predicted
    lesions, or with ``reference`` (``(*S)``) the reference lesions the prediction detects."""
    probs = probabilities(logits)
    channel = label_channel(probs.shape[1], label)
    masks = (probs[:, channel] >= threshold).cpu().numpy()
    if reference is None:
        return [label_lesions(m, rules)[1] for m in masks]
    ref_lab, n_ref = label_lesions(np.asarray(reference) > 0, rules)
    sizes = np.bincount(ref_lab.ravel(), minlength=n_ref + 1)
    out = []
    for m in masks:
        pred_lab, _ = label_lesions(m, rules)  # small predicted components are ignored, as in evaluation
        cover = np.bincount(ref_lab[(pred_lab > 0) & (ref_lab > 0)], minlength=n_ref + 1)[1:]
        hit = (cover > 0) & (cover >= rules.min_overlap * sizes[1:])
        out.append(int(hit.sum()))
    return out


@torch.no_grad()
def lesion_occlusion(model: nn.Module, x: torch.Tensor, patch: int | Sequence[int] = 16,
                     stride: int | Sequence[int] | None = None, label: Optional[int] = None, threshold: float = 0.5,
                     connectivity: Optional[int] = None, min_size: int = 0, batch_size: int = 8,
                     reference: Optional[torch.Tensor] = None, min_overlap: float = 0.0) -> tuple[torch.Tensor, int]:
    """(map ``(B, 1, *S)`` of the change in detected lesions, lesions found in the first input).

    ``reference`` (``(B, *S)`` or ``(B, 1, *S)``) switches the count to detected reference
    lesions; ``min_overlap`` (fraction of a reference lesion's voxels) only applies with it."""
    if not 0.0 <= float(min_overlap) <= 1.0:
        raise InputError(f"min_overlap {min_overlap}: a fraction between 0 and 1 is expected.")
    if float(min_overlap) > 0 and reference is None:
        raise InputError("min_overlap needs a reference mask (--reference): detection is judged against reference lesions.")
    if int(min_size) < 0:
        raise InputError(f"min_size {min_size}: a number of voxels >= 0 is expected.")
    rules = LesionRules(connectivity=connectivity, min_size=int(min_size), min_overlap=float(min_overlap))
    refs = None
    if reference is not None:
        refs = torch.as_tensor(reference).detach().cpu().numpy()
        refs = refs.reshape((x.shape[0],) + tuple(x.shape[2:]))
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
            ref_b = None if refs is None else refs[b]
            n0 = count_lesions(_first(model(xb)), label, threshold, rules, ref_b)[0]
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
                counts = count_lesions(_first(model(batch)), label, threshold, rules, ref_b)
                for k, w in enumerate(windows):
                    total[w] += n0 - counts[k]
                    count[w] += 1
            result[b, 0] = total / count.clamp(min=1)
    return result, n_first


@register_method("lesion-occlusion", "spatial")
def _lesion_occlusion(model, x, target, layer, patch: int | Sequence[int] = 16, stride=None, label: int | None = None,
                      threshold: float = 0.5, connectivity: int | None = None, min_size: int = 0, batch_size: int = 8,
                      reference=None, min_overlap: float = 0.0):
    """Change in the number of detected lesions when a box of the image minimum hides a region."""
    return lesion_occlusion(model, x, patch, stride, label, threshold, connectivity, min_size, batch_size,
                            reference, min_overlap)[0]
