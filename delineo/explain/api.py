"""``explain``: one call from a model and an image array to a map on the image's grid.

The functional core (:mod:`~delineo.explain.attribution`, :mod:`~delineo.explain.activation`)
works on one network input. This module adds what a whole scan needs: the model's own
prediction (for the target and for ranking/summaries), the target masks cut consistently with
the input, patch-wise stitching for 3D inputs larger than the training patch, and slice-by-slice
processing for 2D / 2.5D models. Explanations of a patch or slice explain the target *inside
that patch or slice* (the model never sees more), blended into one map.

Method names (:data:`METHODS`): activation, activation-maximisation, saliency, deconvnet,
guided-backprop, gradcam, gradcam++, occlusion, integrated-gradients, smoothgrad,
channel-contribution. What the map holds:

- per input channel, ``(C, *S)``: saliency, deconvnet, guided-backprop, integrated-gradients,
  smoothgrad, channel-contribution (``|attribution|``; shares in ``Explanation.info``);
- spatial, ``(*S)``: gradcam, gradcam++, occlusion;
- per layer channel, ``(K, *S)``: activation (resized to the image grid; with
  ``rank=True`` ordered by mean activation inside the prediction, ``top`` keeps the first);
- activation-maximisation: a synthetic network input, ``(C, *S)`` in 3D mode (``S`` the image
  or patch size), ``(C * (2 * context + 1), H, W)`` for 2D / 2.5D models (one slice).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from delineo.errors import DelineoError
from delineo.explain import activation as act
from delineo.explain import attribution as attr
from delineo.explain.layers import eval_mode, get_layer
from delineo.explain.sanity import SanityReport, sanity_check
from delineo.explain.stitch import slice_by_slice, stack_neighbours, stitch_patches
from delineo.explain.targets import label_channel, make_target, region_mask
from delineo.losses.dice import probabilities
from delineo.registry import closest

MODES = ("3d", "2d", "2.5d")


@dataclass(frozen=True)
class Method:
    """An explanation method on one network input ``x`` ``(1, C, *P)`` -> ``(1, C_out, *P)``.

    ``kind`` is ``'input'`` (per input channel), ``'spatial'`` (one map), ``'layer'`` (per
    layer channel) or ``'synthetic'`` (an optimised input; no image needed).
    """

    name: str
    fn: Callable[..., torch.Tensor]
    kind: str
    needs_layer: bool = False
    doc: str = ""


METHODS: dict[str, Method] = {}


def register_method(name: str, kind: str, needs_layer: bool = False) -> Callable:
    """Decorator adding ``fn(model, x, target, layer, **params)`` to :data:`METHODS`."""
    def decorator(fn: Callable) -> Callable:
        if name in METHODS:
            raise ValueError(f"explanation method '{name}' is already registered")
        doc = (fn.__doc__ or "").strip()
        METHODS[name] = Method(name, fn, kind, needs_layer, doc.splitlines()[0] if doc else "")
        return fn
    return decorator


@register_method("activation", "layer", needs_layer=True)
def _activation(model, x, target, layer, upsample: bool = True):
    """Output channels of a layer, resized to the input grid."""
    return act.activation_maps(model, x, layer, upsample)


@register_method("activation-maximisation", "synthetic")
def _activation_max(model, x, target, layer, channel: int = 0, label: int | None = None, steps: int = 128,
                    step_size: float = 0.05, jitter: int = 0, tv_weight: float = 0.0, l2_weight: float = 0.0,
                    init_std: float = 0.1, seed: int = 0):
    """Input maximising a layer channel's mean (``layer``, ``channel``) or a label's mean logit."""
    return act.activation_maximisation(model, tuple(x.shape[1:]), layer, channel, label, steps, step_size,
                                       jitter, tv_weight, l2_weight, init_std, seed).unsqueeze(0)


@register_method("saliency", "input")
def _saliency(model, x, target, layer):
    """Signed input gradient of the target."""
    return attr.saliency(model, x, target)


@register_method("deconvnet", "input")
def _deconvnet(model, x, target, layer, passthrough: tuple = ()):
    """Deconvnet: activations pass positive output gradients only."""
    return attr.deconvnet(model, x, target, tuple(passthrough))


@register_method("guided-backprop", "input")
def _guided(model, x, target, layer, passthrough: tuple = ()):
    """Guided backpropagation: activations pass f'(C) * R where R > 0."""
    return attr.guided_backprop(model, x, target, tuple(passthrough))


@register_method("gradcam", "spatial", needs_layer=True)
def _gradcam(model, x, target, layer):
    """Grad-CAM at a convolution layer."""
    return attr.gradcam(model, x, target, layer)


@register_method("gradcam++", "spatial", needs_layer=True)
def _gradcam_pp(model, x, target, layer):
    """Grad-CAM++ at a convolution layer."""
    return attr.gradcam(model, x, target, layer, plus_plus=True)


@register_method("occlusion", "spatial")
def _occlusion(model, x, target, layer, patch: int | Sequence[int] = 8, stride=None, value: float = 0.0,
               batch_size: int = 8):
    """Drop of the target when a patch of the input is replaced by a value."""
    return attr.occlusion(model, x, target, patch, stride, value, batch_size)


@register_method("integrated-gradients", "input")
def _integrated(model, x, target, layer, baseline=None, steps: int = 32, batch_size: int = 8):
    """Integrated gradients from a baseline (default zeros)."""
    return attr.integrated_gradients(model, x, target, baseline, steps, batch_size)


@register_method("smoothgrad", "input")
def _smoothgrad(model, x, target, layer, noise_level: float = 0.15, samples: int = 16, rule: str = "saliency",
                seed: int = 0, batch_size: int = 8, passthrough: tuple = ()):
    """Gradient averaged over noisy copies of the input."""
    return attr.smoothgrad(model, x, target, noise_level, samples, rule, seed, batch_size, tuple(passthrough))


@register_method("channel-contribution", "input")
def _channel_contribution(model, x, target, layer, base: str = "integrated-gradients", **params):
    """Attribution magnitude per input channel (shares inside/outside the prediction in info)."""
    return attr.channel_contribution(model, x, target, base, **params)


@dataclass
class Explanation:
    """A map plus what was needed to read it: the model's prediction and method details."""

    map: np.ndarray
    prediction: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)


def _check_params(method: Method, params: dict[str, Any]) -> None:
    sig = inspect.signature(method.fn)
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return
    valid = [n for n in sig.parameters if n not in ("model", "x", "target", "layer")]
    for key in params:
        if key not in valid:
            raise DelineoError(f"unknown parameter '{key}' for method '{method.name}'{closest(key, valid)}; "
                               f"valid: {', '.join(valid) or 'none'}.")


def get_method(name: str) -> Method:
    key = str(name).lower()
    if key not in METHODS:
        raise DelineoError(f"unknown explanation method '{name}'{closest(key, METHODS)}; "
                           f"known: {', '.join(METHODS)}.")
    return METHODS[key]


class _Runner:
    """Applies a per-network-input function to the whole image according to mode / patch size."""

    def __init__(self, image: torch.Tensor, mode: str, patch_size, axis: int, context: int, overlap: float) -> None:
        if mode not in MODES:
            raise DelineoError(f"mode must be one of {', '.join(MODES)}, got '{mode}'.")
        self.image, self.mode, self.patch_size = image, mode, patch_size
        self.axis, self.context, self.overlap = axis, (context if mode == "2.5d" else 0), overlap
        self.sliced = mode != "3d" and image.dim() == 4
        if mode == "2.5d" and not self.sliced:
            raise DelineoError("mode '2.5d' needs a 3D image (C, X, Y, Z).")

    def __call__(self, fn: Callable[..., torch.Tensor], extras: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        def tiled(x: torch.Tensor, *e: torch.Tensor) -> torch.Tensor:
            if self.patch_size is None:
                return fn(x, *e)
            return stitch_patches(fn, x, self.patch_size, self.overlap, extras=e)

        if self.sliced:
            return slice_by_slice(tiled, self.image, self.axis, self.context, extras=extras)
        return tiled(self.image, *extras)

    def example_input(self) -> torch.Tensor:
        """One network input (1, C', *P): the first patch of the (middle) slice or volume."""
        x = stack_neighbours(self.image, self.axis, self.image.shape[self.axis + 1] // 2, self.context) \
            if self.sliced else self.image
        if self.patch_size is not None:
            spatial = x.shape[1:]
            patch = (self.patch_size,) * len(spatial) if isinstance(self.patch_size, int) else self.patch_size
            x = x[(slice(None),) + tuple(slice(0, min(int(p), s)) for p, s in zip(patch, spatial))]
        return x.unsqueeze(0)


def _label_mask(reference: np.ndarray, num_outputs: int, label: int | None) -> np.ndarray:
    ref = np.asarray(reference)
    if num_outputs > 1 and ref.max() > 1:
        return ref == label_channel(num_outputs, label)
    return ref > 0


def explain_full(model: nn.Module, image: np.ndarray, method: str, target: str = "positive-prediction",
                 layer: str | None = None, mode: str = "3d", patch_size: int | Sequence[int] | None = None,
                 axis: int = 2, context: int = 1, threshold: float = 0.5, label: int | None = None,
                 reference: np.ndarray | None = None, mask: np.ndarray | None = None,
                 component: int | Sequence[int] | str = "largest", overlap: float = 0.5, rank: bool = False,
                 top: int | None = None, **method_params: Any) -> Explanation:
    """Like :func:`explain`, returning the map with the prediction mask and method details
    (``info['shares']`` for channel-contribution, ``info['channels']`` / ``info['means']``
    for a ranked activation map, ``info['target']``, ``info['method']``)."""
    spec = get_method(method)
    _check_params(spec, method_params)
    if spec.needs_layer and not layer:
        raise DelineoError(f"method '{spec.name}' needs a layer (see list_layers(model)).")
    if layer:
        get_layer(model, layer)
    image = np.asarray(image)
    if image.ndim not in (3, 4):
        raise DelineoError(f"image must be (C, X, Y) or (C, X, Y, Z), got shape {image.shape}.")
    if not np.all(np.isfinite(image)):
        raise DelineoError("the image contains NaN or infinite values.")
    volume = torch.as_tensor(image, dtype=torch.float32)
    runner = _Runner(volume, mode, patch_size, axis, context, overlap)
    spatial = tuple(volume.shape[1:])
    info: dict[str, Any] = {"method": spec.name, "target": target if isinstance(target, str) else "custom"}

    with eval_mode(model):
        probs = _probabilities(model, runner)
        num_outputs = probs.shape[0]
        prediction = (probs[label_channel(num_outputs, label)] >= threshold).numpy()

        if spec.kind == "synthetic":
            params = dict(method_params)
            if "label" in inspect.signature(spec.fn).parameters:
                params.setdefault("label", label)
            result = spec.fn(model, runner.example_input(), None, layer, **params)[0]
            return Explanation(result.numpy().astype(np.float32), prediction, info)

        extras: list[torch.Tensor] = []
        names: list[str] = []
        if reference is not None:
            ref = np.asarray(reference)
            if tuple(ref.shape[-len(spatial):]) != spatial:
                raise DelineoError(f"reference shape {ref.shape} does not match the image grid {spatial}.")
            extras.append(torch.as_tensor(_label_mask(ref.reshape(spatial), num_outputs, label), dtype=torch.float32)[None])
            names.append("reference")
        if target == "region" and mask is None:
            mask = region_mask(prediction, component)
        if mask is not None:
            m = np.asarray(mask).reshape(spatial) > 0
            extras.append(torch.as_tensor(m, dtype=torch.float32)[None])
            names.append("mask")

        k = 2 * runner.context + 1
        centre = torch.arange(image.shape[0]) * k + runner.context  # channel-major 2.5D stacking

        # a method that judges the prediction itself (lesion-occlusion) gets the explanation's
        # threshold, label and reference unless its own parameters say otherwise
        accepted = inspect.signature(spec.fn).parameters
        shared = {k: v for k, v in (("threshold", threshold), ("label", label)) if k in accepted and k not in method_params}

        def one_input(x: torch.Tensor, *e: torch.Tensor) -> torch.Tensor:
            aux = dict(zip(names, e))
            tgt = make_target(target, threshold=threshold, label=label, reference=aux.get("reference"),
                              mask=aux.get("mask"), component=component)
            extra = dict(shared)
            if "reference" in accepted and "reference" in aux:
                extra["reference"] = aux["reference"]
            out = spec.fn(model, x.unsqueeze(0), tgt, layer, **extra, **method_params)[0]
            if spec.kind == "input" and runner.context:
                out = out[centre]  # 2.5D: attribution to the slice's own voxels
            return out

        result = runner(one_input, extras)

    if spec.kind == "spatial":
        result = result[0]
    if spec.name == "channel-contribution":
        info["shares"] = attr.channel_shares(result, torch.as_tensor(prediction))
    if spec.kind == "layer" and (rank or top):
        order, means = act.rank_channels(result, torch.as_tensor(prediction))
        order, means = (order[:top], means[:top]) if top else (order, means)
        result = result[order]
        info["channels"], info["means"] = order, means
    return Explanation(result.numpy().astype(np.float32), prediction, info)


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x.unsqueeze(0))
    return out[0] if isinstance(out, (list, tuple)) else out


@torch.no_grad()
def _probabilities(model: nn.Module, runner: "_Runner") -> torch.Tensor:
    """The model's label probabilities ``(K, *S)`` on the whole image, processed like the map."""
    with eval_mode(model):
        return runner(lambda x: probabilities(_logits(model, x))[0])


def explain(model: nn.Module, image: np.ndarray, method: str, target: str = "positive-prediction",
            layer: str | None = None, mode: str = "3d", patch_size: int | Sequence[int] | None = None,
            axis: int = 2, context: int = 1, threshold: float = 0.5, label: int | None = None,
            reference: np.ndarray | None = None, **method_params: Any) -> np.ndarray:
    """Explain ``model``'s segmentation of ``image`` (``(C, *S)``) with ``method``.

    ``target`` names what is explained (:mod:`delineo.explain.targets`; ``reference`` for
    ``true-positive``; ``mask=`` or ``component=`` for ``region``), ``threshold`` / ``label``
    define the predicted structure. ``mode`` '3d' feeds the volume (patch by patch with Gaussian
    blending when ``patch_size`` is given); '2d' / '2.5d' feed slices along spatial ``axis``,
    2.5D with ``context`` neighbouring slices each side as channels. Further keyword arguments
    go to the method (e.g. ``steps``, ``baseline``, ``patch``, ``noise_level``, ``samples``).
    The shape of the returned map is described in the module docstring.
    """
    return explain_full(model, image, method, target, layer, mode, patch_size, axis, context, threshold,
                        label, reference, **method_params).map


def sanity(model: nn.Module, image: np.ndarray, method: str, layers: Sequence[str] | None = None,
           flag_above: float = 0.9, seed: int = 0, **explain_kwargs: Any) -> SanityReport:
    """Cascading model-randomisation check (:mod:`delineo.explain.sanity`) of ``method`` on
    ``image``; ``explain_kwargs`` are those of :func:`explain` (``threshold`` among them is the
    prediction threshold, as everywhere else). The map is flagged when its rank correlation
    with the trained model's map stays above ``flag_above`` after full randomisation; the
    two used to share the name ``threshold``, so the CLI's 0.5 became the flagging cut-off.
    The model is not modified.

    The explained output is held fixed: a ``positive-prediction`` target becomes the ``region``
    target on the *trained* model's prediction, so a randomised model that predicts nothing
    still has its (changed) attribution for the same voxels compared, not an empty map.
    """
    kwargs = dict(explain_kwargs)
    volume = torch.as_tensor(np.asarray(image), dtype=torch.float32)
    runner = _Runner(volume, kwargs.get("mode", "3d"), kwargs.get("patch_size"),
                     kwargs.get("axis", 2), kwargs.get("context", 1), kwargs.get("overlap", 0.5))
    if kwargs.get("target", "positive-prediction") == "positive-prediction":
        probs = _probabilities(model, runner)
        prediction = probs[label_channel(probs.shape[0], kwargs.get("label"))] >= kwargs.get("threshold", 0.5)
        if prediction.any():
            kwargs.update(target="region", mask=prediction.numpy())
    return sanity_check(model, runner.example_input(),
                        lambda m: explain(m, image, method, **kwargs),
                        layers=layers, method=method, threshold=flag_above, seed=seed)

