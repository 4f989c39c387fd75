"""Model-randomisation sanity check (Adebayo et al. 2018, "Sanity checks for saliency maps").

An explanation of what the *trained* model does must change when the model's weights are
destroyed. The check randomises the parameterised layers one after the other from the output
backwards (cascading: earlier randomisations are kept), recomputes the map after each step and
reports the Spearman rank correlation with the original map (signed and of absolute values).
A method whose map still correlates above ``threshold`` after full randomisation does not
depend on what the model learned (it behaves like an edge detector on the input) and is
flagged. The check works on a deep copy; the caller's model is untouched.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from scipy import stats
from torch import nn

from delineo.errors import DelineoError
from delineo.explain.layers import eval_mode, get_layer

MapFn = Callable[[nn.Module], "torch.Tensor | np.ndarray"]


@dataclass
class SanityStep:
    """Correlation with the original map after randomising ``layer`` (and all layers above it)."""

    layer: str
    spearman: float
    spearman_abs: float


@dataclass
class SanityReport:
    method: str
    threshold: float
    steps: list[SanityStep] = field(default_factory=list)

    @property
    def final(self) -> float:
        """Signed rank correlation after full randomisation."""
        return self.steps[-1].spearman if self.steps else float("nan")

    @property
    def flagged(self) -> bool:
        """True when the map hardly changed although every layer was randomised."""
        return bool(self.steps) and self.final > self.threshold

    def table(self) -> str:
        """Plain-text table: one row per cascading randomisation step, then the verdict."""
        width = max([len("layer")] + [len(s.layer) for s in self.steps])
        lines = [f"{'layer':<{width}}  spearman  spearman(|map|)"]
        lines += [f"{s.layer:<{width}}  {s.spearman:8.3f}  {s.spearman_abs:15.3f}" for s in self.steps]
        verdict = ("FAILED: the map does not depend on the model's weights"
                   if self.flagged else "passed: the map changes when the weights are randomised")
        lines.append(f"{self.method or 'method'}: {verdict} (final correlation {self.final:.3f}, "
                     f"threshold {self.threshold}).")
        return "\n".join(lines)


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman correlation of two maps; 1 if both are the same constant, 0 if one is constant."""
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 1.0 if np.array_equal(a, b) else 0.0
    return float(stats.spearmanr(a, b)[0])


def randomisation_order(model: nn.Module, x: torch.Tensor) -> list[str]:
    """Names of the leaf layers with parameters that run in ``model(x)``, output side first."""
    order: list[str] = []
    handles = []
    for name, module in model.named_modules():
        if name and next(module.children(), None) is None and any(True for _ in module.parameters(recurse=False)):
            handles.append(module.register_forward_hook(
                lambda m, i, o, _n=name: order.append(_n) if _n not in order else None))
    try:
        with torch.no_grad(), eval_mode(model):
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return order[::-1]


@torch.no_grad()
def randomise_layer(module: nn.Module, generator: torch.Generator) -> None:
    """Replace the layer's own parameters with Gaussian noise of the same scale (std of each
    tensor, or of its magnitude when it is constant, e.g. a norm's unit weight)."""
    for param in module.parameters(recurse=False):
        std = float(param.std()) if param.numel() > 1 else 0.0
        if not std > 1e-8:
            std = float(param.abs().mean()) or 1.0
        noise = torch.randn(param.shape, generator=generator, dtype=param.dtype) * std
        param.copy_(noise.to(param.device))


def sanity_check(model: nn.Module, x: torch.Tensor, map_fn: MapFn, layers: Sequence[str] | None = None,
                 method: str = "", threshold: float = 0.9, seed: int = 0) -> SanityReport:
    """Cascading model-randomisation check of ``map_fn`` (a model -> map function).

    ``x`` is one network input ``(1, C, *S)`` used to find the layers that run and their order;
    ``layers`` overrides that order (names from :func:`delineo.explain.layers.list_layers`).
    """
    original = _as_array(map_fn(model))
    clone = copy.deepcopy(model)
    names = list(layers) if layers is not None else randomisation_order(clone, x)
    if not names:
        raise DelineoError("the model has no layers with parameters to randomise.")
    gen = torch.Generator().manual_seed(int(seed))
    report = SanityReport(method, threshold)
    for name in names:
        randomise_layer(get_layer(clone, name), gen)
        randomised = _as_array(map_fn(clone))
        report.steps.append(SanityStep(name, rank_correlation(original, randomised),
                                       rank_correlation(np.abs(original), np.abs(randomised))))
    return report


def _as_array(value) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
