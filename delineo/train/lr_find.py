"""Learning-rate range test (Smith 2017; the fastai ``lr_find``).

The rate grows exponentially from ``start`` to ``end`` over ``steps`` mini-batches; the loss is
smoothed with an exponential moving average (bias-corrected) and the sweep stops once it exceeds
``diverge`` times the best smoothed loss. The suggestion is the rate at the steepest descent of
the smoothed loss against log(lr). Model weights (and the optimiser's state, when one is given)
are restored afterwards.
"""

from __future__ import annotations

import copy
import math
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn


def lr_find(model: nn.Module, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
            batches: Iterable[tuple[torch.Tensor, torch.Tensor]], start: float = 1e-7, end: float = 1.0,
            steps: int = 100, optimizer: torch.optim.Optimizer | None = None, beta: float = 0.98,
            diverge: float = 4.0, skip_start: int = 10) -> tuple[list[float], list[float], float | None]:
    """Return ``(lrs, smoothed_losses, suggestion)``; ``suggestion`` is None for < 3 steps.

    The first ``skip_start`` points are not considered for the suggestion.

    ``batches`` is cycled (re-iterated) if it has fewer than ``steps`` batches. Without an
    ``optimizer``, SGD with momentum 0.9 is used.
    """
    if not 0 < start < end or steps < 2:
        raise ValueError("lr_find needs 0 < start < end and steps >= 2")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    saved_model = copy.deepcopy(model.state_dict())
    saved_opt = copy.deepcopy(optimizer.state_dict()) if optimizer is not None else None
    was_training = model.training
    opt = optimizer or torch.optim.SGD(model.parameters(), lr=start, momentum=0.9)
    mult = (end / start) ** (1.0 / (steps - 1))
    lrs: list[float] = []
    losses: list[float] = []
    avg, best = 0.0, math.inf
    model.train()
    try:
        it = iter(batches)
        for step in range(steps):
            try:
                x, y = next(it)
            except StopIteration:
                it = iter(batches)
                try:
                    x, y = next(it)
                except StopIteration:
                    break
            lr = start * mult**step
            for group in opt.param_groups:
                group["lr"] = lr
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x.to(device)), y.to(device))
            if not torch.isfinite(loss):
                break
            loss.backward()
            opt.step()
            avg = beta * avg + (1 - beta) * loss.item()
            smoothed = avg / (1 - beta ** (step + 1))
            lrs.append(lr)
            losses.append(smoothed)
            best = min(best, smoothed)
            if step > 0 and smoothed > diverge * best:
                break
    finally:
        model.load_state_dict(saved_model)
        if optimizer is not None and saved_opt is not None:
            optimizer.load_state_dict(saved_opt)
        model.train(was_training)
    return lrs, losses, suggest(lrs, losses, skip_start)


def suggest(lrs: list[float], losses: list[float], skip_start: int = 10) -> float | None:
    """Rate at the most negative slope of the smoothed loss vs log(lr), between the first
    ``skip_start`` (noisy moving-average start-up) points and the minimum of the loss."""
    if len(lrs) < 3:
        return None
    loss = np.asarray(losses, dtype=float)
    skip = min(skip_start, max(0, len(lrs) - 3))
    stop = max(int(np.argmin(loss[skip:])) + skip + 1, skip + 3)  # past the minimum it only rises
    grad = np.gradient(loss[skip:stop], np.log(np.asarray(lrs[skip:stop])))
    return float(lrs[skip + int(np.argmin(grad))])


def plot_lr_find(lrs: list[float], losses: list[float], suggestion: float | None, out_png: str) -> None:
    """Loss against learning rate (log axis), the suggestion marked; written to ``out_png``."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.plot(lrs, losses)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss (smoothed)")
    if suggestion is not None:
        ax.axvline(suggestion, color="red", linestyle="--", label=f"suggestion {suggestion:.2e}")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)


def lr_find_experiment(cfg, runs_root: str = "runs", fold: int | None = 0, cache_root: str | None = None,
                       steps: int = 100, start: float = 1e-7, end: float = 1.0,
                       out_png: str | None = None) -> tuple[list[float], list[float], float | None]:
    """Range test of an experiment: its network, loss and optimiser on augmented batches from its
    training sampler (the fold's training cases). Nothing is written to the run folders except the
    shared preprocessing cache (``runs_root/<name>/cache`` unless ``cache_root``); the plot goes to
    ``out_png`` when given. Returns ``(lrs, smoothed_losses, suggestion)``."""
    import tempfile
    from pathlib import Path

    from delineo.losses import deep_supervised
    from delineo.train.loop import Trainer, _seed_for

    cache = Path(cache_root) if cache_root else Path(runs_root) / cfg.name / "cache"
    cfg = cfg.model_copy(deep=True)
    cfg.track.mirrors = []  # a range test is not a training: nothing to mirror
    with tempfile.TemporaryDirectory(prefix="delineo-lr-find-") as tmp:
        trainer = Trainer(cfg, Path(tmp), fold, cache_root=cache, progress=False, track=False)
        trainer.setup()
        seed = _seed_for(cfg.train.seed, 0, 0)

        class Batches:
            def __iter__(self):
                rng = np.random.default_rng(seed)
                gen = torch.Generator().manual_seed(seed)
                for _ in range(steps):
                    yield trainer.batch(rng, gen)

        def loss_fn(out, target):
            return deep_supervised(trainer.loss_fn, out, target)

        lrs, losses, suggestion = lr_find(trainer.model, loss_fn, Batches(), start, end, steps,
                                          optimizer=trainer.optimizer, skip_start=min(10, steps // 5))
    if out_png:
        Path(out_png).parent.mkdir(parents=True, exist_ok=True)
        plot_lr_find(lrs, losses, suggestion, str(out_png))
    return lrs, losses, suggestion
