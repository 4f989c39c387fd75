"""Weighted sum of registered losses, e.g. Dice + 0.5 BCE::

    loss: {name: combo, terms: [{name: dice, weight: 1}, {name: bce, weight: 0.5}]}

Each term is any registered loss spec plus an optional ``weight`` (default 1). ``num_classes``,
when Delineo passes it, is handed on to the terms that take it.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from delineo.errors import ConfigError
from delineo.registry import LOSSES


@LOSSES.register("combo", "sum")
class ComboLoss(nn.Module):
    """sum_i weight_i * loss_i(logits, target)."""

    def __init__(self, terms: Sequence[dict[str, Any] | str], num_classes: int | None = None) -> None:
        super().__init__()
        if not terms:
            raise ConfigError("combo loss needs at least one term")
        self.weights: list[float] = []
        losses = []
        for i, term in enumerate(terms):
            spec = {"name": term} if isinstance(term, str) else dict(term)
            self.weights.append(float(spec.pop("weight", 1.0)))
            passed = {} if num_classes is None else {"num_classes": num_classes}
            losses.append(LOSSES.build(spec, where=f"loss.terms[{i}]", **passed))
        self.losses = losses
        self.terms = nn.ModuleList(m for m in losses if isinstance(m, nn.Module))  # .to(device), state


    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = 0.0
        for w, loss in zip(self.weights, self.losses):
            total = total + w * loss(logits, target)
        return total
