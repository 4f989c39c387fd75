"""Core losses and schedules on values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from delineo.losses import CrossEntropyLoss, DiceCELoss, DiceLoss, deep_supervised
from delineo.registry import SCHEDULES


def test_soft_dice_known_value():
    # binary output with probabilities exactly 0/1 via large logits: pred 2 voxels, ref 3, overlap 2
    logits = torch.tensor([[[[10.0, 10.0, -10.0, -10.0]]]])  # (B=1, C=1, 1, 4)
    target = torch.tensor([[[[1, 1, 1, 0]]]])
    loss = DiceLoss(smooth=0.0)(logits, target)
    assert loss.item() == pytest.approx(1 - 2 * 2 / (2 + 3), abs=1e-4)


def test_dice_ce_multiclass_perfect_is_small():
    target = torch.tensor([[[0, 1, 2, 1]]])  # (B, 1, 4) -> 1D spatial
    logits = torch.nn.functional.one_hot(target[:, 0], 3).movedim(-1, 1).float() * 20
    assert DiceCELoss()(logits, target).item() < 1e-3


def test_deep_supervision_downsamples_targets():
    target = torch.zeros(1, 1, 8, 8, dtype=torch.long)
    outs = [torch.zeros(1, 2, 8, 8), torch.zeros(1, 2, 4, 4)]
    loss = deep_supervised(CrossEntropyLoss(), outs, target)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)


def test_schedules():
    poly = SCHEDULES.build({"name": "poly", "exponent": 0.9})
    assert poly.factor(0, 0.0) == 1.0 and poly.factor(5, 0.5) == pytest.approx(0.5**0.9)
    step = SCHEDULES.build({"name": "step", "every": 10, "gamma": 0.95})
    assert step.factor(25, 0.0) == pytest.approx(0.95**2)
    cos = SCHEDULES.build({"name": "cosine", "warmup": 0.1})
    assert cos.factor(0, 0.05) == pytest.approx(0.5) and cos.factor(0, 1.0) == pytest.approx(0.0, abs=1e-9)
    plateau = SCHEDULES.build({"name": "plateau", "factor": 0.2, "patience": 2})
    for m in [0.5, 0.6, 0.6, 0.6, 0.6]:
        plateau.observe(m)
    assert plateau.factor(0, 0) == pytest.approx(0.2)
