"""Attribution methods on one input batch: gradients (saliency, deconvnet, guided backprop),
Grad-CAM / Grad-CAM++, occlusion, integrated gradients, SmoothGrad and per-channel shares.

All functions take the model, an input ``x`` of shape ``(B, C, *S)`` and a target (logits ->
``(B,)``, see :mod:`delineo.explain.targets`) and return a tensor on ``x``'s grid: ``(B, C, *S)``
for per-input-channel maps, ``(B, 1, *S)`` for spatial maps. They use ``torch.autograd.grad``
with respect to the input (or a layer output) only, so no parameter ``.grad`` is touched, and
they run the model in eval mode, restoring its flags afterwards.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from delineo.errors import DelineoError
from delineo.explain.layers import capture, eval_mode
from delineo.explain.rules import RULES, gradient_rule
from delineo.explain.targets import TargetFn


def _first(out):
    return out[0] if isinstance(out, (list, tuple)) else out


def input_gradient(model: nn.Module, x: torch.Tensor, target: TargetFn, rule: str = "saliency",
                   passthrough: tuple[type[nn.Module], ...] = ()) -> torch.Tensor:
    """Gradient of the target with respect to the input, through ``rule``'s activation backward.

    ``saliency`` is the plain gradient (no rule machinery), ``deconvnet`` and ``guided-backprop``
    route every activation through :func:`delineo.explain.rules.gradient_rule`.
    """
    if rule not in RULES:
        raise DelineoError(f"unknown gradient rule '{rule}'; known: {', '.join(RULES)}.")
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad(), eval_mode(model):
        if rule == "saliency":
            out = _first(model(x))
        else:
            with gradient_rule(model, rule, passthrough):
                out = _first(model(x))
        j = target(out)
    (grad,) = torch.autograd.grad(j.sum(), x, allow_unused=True)
    return torch.zeros_like(x) if grad is None else grad.detach()


def saliency(model: nn.Module, x: torch.Tensor, target: TargetFn) -> torch.Tensor:
    """Simonyan et al. 2014: the signed input gradient ``dJ/dx`` (``(B, C, *S)``)."""
    return input_gradient(model, x, target, "saliency")


def deconvnet(model: nn.Module, x: torch.Tensor, target: TargetFn,
              passthrough: tuple[type[nn.Module], ...] = ()) -> torch.Tensor:
    """Zeiler & Fergus 2014: activations pass only positive output gradients, ignoring their input."""
    return input_gradient(model, x, target, "deconvnet", passthrough)


def guided_backprop(model: nn.Module, x: torch.Tensor, target: TargetFn,
                    passthrough: tuple[type[nn.Module], ...] = ()) -> torch.Tensor:
    """Springenberg et al. 2015: activations pass ``f'(C) * R`` only where ``R > 0``."""
    return input_gradient(model, x, target, "guided-backprop", passthrough)


def gradcam(model: nn.Module, x: torch.Tensor, target: TargetFn, layer: str, plus_plus: bool = False,
            upsample: bool = True) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al. 2017) or Grad-CAM++ (Chattopadhyay et al. 2018) at ``layer``.

    Grad-CAM weighs each channel ``A_k`` of the layer output by its spatially averaged gradient;
    Grad-CAM++ by ``sum(alpha * relu(dJ/dA_k))`` with the closed-form ``alpha`` of the paper.
    The ReLU of the weighted sum is returned, (bi/tri)linearly resized to the input grid when
    ``upsample`` (else at the layer's resolution): ``(B, 1, *S)``.
    """
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad(), eval_mode(model), capture(model, layer) as cap:
        j = target(_first(model(x)))
    acts = cap.output
    if acts is None or acts.dim() < 3:
        raise DelineoError(f"layer '{layer}' has no spatial output; Grad-CAM needs a convolution layer.")
    (grads,) = torch.autograd.grad(j.sum(), acts, allow_unused=True)
    if grads is None:
        grads = torch.zeros_like(acts)
    acts, grads = acts.detach(), grads.detach()
    dims = tuple(range(2, acts.dim()))
    if plus_plus:
        g2, g3 = grads ** 2, grads ** 3
        denom = 2 * g2 + (acts * g3).sum(dims, keepdim=True)
        alpha = g2 / torch.where(denom != 0, denom, torch.ones_like(denom))
        weights = (alpha * grads.clamp(min=0)).sum(dims, keepdim=True)
    else:
        weights = grads.mean(dims, keepdim=True)
    cam = (weights * acts).sum(1, keepdim=True).clamp(min=0)
    if upsample and tuple(cam.shape[2:]) != tuple(x.shape[2:]):
        mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[cam.dim() - 2]
        cam = F.interpolate(cam, size=tuple(x.shape[2:]), mode=mode, align_corners=False)
    return cam


def _window_starts(size: int, patch: int, stride: int) -> list[int]:
    if patch >= size:
        return [0]
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:
        starts.append(size - patch)  # cover the far border too
    return starts


def _per_dim(value: int | Sequence[int], n: int, what: str) -> tuple[int, ...]:
    values = (int(value),) * n if isinstance(value, (int, float)) else tuple(int(v) for v in value)
    if len(values) != n or min(values) < 1:
        raise DelineoError(f"{what} must be a positive integer or {n} of them, got {value}.")
    return values


@torch.no_grad()
def occlusion(model: nn.Module, x: torch.Tensor, target: TargetFn, patch: int | Sequence[int] = 8,
              stride: int | Sequence[int] | None = None, value: float = 0.0,
              batch_size: int = 8) -> torch.Tensor:
    """Zeiler & Fergus 2014: slide a patch filled with ``value`` over all channels and record
    ``J(x) - J(x occluded)``; each voxel gets the mean change over the patches covering it.

    Positive values mean hiding the voxel lowers the target. Returns ``(B, 1, *S)``.
    """
    spatial = tuple(x.shape[2:])
    patch = tuple(min(p, s) for p, s in zip(_per_dim(patch, len(spatial), "patch"), spatial))
    stride = patch if stride is None else _per_dim(stride, len(spatial), "stride")
    grids = torch.meshgrid(*[torch.tensor(_window_starts(s, p, st)) for s, p, st in zip(spatial, patch, stride)],
                           indexing="ij")
    starts = torch.stack([g.reshape(-1) for g in grids], 1).tolist()
    result = torch.zeros((x.shape[0], 1) + spatial, dtype=x.dtype)
    with eval_mode(model):
        for b in range(x.shape[0]):
            xb = x[b:b + 1]
            j0 = target(_first(model(xb)))[0]
            total = torch.zeros(spatial, dtype=x.dtype)
            count = torch.zeros(spatial, dtype=x.dtype)
            for i in range(0, len(starts), batch_size):
                chunk = starts[i:i + batch_size]
                windows = [tuple(slice(s, s + p) for s, p in zip(st, patch)) for st in chunk]
                batch = xb.repeat(len(chunk), *([1] * (x.dim() - 1)))
                for k, w in enumerate(windows):
                    batch[(k, slice(None)) + w] = value
                change = j0 - target(_first(model(batch)))
                for k, w in enumerate(windows):
                    total[w] += change[k].item()
                    count[w] += 1
            result[b, 0] = total / count.clamp(min=1)
    return result


def integrated_gradients(model: nn.Module, x: torch.Tensor, target: TargetFn,
                         baseline: float | torch.Tensor | None = None, steps: int = 32,
                         batch_size: int = 8) -> torch.Tensor:
    """Sundararajan et al. 2017: ``(x - x0) * mean gradient`` along the straight path from the
    baseline ``x0`` (default zeros), midpoint Riemann sum with ``steps`` points. ``(B, C, *S)``.

    The attributions sum to about ``J(x) - J(x0)`` (completeness), better with more steps.
    """
    if steps < 1:
        raise DelineoError(f"integrated gradients needs steps >= 1, got {steps}.")
    base = torch.zeros_like(x) if baseline is None else torch.as_tensor(baseline, dtype=x.dtype).expand_as(x)
    alphas = (torch.arange(steps, dtype=x.dtype) + 0.5) / steps
    result = torch.zeros_like(x)
    for b in range(x.shape[0]):
        diff = x[b] - base[b]
        total = torch.zeros_like(diff)
        for i in range(0, steps, batch_size):
            a = alphas[i:i + batch_size].view(-1, *([1] * diff.dim()))
            total += input_gradient(model, base[b] + a * diff, target).sum(0)
        result[b] = diff * total / steps
    return result


def smoothgrad(model: nn.Module, x: torch.Tensor, target: TargetFn, noise_level: float = 0.15,
               samples: int = 16, rule: str = "saliency", seed: int = 0, batch_size: int = 8,
               passthrough: tuple[type[nn.Module], ...] = ()) -> torch.Tensor:
    """Smilkov et al. 2017: mean of ``rule``'s input gradient over ``samples`` noisy copies,
    Gaussian noise with ``sigma = noise_level * (max(x) - min(x))`` per item. ``(B, C, *S)``."""
    if samples < 1:
        raise DelineoError(f"SmoothGrad needs samples >= 1, got {samples}.")
    gen = torch.Generator().manual_seed(int(seed))
    result = torch.zeros_like(x)
    for b in range(x.shape[0]):
        xb = x[b]
        sigma = noise_level * float(xb.max() - xb.min())
        for i in range(0, samples, batch_size):
            n = min(batch_size, samples - i)
            noise = torch.randn((n,) + tuple(xb.shape), generator=gen, dtype=x.dtype) * sigma
            result[b] += input_gradient(model, xb.unsqueeze(0) + noise, target, rule, passthrough).sum(0)
        result[b] /= samples
    return result


def channel_shares(attribution: torch.Tensor, mask: torch.Tensor) -> dict[str, list[float]]:
    """Share of attribution magnitude per input channel inside and outside ``mask``.

    ``attribution`` is ``(C, *S)``, ``mask`` ``(*S)``; each list sums to 1 (or is all zeros
    when that region is empty or carries no attribution).
    """
    mag = attribution.detach().abs().flatten(1).double()
    inside = torch.as_tensor(mask).flatten().to(mag.device) > 0
    shares = {}
    for key, where in (("inside", inside), ("outside", ~inside)):
        per_channel = mag[:, where].sum(1)
        total = float(per_channel.sum())
        shares[key] = [float(v) / total if total > 0 else 0.0 for v in per_channel]
    return shares


def channel_contribution(model: nn.Module, x: torch.Tensor, target: TargetFn,
                         method: str = "integrated-gradients", **params) -> torch.Tensor:
    """Attribution magnitude per input channel ``|A_c|`` (``(B, C, *S)``) from ``method``
    (``integrated-gradients``, ``saliency`` -> gradient x input, ``guided-backprop``, ``smoothgrad``);
    summarise it with :func:`channel_shares` against the predicted structure."""
    if method == "integrated-gradients":
        attr = integrated_gradients(model, x, target, **params)
    elif method in RULES:
        attr = input_gradient(model, x, target, method, **params) * x
    elif method == "smoothgrad":
        attr = smoothgrad(model, x, target, **params) * x
    else:
        raise DelineoError(f"channel contribution cannot use method '{method}'; use integrated-gradients, "
                           "saliency, deconvnet, guided-backprop or smoothgrad.")
    return attr.abs()
