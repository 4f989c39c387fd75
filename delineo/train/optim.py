"""Optimisers and learning-rate schedules, registered by name.

Schedules are functions of the epoch *and* of training progress in [0, 1]. Progress is the
larger of epochs done / epochs and minutes spent / ``train.max_minutes``, so that "poly" or
"cosine" anneal properly when training is bounded by a wall-clock budget instead of epochs.
The loop sets ``lr = base_lr * factor`` at the start of every epoch.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import torch

from delineo.registry import OPTIMIZERS, SCHEDULES


@OPTIMIZERS.register("adam")
def adam(params: Iterable, lr: float = 1e-3, weight_decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.999),
         eps: float = 1e-8) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, betas=tuple(betas), eps=eps)


@OPTIMIZERS.register("adamw")
def adamw(params: Iterable, lr: float = 1e-3, weight_decay: float = 1e-2, betas: tuple[float, float] = (0.9, 0.999),
          eps: float = 1e-8) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=tuple(betas), eps=eps)


@OPTIMIZERS.register("sgd")
def sgd(params: Iterable, lr: float = 1e-2, momentum: float = 0.99, nesterov: bool = True,
        weight_decay: float = 3e-5) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0,
                           weight_decay=weight_decay)


@OPTIMIZERS.register("radam")
def radam(params: Iterable, lr: float = 1e-3, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    return torch.optim.RAdam(params, lr=lr, weight_decay=weight_decay)


class Schedule:
    """Base: a multiplicative factor on the base learning rate, per epoch."""

    def factor(self, epoch: int, progress: float) -> float:
        return 1.0

    def observe(self, metric: float) -> None:
        """Called after each validation with the monitored metric (higher is better)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


@SCHEDULES.register("constant", "none")
class Constant(Schedule):
    pass


@SCHEDULES.register("poly")
class Poly(Schedule):
    """(1 - progress) ** exponent, the nnU-Net schedule."""

    def __init__(self, exponent: float = 0.9) -> None:
        self.exponent = exponent

    def factor(self, epoch: int, progress: float) -> float:
        return max(0.0, 1.0 - min(progress, 1.0)) ** self.exponent


@SCHEDULES.register("cosine")
class Cosine(Schedule):
    """Cosine annealing to ``min_factor`` after a linear warm-up of ``warmup`` (fraction)."""

    def __init__(self, warmup: float = 0.0, min_factor: float = 0.0) -> None:
        self.warmup, self.min_factor = warmup, min_factor

    def factor(self, epoch: int, progress: float) -> float:
        if self.warmup > 0 and progress < self.warmup:
            return max(progress / self.warmup, 1e-3)
        p = (progress - self.warmup) / max(1e-8, 1 - self.warmup)
        return self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * min(p, 1.0)))


@SCHEDULES.register("step")
class Step(Schedule):
    """Multiply by ``gamma`` every ``every`` epochs (e.g. x0.95 every 10 epochs)."""

    def __init__(self, every: int = 10, gamma: float = 0.95) -> None:
        if every < 1 or gamma <= 0:
            raise ValueError("step needs every >= 1 and gamma > 0")
        self.every, self.gamma = every, gamma

    def factor(self, epoch: int, progress: float) -> float:
        return self.gamma ** (epoch // self.every)


@SCHEDULES.register("plateau")
class Plateau(Schedule):
    """Multiply by ``factor`` after ``patience`` validations without improvement of the metric."""

    def __init__(self, factor: float = 0.2, patience: int = 5, min_factor: float = 1e-3) -> None:
        self.mult, self.patience, self.min_factor = factor, patience, min_factor
        self.best = -math.inf
        self.bad = 0
        self.current = 1.0

    def factor(self, epoch: int, progress: float) -> float:
        return self.current

    def observe(self, metric: float) -> None:
        if metric > self.best + 1e-6:
            self.best, self.bad = metric, 0
        else:
            self.bad += 1
            if self.bad > self.patience:
                self.current = max(self.current * self.mult, self.min_factor)
                self.bad = 0

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad": self.bad, "current": self.current}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.bad, self.current = state["best"], state["bad"], state["current"]
