"""What a layer computes: activation maps for one input, and activation maximisation.

Activation maps show a layer's output channels on the input; ranking them by their mean inside
the predicted structure picks the channels that respond to the structure rather than to the
background. Activation maximisation synthesises the input a filter (or a label output)
responds to most, by normalised gradient ascent from noise with the usual regularisers
(jitter, total variation, L2) that keep the result from being high-frequency noise.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from delineo.errors import DelineoError
from delineo.explain.layers import capture, eval_mode, layer_output
from delineo.explain.targets import label_channel


def resize_to(maps: torch.Tensor, spatial: Sequence[int]) -> torch.Tensor:
    """Linearly resize ``(B, K, *s)`` maps to ``spatial`` (identity when already that size)."""
    if tuple(maps.shape[2:]) == tuple(spatial):
        return maps
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[maps.dim() - 2]
    return F.interpolate(maps, size=tuple(spatial), mode=mode, align_corners=False)


def activation_maps(model: nn.Module, x: torch.Tensor, layer: str, upsample: bool = True) -> torch.Tensor:
    """Output of ``layer`` for ``x`` (``(B, K, *s)``), resized to ``x``'s grid when ``upsample``."""
    acts = layer_output(model, x, layer).detach()
    if acts.dim() < 3:
        raise DelineoError(f"layer '{layer}' has no spatial output (shape {tuple(acts.shape)}).")
    return resize_to(acts, x.shape[2:]) if upsample else acts


def rank_channels(maps: torch.Tensor, mask: torch.Tensor | None) -> tuple[list[int], list[float]]:
    """Channels of ``maps`` (``(K, *S)``) ordered by mean activation inside ``mask`` (``(*S)``),
    highest first, with those means. Without a mask (or an empty one) the whole grid counts."""
    flat = maps.detach().flatten(1).double()
    if mask is not None and bool((torch.as_tensor(mask) > 0).any()):
        inside = torch.as_tensor(mask).flatten().to(flat.device) > 0
        flat = flat[:, inside]
    means = flat.mean(1)
    order = torch.argsort(means, descending=True, stable=True)
    return order.tolist(), means[order].tolist()


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between neighbouring voxels along every spatial axis."""
    return sum(x.diff(dim=d).abs().mean() for d in range(2, x.dim()))


def activation_maximisation(model: nn.Module, shape: Sequence[int], layer: str | None = None,
                            channel: int = 0, label: int | None = None, steps: int = 128,
                            step_size: float = 0.05, jitter: int = 0, tv_weight: float = 0.0,
                            l2_weight: float = 0.0, init_std: float = 0.1, seed: int = 0) -> torch.Tensor:
    """Input ``(C, *S)`` (``shape``) that maximises a filter's or a label's mean output.

    Objective: the mean of channel ``channel`` of ``layer``'s output or, without ``layer``, the
    mean logit of ``label``; minus ``tv_weight`` * total variation and ``l2_weight`` * mean
    square of the input. Each of ``steps`` ascent steps moves the input by ``step_size`` times
    the gradient divided by its root mean square, so the step length does not depend on the
    layer's scale. ``jitter`` > 0 randomly rolls the input by up to that many voxels per axis
    before each step (robustness to translation). Works for 2D and 3D models alike.
    """
    gen = torch.Generator().manual_seed(int(seed))
    x = torch.randn(tuple(int(s) for s in shape), generator=gen) * init_std
    x = x.unsqueeze(0)
    ndim = x.dim() - 2
    with torch.enable_grad(), eval_mode(model):
        for _ in range(int(steps)):
            x = x.detach().requires_grad_(True)
            shifts = [int(torch.randint(-jitter, jitter + 1, (1,), generator=gen)) for _ in range(ndim)] \
                if jitter > 0 else [0] * ndim
            xin = torch.roll(x, shifts, dims=tuple(range(2, x.dim()))) if jitter > 0 else x
            if layer is None:
                out = model(xin)
                out = out[0] if isinstance(out, (list, tuple)) else out
                objective = out[:, label_channel(out.shape[1], label)].mean()
            else:
                with capture(model, layer) as cap:
                    model(xin)
                acts = cap.output
                if acts is None:
                    raise DelineoError(f"layer '{layer}' is not used in the model's forward pass.")
                if not 0 <= channel < acts.shape[1]:
                    raise DelineoError(f"layer '{layer}' has {acts.shape[1]} channels; channel {channel} does not exist.")
                objective = acts[:, channel].mean()
            if tv_weight:
                objective = objective - tv_weight * total_variation(x)
            if l2_weight:
                objective = objective - l2_weight * (x ** 2).mean()
            (grad,) = torch.autograd.grad(objective, x)
            rms = grad.pow(2).mean().sqrt()
            if rms == 0:
                break
            x = x.detach() + step_size * grad / (rms + 1e-12)
    return x.detach()[0]
