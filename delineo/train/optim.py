"""Optimisers and learning-rate schedules, registered by name.

Schedules are functions of the epoch *and* of training progress in [0, 1]. Progress is the
larger of epochs done / epochs and minutes spent / ``train.max_minutes``, so that "poly" or
"cosine" anneal properly when training is bounded by a wall-clock budget instead of epochs.
The loop sets ``lr = base_lr * factor`` before every iteration, progress counting the fraction
of the current epoch, so progress-based schedules are as smooth as per-batch schedulers.
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


# --- Cyclic schedules (one-cycle, triangular) and exponential decay ------------------------------


def _no_momentum(self: Schedule, epoch: int, progress: float) -> float | None:
    """Momentum to set at the start of this epoch, or None to leave the optimiser's alone.

    The loop calls it after ``factor`` and applies a value with :func:`set_momentum`.
    """
    return None


Schedule.momentum = _no_momentum  # optional hook, overridden by OneCycle


def set_momentum(optimizer: torch.optim.Optimizer, momentum: float) -> None:
    """Set SGD's ``momentum`` or Adam-family ``betas[0]`` in every parameter group."""
    for group in optimizer.param_groups:
        if "betas" in group:
            group["betas"] = (momentum, group["betas"][1])
        elif "momentum" in group:
            group["momentum"] = momentum


@SCHEDULES.register("one_cycle", "onecycle")
class OneCycle(Schedule):
    """One-cycle policy (Smith 2018; Smith & Topin 2019): the base learning rate is the *maximum*.

    The factor rises from ``1/div_factor`` to 1 over the first ``warmup`` fraction of training,
    then anneals (``anneal``: 'cos' or 'linear') to ``1/(div_factor*final_div_factor)``.
    Momentum cycles inversely, ``max_momentum`` -> ``min_momentum`` at the peak -> back to
    ``max_momentum`` (``cycle_momentum=False`` leaves momentum alone).
    """

    def __init__(self, warmup: float = 0.3, div_factor: float = 25.0, final_div_factor: float = 1e4,
                 anneal: str = "cos", cycle_momentum: bool = True, max_momentum: float = 0.95,
                 min_momentum: float = 0.85) -> None:
        if not 0 < warmup < 1:
            raise ValueError("one_cycle: warmup must be a fraction in (0, 1)")
        if anneal not in ("cos", "linear"):
            raise ValueError("one_cycle: anneal must be 'cos' or 'linear'")
        self.warmup, self.div_factor, self.final_div_factor = warmup, div_factor, final_div_factor
        self.anneal, self.cycle_momentum = anneal, cycle_momentum
        self.max_momentum, self.min_momentum = max_momentum, min_momentum

    def _phase(self, progress: float) -> tuple[float, float, float]:
        """(start, end, t) of the current phase, t in [0, 1], on a 0..1 'height' scale."""
        p = min(max(progress, 0.0), 1.0)
        if p < self.warmup:
            return 0.0, 1.0, p / self.warmup
        return 1.0, 0.0, (p - self.warmup) / (1 - self.warmup)

    def _interp(self, a: float, b: float, t: float) -> float:
        if self.anneal == "cos":
            return b + (a - b) * 0.5 * (1 + math.cos(math.pi * t))
        return a + (b - a) * t

    def factor(self, epoch: int, progress: float) -> float:
        lo = 1.0 / self.div_factor
        end = lo / self.final_div_factor
        if progress < self.warmup:
            return self._interp(lo, 1.0, min(max(progress, 0.0), 1.0) / self.warmup)
        return self._interp(1.0, end, min((progress - self.warmup) / (1 - self.warmup), 1.0))

    def momentum(self, epoch: int, progress: float) -> float | None:
        if not self.cycle_momentum:
            return None
        a, b, t = self._phase(progress)
        h = self._interp(a, b, t)  # 0 at start/end, 1 at the peak of the learning rate
        return self.max_momentum - (self.max_momentum - self.min_momentum) * h


@SCHEDULES.register("cyclic", "triangular")
class Cyclic(Schedule):
    """Triangular cyclic learning rate (Smith 2017) between the base rate and
    ``max_factor`` x base over ``period`` epochs (up for half, down for half).
    ``mode='triangular2'`` halves the amplitude every cycle."""

    def __init__(self, max_factor: float = 10.0, period: int = 10, mode: str = "triangular") -> None:
        if period < 2 or max_factor < 1:
            raise ValueError("cyclic needs period >= 2 epochs and max_factor >= 1")
        if mode not in ("triangular", "triangular2"):
            raise ValueError("cyclic: mode must be 'triangular' or 'triangular2'")
        self.max_factor, self.period, self.mode = max_factor, period, mode

    def factor(self, epoch: int, progress: float) -> float:
        cycle, pos = divmod(epoch, self.period)
        height = 1.0 - abs(2.0 * pos / self.period - 1.0)
        amplitude = self.max_factor - 1.0
        if self.mode == "triangular2":
            amplitude /= 2.0**cycle
        return 1.0 + amplitude * height


@SCHEDULES.register("exponential", "exp")
class Exponential(Schedule):
    """Multiply by ``gamma`` every epoch (gamma=0.5 halves the rate each epoch)."""

    def __init__(self, gamma: float = 0.95, min_factor: float = 0.0) -> None:
        if not 0 < gamma <= 1:
            raise ValueError("exponential needs 0 < gamma <= 1")
        self.gamma, self.min_factor = gamma, min_factor

    def factor(self, epoch: int, progress: float) -> float:
        return max(self.gamma**epoch, self.min_factor)
