"""Per-voxel / per-sample losses: focal, mean squared error and the binary Lovasz hinge.

Logits in; targets as label maps ``(B, 1, *S)`` / ``(B, *S)``, or ``(B,)`` / ``(B, 1)`` for
classifiers with logits ``(B, K)``.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from delineo.losses.dice import one_hot_target, probabilities
from delineo.registry import LOSSES


def _labels(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Integer labels shaped like ``logits`` without the channel axis."""
    if target.dim() == logits.dim():
        target = target[:, 0]
    return target.long()


@LOSSES.register("focal")
class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017): -alpha_t (1 - p_t)^gamma log p_t, mean over voxels.

    One output channel: sigmoid, ``alpha`` (a float) weighs the positives, 1 - alpha the
    negatives. Several: softmax, ``alpha`` is None or one weight per class.
    """

    def __init__(self, gamma: float = 2.0, alpha: float | Sequence[float] | None = None) -> None:
        super().__init__()
        self.gamma, self.alpha = gamma, alpha

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        labels = _labels(logits, target)
        if logits.shape[1] == 1:
            z = logits[:, 0]
            pos = (labels > 0).float()
            logp_t = -F.binary_cross_entropy_with_logits(z, pos, reduction="none")
            w = 1.0 if self.alpha is None else self.alpha * pos + (1 - self.alpha) * (1 - pos)
        else:
            logp = F.log_softmax(logits, dim=1)
            logp_t = logp.gather(1, labels.clamp(0, logits.shape[1] - 1).unsqueeze(1))[:, 0]
            if self.alpha is None:
                w = 1.0
            else:
                alpha = torch.as_tensor(self.alpha, dtype=logits.dtype, device=logits.device)
                if alpha.dim() == 0 or alpha.numel() != logits.shape[1]:
                    raise ValueError(f"focal: alpha needs one weight per class ({logits.shape[1]})")
                w = alpha[labels]
        p_t = logp_t.exp()
        return (-w * (1 - p_t) ** self.gamma * logp_t).mean()


@LOSSES.register("mse")
class MSELoss(nn.Module):
    """Mean squared error between probabilities and the one-hot target (``activation=True``),
    or between raw outputs and a float target of the same shape (regression)."""

    def __init__(self, activation: bool = True) -> None:
        super().__init__()
        self.activation = activation

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if not self.activation:
            return F.mse_loss(logits, target.to(logits.dtype).reshape(logits.shape))
        return F.mse_loss(probabilities(logits), one_hot_target(target, logits.shape[1]))


def lovasz_grad(gt_sorted: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovasz extension of the Jaccard loss w.r.t. sorted errors (Berman 2018)."""
    gts = gt_sorted.sum()
    intersection = gts - gt_sorted.cumsum(0)
    union = gts + (1 - gt_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    if gt_sorted.numel() > 1:
        jaccard = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
    return jaccard


def lovasz_hinge_flat(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary Lovasz hinge on flat logits and 0/1 labels."""
    if logits.numel() == 0:
        return logits.sum() * 0.0
    signs = 2.0 * labels.float() - 1.0
    errors = 1.0 - logits * signs
    errors_sorted, perm = torch.sort(errors, descending=True)
    grad = lovasz_grad(labels.float()[perm])
    return torch.dot(F.relu(errors_sorted), grad)


@LOSSES.register("lovasz_hinge")
class LovaszHingeLoss(nn.Module):
    """Binary Lovasz hinge (Berman et al. 2018), a surrogate of the Jaccard loss on one logit
    channel; over the flattened batch, or averaged per image with ``per_image=True``."""

    def __init__(self, per_image: bool = False) -> None:
        super().__init__()
        self.per_image = per_image

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape[1] != 1:
            raise ValueError("lovasz_hinge is binary: the network needs out_channels == 1")
        labels = (_labels(logits, target) > 0).float()
        z = logits[:, 0]
        if self.per_image:
            return torch.stack([lovasz_hinge_flat(z[i].reshape(-1), labels[i].reshape(-1))
                                for i in range(z.shape[0])]).mean()
        return lovasz_hinge_flat(z.reshape(-1), labels.reshape(-1))
