"""Soft Dice, Dice + cross-entropy for several labels, and BCE (+ Dice) for one label.

Conventions: the network outputs logits. ``out_channels == 1`` -> sigmoid, targets are 0/1;
``out_channels > 1`` -> softmax over labels including background, targets are label indices
``(B, 1, *spatial)`` or ``(B, *spatial)``. Deep-supervision lists are handled by
:func:`delineo.losses.deep_supervised`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from delineo.registry import LOSSES


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)


def one_hot_target(target: torch.Tensor, num_channels: int) -> torch.Tensor:
    """Label map ``(B, [1,] *S)`` -> float one-hot ``(B, C, *S)``; C == 1 means binary 0/1."""
    if target.dim() >= 2 and target.shape[1] == 1:
        target = target[:, 0]
    target = target.long()
    if num_channels == 1:
        return (target > 0).float().unsqueeze(1)
    return F.one_hot(target.clamp(0, num_channels - 1), num_channels).movedim(-1, 1).float()


def soft_dice(probs: torch.Tensor, onehot: torch.Tensor, smooth: float = 1e-5, batch_dice: bool = True,
              include_background: bool = False) -> torch.Tensor:
    """Mean soft Dice over channels; sums over the batch too when ``batch_dice``."""
    if not include_background and probs.shape[1] > 1:
        probs, onehot = probs[:, 1:], onehot[:, 1:]
    axes = tuple(range(2, probs.dim()))
    if batch_dice:
        axes = (0,) + axes
    inter = (probs * onehot).sum(axes)
    denom = probs.sum(axes) + onehot.sum(axes)
    return ((2 * inter + smooth) / (denom + smooth)).mean()


@LOSSES.register("dice")
class DiceLoss(nn.Module):
    """1 - soft Dice (foreground labels, over the batch unless ``batch_dice`` is false)."""

    def __init__(self, smooth: float = 1e-5, batch_dice: bool = True, include_background: bool = False) -> None:
        super().__init__()
        self.smooth, self.batch_dice, self.include_background = smooth, batch_dice, include_background

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        onehot = one_hot_target(target, logits.shape[1])
        return 1 - soft_dice(probabilities(logits), onehot, self.smooth, self.batch_dice, self.include_background)


@LOSSES.register("dice_ce")
class DiceCELoss(nn.Module):
    """Soft Dice + cross-entropy (BCE for one output channel): the nnU-Net default."""

    def __init__(self, dice_weight: float = 1.0, ce_weight: float = 1.0, smooth: float = 1e-5,
                 batch_dice: bool = True) -> None:
        super().__init__()
        self.dice = DiceLoss(smooth, batch_dice)
        self.dice_weight, self.ce_weight = dice_weight, ce_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.dice_weight * self.dice(logits, target) + self.ce_weight * cross_entropy(logits, target)


def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if target.dim() == logits.dim():
        target = target[:, 0]
    if logits.shape[1] == 1:
        return F.binary_cross_entropy_with_logits(logits[:, 0], (target > 0).float())
    return F.cross_entropy(logits, target.long())


@LOSSES.register("bce", "ce")
class CrossEntropyLoss(nn.Module):
    """Binary cross-entropy for one output channel, multi-class cross-entropy otherwise."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return cross_entropy(logits, target)
