"""Overlap losses on soft counts: Jaccard, Tversky, focal Tversky and soft F-beta.

Conventions as in :mod:`delineo.losses.dice`: logits in (sigmoid for one channel, softmax
otherwise), targets as label maps ``(B, 1, *S)`` / ``(B, *S)`` or, for classifiers, logits
``(B, K)`` with targets ``(B,)`` / ``(B, 1)``. Soft counts per label ``c`` are
``TP = sum p*g``, ``FP = sum p*(1-g)``, ``FN = sum (1-p)*g`` summed over the flattened batch
(default) or per sample (``per_sample=True``, the mean of per-sample losses is returned).
Scores are averaged over labels; background (label 0) is left out unless ``include_background``
(it is always kept for one-channel outputs, where channel 0 *is* the foreground).
"""

from __future__ import annotations

import torch
from torch import nn

from delineo.losses.dice import one_hot_target, probabilities
from delineo.registry import LOSSES


def soft_counts(logits: torch.Tensor, target: torch.Tensor, per_sample: bool = False,
                include_background: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Soft (TP, FP, FN), shaped ``(C,)`` over the batch or ``(B, C)`` per sample."""
    probs = probabilities(logits)
    onehot = one_hot_target(target, logits.shape[1])
    if not include_background and probs.shape[1] > 1:
        probs, onehot = probs[:, 1:], onehot[:, 1:]
    axes = tuple(range(2, probs.dim()))
    if not per_sample:
        axes = (0,) + axes
    if not axes:  # per-sample classification: each (sample, class) is its own count
        return probs * onehot, probs * (1 - onehot), (1 - probs) * onehot
    tp = (probs * onehot).sum(axes)
    fp = (probs * (1 - onehot)).sum(axes)
    fn = ((1 - probs) * onehot).sum(axes)
    return tp, fp, fn


def tversky_index(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor, fn_weight: float,
                  fp_weight: float, smooth: float) -> torch.Tensor:
    """TI = (TP + s) / (TP + a*FN + b*FP + s); a = b = 0.5 is Dice, a = b = 1 is Jaccard."""
    return (tp + smooth) / (tp + fn_weight * fn + fp_weight * fp + smooth)


def _reduce(per_label: torch.Tensor) -> torch.Tensor:
    """Mean over labels, then over samples when per-sample."""
    return per_label.mean()


@LOSSES.register("jaccard", "iou")
class JaccardLoss(nn.Module):
    """1 - soft Jaccard (IoU): (TP + s) / (TP + FP + FN + s)."""

    def __init__(self, smooth: float = 1e-5, per_sample: bool = False, include_background: bool = False) -> None:
        super().__init__()
        self.smooth, self.per_sample, self.include_background = smooth, per_sample, include_background

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        tp, fp, fn = soft_counts(logits, target, self.per_sample, self.include_background)
        return 1 - _reduce(tversky_index(tp, fp, fn, 1.0, 1.0, self.smooth))


@LOSSES.register("tversky")
class TverskyLoss(nn.Module):
    """1 - Tversky index (Salehi et al. 2017), TI = (TP + s)/(TP + a*FN + b*FP + s).

    ``fn_weight`` (a) weighs missed reference voxels, ``fp_weight`` (b) false detections;
    a > b favours recall (small lesions).
    """

    def __init__(self, fn_weight: float = 0.7, fp_weight: float = 0.3, smooth: float = 1.0,
                 per_sample: bool = False, include_background: bool = False) -> None:
        super().__init__()
        self.fn_weight, self.fp_weight, self.smooth = fn_weight, fp_weight, smooth
        self.per_sample, self.include_background = per_sample, include_background

    def index(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        tp, fp, fn = soft_counts(logits, target, self.per_sample, self.include_background)
        return tversky_index(tp, fp, fn, self.fn_weight, self.fp_weight, self.smooth)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return 1 - _reduce(self.index(logits, target))


@LOSSES.register("focal_tversky")
class FocalTverskyLoss(TverskyLoss):
    """(1 - TI) ** gamma per label (and per sample), averaged (Abraham & Khan 2019).

    Note on ``gamma``: here it is the exponent itself. Abraham & Khan write the exponent as
    1/gamma (their gamma = 4/3 is ``gamma=0.75`` here). The WMH set-up is
    ``fn_weight=0.85, fp_weight=0.15, gamma=4/3, smooth=2``.
    """

    def __init__(self, fn_weight: float = 0.7, fp_weight: float = 0.3, gamma: float = 0.75, smooth: float = 1.0,
                 per_sample: bool = False, include_background: bool = False) -> None:
        super().__init__(fn_weight, fp_weight, smooth, per_sample, include_background)
        self.gamma = gamma

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # clamp: d(x^g)/dx is infinite at 0 for g < 1
        return _reduce((1 - self.index(logits, target)).clamp_min(1e-12) ** self.gamma)


@LOSSES.register("soft_fbeta", "soft_f1")
class SoftFBetaLoss(nn.Module):
    """1 - soft F-beta, (1+b^2) TP / ((1+b^2) TP + b^2 FN + FP); beta=1 is soft-F1.

    Meant for classifiers (logits ``(B, K)``, targets ``(B,)``): counts are summed over the batch
    per class and averaged over classes, background class included by default.
    """

    def __init__(self, beta: float = 1.0, smooth: float = 1e-7, per_sample: bool = False,
                 include_background: bool = True) -> None:
        super().__init__()
        self.beta, self.smooth = beta, smooth
        self.per_sample, self.include_background = per_sample, include_background

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        tp, fp, fn = soft_counts(logits, target, self.per_sample, self.include_background)
        b2 = self.beta**2
        f = ((1 + b2) * tp + self.smooth) / ((1 + b2) * tp + b2 * fn + fp + self.smooth)
        return 1 - _reduce(f)
