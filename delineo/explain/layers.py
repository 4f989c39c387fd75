"""Naming and reading a network's layers without changing the network.

Explanations address layers by their ``named_modules`` name (e.g. ``encoders.2.body.0``), the
same names a user sees in a state dict, so ``--layer`` on the command line needs no index
arithmetic. Every hook added here is removed when its block ends, and ``eval_mode`` puts each
module's train/eval flag back exactly as it was.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn

from delineo.errors import DelineoError
from delineo.registry import closest


def list_layers(model: nn.Module) -> list[str]:
    """Names of all sub-modules of ``model`` (in registration order), usable as ``layer=``."""
    return [name for name, _ in model.named_modules() if name]


def conv_layers(model: nn.Module) -> list[str]:
    """Names of the convolution (and transposed convolution) layers, e.g. for Grad-CAM."""
    return [n for n, m in model.named_modules() if n and isinstance(m, nn.modules.conv._ConvNd)]


def get_layer(model: nn.Module, name: str) -> nn.Module:
    """The sub-module called ``name``; an unknown name is a :class:`DelineoError` with a suggestion."""
    modules = dict(model.named_modules())
    if not name or name not in modules:
        names = [n for n in modules if n]
        raise DelineoError(f"the model has no layer '{name}'{closest(name, names)}; "
                           f"list the names with list_layers(model) ({len(names)} layers).")
    return modules[name]


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` in eval mode (no dropout, running norm statistics); restore every flag after."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, flag in flags:
            module.training = flag


@dataclass
class Capture:
    """The output of one layer recorded during a forward pass (``None`` until it runs)."""

    name: str
    output: torch.Tensor | None = None
    calls: int = field(default=0)


@contextlib.contextmanager
def capture(model: nn.Module, name: str) -> Iterator[Capture]:
    """Record the output of layer ``name`` (the last call if it runs several times)."""
    layer = get_layer(model, name)
    record = Capture(name)

    def hook(module: nn.Module, inputs, output) -> None:
        if isinstance(output, (tuple, list)):
            output = output[0]
        if not isinstance(output, torch.Tensor):
            raise DelineoError(f"layer '{name}' does not output a tensor.")
        record.output = output
        record.calls += 1

    handle = layer.register_forward_hook(hook)
    try:
        yield record
    finally:
        handle.remove()


def layer_output(model: nn.Module, x: torch.Tensor, name: str) -> torch.Tensor:
    """The output of layer ``name`` for input ``x`` (no gradient)."""
    with torch.no_grad(), eval_mode(model), capture(model, name) as cap:
        model(x)
    if cap.output is None:
        raise DelineoError(f"layer '{name}' is not used in the model's forward pass.")
    return cap.output
