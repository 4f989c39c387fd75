"""Modified backward rules through activations: saliency, deconvnet and guided backpropagation.

With ``C`` the input of an activation ``f`` and ``R`` the gradient arriving at its output:

- ``saliency`` passes ``f'(C) * R`` (the ordinary gradient),
- ``deconvnet`` passes ``R`` where ``R > 0`` and ignores ``C``: ``clamp(R, min=0)``,
- ``guided-backprop`` passes ``f'(C) * R`` where ``R > 0``: ``f'(C) * clamp(R, min=0)``.

Why a torch-function mode rather than module hooks (as Captum does): a mode sees every call of
an activation, whether it comes from an ``nn.ReLU`` / ``nn.LeakyReLU`` / ``nn.PReLU`` /
``nn.ELU`` / ``nn.Mish`` module (whose ``forward`` calls the functional form) or from
``F.relu`` / ``torch.relu`` / ``x.relu()`` written inside a block's ``forward``. Each call is
routed through one autograd Function whose backward applies the rule; ``f'`` is obtained from
autograd of the activation itself (with its own slope / alpha / PReLU weight), so the rule is
exact for every elementwise activation. The model's modules, parameters and buffers are never
replaced; only temporary forward hooks (to name the module in error messages) are added and
always removed.

What the rule cannot be applied to is refused with a :class:`DelineoError` naming the module:
custom leaf modules of unknown type (their derivative is unknown to us) and non-elementwise or
gating nonlinearities (``clamp``, ``maximum``, ``where``, comparisons, ``softmax``, ...), whose
treatment under deconvnet / guided backprop is undefined. Silently passing an ordinary
gradient through them would return a map that is neither method.
"""

from __future__ import annotations

import contextlib
import inspect
import threading
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from delineo.errors import DelineoError
from delineo.registry import closest

RULES = ("saliency", "deconvnet", "guided-backprop")

#: Elementwise activations (functional / torch / Tensor-method names; ``name_`` in-place forms too).
ELEMENTWISE = frozenset({
    "relu", "leaky_relu", "prelu", "elu", "selu", "celu", "gelu", "silu", "mish", "softplus",
    "relu6", "hardtanh", "sigmoid", "tanh", "hardsigmoid", "hardswish", "logsigmoid",
})

#: Nonlinearities whose treatment under deconvnet / guided backprop is undefined: refused.
REFUSED = frozenset({
    "clamp", "clip", "clamp_min", "clamp_max", "maximum", "minimum", "fmax", "fmin", "where",
    "abs", "absolute", "sign", "sgn", "heaviside", "gt", "ge", "lt", "le", "greater", "less",
    "greater_equal", "less_equal", "__gt__", "__ge__", "__lt__", "__le__", "softmax",
    "log_softmax", "softmin", "glu", "rrelu", "threshold", "softsign", "tanhshrink",
    "softshrink", "hardshrink",
})

#: Leaf module types whose gradient the rules pass unchanged (linear, normalisation, pooling,
#: resampling, regularisation, reshaping) or route through :data:`ELEMENTWISE` activations.
KNOWN_LEAVES: tuple[type[nn.Module], ...] = (
    nn.modules.conv._ConvNd, nn.Linear, nn.Bilinear, nn.Identity,
    nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm,
    nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd,
    nn.modules.dropout._DropoutNd, nn.Upsample, nn.Flatten, nn.Unflatten,
    nn.modules.padding._ConstantPadNd, nn.modules.padding._ReflectionPadNd,
    nn.modules.padding._ReplicationPadNd, nn.PixelShuffle, nn.PixelUnshuffle, nn.ChannelShuffle,
    nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Softplus, nn.ReLU6, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Hardsigmoid, nn.Hardswish,
    nn.LogSigmoid, nn.Sequential, nn.ModuleList, nn.ModuleDict,
)

_STATE = threading.local()


def _suspended() -> bool:
    return getattr(_STATE, "suspended", 0) > 0


@contextlib.contextmanager
def _suspend() -> Iterator[None]:
    """Let calls through unmodified (used while computing f' inside a rule's backward)."""
    _STATE.suspended = getattr(_STATE, "suspended", 0) + 1
    try:
        yield
    finally:
        _STATE.suspended -= 1


class _RuleFunction(torch.autograd.Function):
    """``y = fn(x)`` forward; the rule's modified vector-Jacobian product backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor], rule: str) -> torch.Tensor:
        ctx.fn, ctx.rule = fn, rule
        ctx.save_for_backward(x)
        return fn(x)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor):
        (x,) = ctx.saved_tensors
        return rule_backward(ctx.rule, ctx.fn, x, grad_out), None, None


def rule_backward(rule: str, fn: Callable[[torch.Tensor], torch.Tensor], c: torch.Tensor,
                  r: torch.Tensor) -> torch.Tensor:
    """Gradient passed to the input ``c`` of elementwise activation ``fn`` given output gradient ``r``."""
    if rule == "deconvnet":
        return r.clamp(min=0)
    if rule == "guided-backprop":
        r = r.clamp(min=0)  # f'(C) * R * [R > 0] == f'(C) * clamp(R, 0) for elementwise f
    elif rule != "saliency":
        raise ValueError(f"unknown rule '{rule}'")
    with torch.enable_grad(), _suspend():
        c = c.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(fn(c), c, r)
    return g


_SIGNATURES: dict[Any, inspect.Signature | None] = {}


def _out_of_place(func: Callable, name: str) -> Callable:
    """The out-of-place variant of ``func`` (``relu_`` -> ``relu``), from the same namespace."""
    if not name.endswith("_"):
        return func
    base = name[:-1]
    qual = getattr(func, "__qualname__", "")
    if qual.startswith(("TensorBase.", "Tensor.")):
        return getattr(torch.Tensor, base)
    if getattr(func, "__module__", "") == "torch.nn.functional":
        return getattr(F, base)
    return getattr(torch, base)


def _frozen(func: Callable, args: tuple, kwargs: dict) -> Callable[[torch.Tensor], torch.Tensor]:
    """``t -> func(t, *args[1:], **kwargs)`` with any ``inplace`` argument forced off."""
    if func not in _SIGNATURES:
        try:
            _SIGNATURES[func] = inspect.signature(func)
        except (TypeError, ValueError):
            _SIGNATURES[func] = None
    sig = _SIGNATURES[func]
    rest, kw = tuple(args[1:]), dict(kwargs)
    if sig is not None and "inplace" in sig.parameters:
        bound = sig.bind(args[0], *rest, **kw)
        bound.arguments["inplace"] = False
        rest, kw = tuple(bound.args[1:]), dict(bound.kwargs)
    else:
        kw.pop("inplace", None)
    return lambda t: func(t, *rest, **kw)


def _requires_grad(values: Any) -> bool:
    if isinstance(values, torch.Tensor):
        return values.requires_grad
    if isinstance(values, (list, tuple)):
        return any(_requires_grad(v) for v in values)
    if isinstance(values, dict):
        return any(_requires_grad(v) for v in values.values())
    return False


class _RuleMode(TorchFunctionMode):
    """Routes elementwise activations through :class:`_RuleFunction`; refuses undefined ones."""

    def __init__(self, rule: str, where: Callable[[], str]) -> None:
        super().__init__()
        self.rule, self.where = rule, where
        self.applied = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _suspended():
            return func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        base = name[:-1] if name.endswith("_") and not name.endswith("__") else name
        if base in ELEMENTWISE and args and isinstance(args[0], torch.Tensor) and args[0].requires_grad:
            op = _out_of_place(func, name)
            self.applied += 1
            return _RuleFunction.apply(args[0], _frozen(op, args, kwargs), self.rule)
        two_tensors = base in ("max", "min") and len(args) > 1 and isinstance(args[1], torch.Tensor)
        if self.rule != "saliency" and (base in REFUSED or two_tensors) and (
                _requires_grad(args) or _requires_grad(kwargs)):
            raise DelineoError(
                f"the {self.rule} rule cannot be applied to '{_call_name(func)}' called in {self.where()}: "
                "its treatment under this rule is undefined (use an activation such as nn.ReLU, or the "
                "saliency method).")
        return func(*args, **kwargs)


def _call_name(func: Callable) -> str:
    qual = getattr(func, "__qualname__", getattr(func, "__name__", repr(func)))
    if qual.startswith(("TensorBase.", "_TensorBase.")):
        return "Tensor." + qual.split(".", 1)[1]
    module = getattr(func, "__module__", None) or "torch"
    if qual.startswith("_VariableFunctionsClass."):
        return "torch." + qual.split(".", 1)[1]
    return f"{module}.{qual}"


def _describe(name: str, module: nn.Module) -> str:
    return f"module '{name}' ({type(module).__name__})" if name else f"the model ({type(module).__name__})"


def _unknown_leaf(module: nn.Module, known: tuple[type[nn.Module], ...]) -> bool:
    return next(module.children(), None) is None and not isinstance(module, known)


def check_modules(model: nn.Module, rule: str, passthrough: tuple[type[nn.Module], ...] = ()) -> None:
    """Raise :class:`DelineoError` naming the first leaf module of unknown type in ``model``.

    :func:`gradient_rule` checks the leaves that actually run (so unused heads do not matter);
    this static version checks all of them, e.g. to validate a model before a long run.
    """
    known = KNOWN_LEAVES + tuple(passthrough)
    for name, module in model.named_modules():
        if _unknown_leaf(module, known):
            raise _unknown_error(rule, name, module)


def _unknown_error(rule: str, name: str, module: nn.Module) -> DelineoError:
    return DelineoError(
        f"the {rule} rule cannot be applied to {_describe(name, module)}: unknown layer type whose "
        "derivative is not known (declare it with passthrough= if its gradient may pass unchanged).")


@contextlib.contextmanager
def gradient_rule(model: nn.Module, rule: str,
                  passthrough: tuple[type[nn.Module], ...] = ()) -> Iterator[_RuleMode]:
    """Within this block, forward passes of ``model`` record ``rule``'s modified backward.

    Only the forward must happen inside the block; ``backward`` / ``autograd.grad`` may be called
    after it. The model is not modified: the temporary hooks that track which module is running
    (for error messages) are removed on exit, also after an error.
    """
    if rule not in RULES:
        raise DelineoError(f"unknown gradient rule '{rule}'{closest(rule, RULES)}; known: {', '.join(RULES)}.")
    if isinstance(model, torch.jit.ScriptModule):
        raise DelineoError(f"the {rule} rule needs an eager (Python) model, not a TorchScript module.")
    known = KNOWN_LEAVES + tuple(passthrough)
    stack: list[tuple[str, nn.Module]] = []

    def enter(name: str, module: nn.Module) -> None:
        if rule != "saliency" and _unknown_leaf(module, known):
            raise _unknown_error(rule, name, module)
        stack.append((name, module))

    def leave(module: nn.Module, inputs: Any, output: Any) -> None:  # must return None: keeps output
        if stack:
            stack.pop()

    handles = []
    for name, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(lambda mod, inputs, _n=name: enter(_n, mod)))
        handles.append(module.register_forward_hook(leave))
    mode = _RuleMode(rule, lambda: _describe(*stack[-1]) if stack else "the model")
    try:
        with mode:
            yield mode
    finally:
        for handle in handles:
            handle.remove()
