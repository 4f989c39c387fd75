"""Building blocks shared by the networks: dimension-generic convolutions, norms, activations.

Written here rather than taken from MONAI because the explain stage needs every activation as
its own module (so guided backprop can hook it) and the published set-ups need exact layer
orders (e.g. conv -> ReLU -> batch norm) that MONAI's blocks do not expose.
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F


def conv_nd(dims: int) -> type[nn.Module]:
    return {2: nn.Conv2d, 3: nn.Conv3d}[dims]


def conv_transpose_nd(dims: int) -> type[nn.Module]:
    return {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[dims]


def max_pool_nd(dims: int) -> type[nn.Module]:
    return {2: nn.MaxPool2d, 3: nn.MaxPool3d}[dims]


def dropout_nd(dims: int) -> type[nn.Module]:
    return {2: nn.Dropout2d, 3: nn.Dropout3d}[dims]


NORMS = ("batch", "instance", "group", "none")
ACTIVATIONS = ("relu", "leakyrelu", "prelu", "elu", "mish")


def make_norm(norm: str | None, channels: int, dims: int, groups: int = 8) -> nn.Module:
    norm = (norm or "none").lower()
    if norm == "batch":
        return {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dims](channels)
    if norm == "instance":
        return {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}[dims](channels, affine=True)
    if norm == "group":
        g = min(groups, channels)
        while channels % g:
            g -= 1
        return nn.GroupNorm(g, channels)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm '{norm}' (one of {', '.join(NORMS)})")


def make_act(act: str) -> nn.Module:
    act = act.lower()
    if act == "relu":
        return nn.ReLU(inplace=False)
    if act == "leakyrelu":
        return nn.LeakyReLU(0.01, inplace=False)
    if act == "prelu":
        return nn.PReLU()
    if act == "elu":
        return nn.ELU()
    if act == "mish":
        return nn.Mish()
    raise ValueError(f"unknown activation '{act}' (one of {', '.join(ACTIVATIONS)})")


class ConvBlock(nn.Module):
    """Two (conv -> norm -> act) units, optionally residual, optionally with dropout."""

    def __init__(self, cin: int, cout: int, dims: int, norm: str, act: str, groups: int = 8,
                 residual: bool = False, dropout: float = 0.0, kernel: int = 3,
                 order: str = "norm-act") -> None:
        super().__init__()
        conv = conv_nd(dims)
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(((cin, cout), (cout, cout))):
            layers.append(conv(a, b, kernel, padding=kernel // 2, bias=norm in ("none", None)))
            if order == "act-norm":  # deoxys: conv -> ReLU -> batch norm
                layers += [make_act(act), make_norm(norm, b, dims, groups)]
            else:
                layers += [make_norm(norm, b, dims, groups), make_act(act)]
            if i == 0 and dropout > 0:
                layers.append(dropout_nd(dims)(dropout))
        self.body = nn.Sequential(*layers)
        self.skip = None
        if residual:
            self.skip = conv(cin, cout, 1, bias=False) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return y + self.skip(x) if self.skip is not None else y


def match_size(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Pad or crop ``x`` to ``ref``'s spatial size (odd sizes after floor-division pooling)."""
    if x.shape[2:] == ref.shape[2:]:
        return x
    pads: list[int] = []
    for xs, rs in zip(reversed(x.shape[2:]), reversed(ref.shape[2:])):
        diff = rs - xs
        pads += [diff // 2, diff - diff // 2]
    return F.pad(x, pads)


class AttentionGate(nn.Module):
    """Additive attention gate (Oktay et al. 2018).

    ``theta`` (2x2 stride-2 conv) brings the skip to the coarser grid, ``phi`` (1x1 conv) maps
    the gating signal from the coarser level; their sum goes through ReLU, a 1x1 ``psi`` to one
    channel and a sigmoid. The coefficients, resampled (bilinear/trilinear) to the skip's size,
    lie in [0, 1] and multiply the skip.
    """

    def __init__(self, skip_channels: int, gate_channels: int, inter_channels: int, dims: int) -> None:
        super().__init__()
        conv = conv_nd(dims)
        self.dims = dims
        self.theta = conv(skip_channels, inter_channels, 2, stride=2, bias=False)
        self.phi = conv(gate_channels, inter_channels, 1, bias=True)
        self.act = nn.ReLU()
        self.psi = conv(inter_channels, 1, 1, bias=True)
        self.sigmoid = nn.Sigmoid()

    def forward(self, skip: torch.Tensor, gate: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        theta = self.theta(skip)
        phi = self.phi(gate)
        if phi.shape[2:] != theta.shape[2:]:
            phi = F.interpolate(phi, size=theta.shape[2:], mode="nearest")
        alpha = self.sigmoid(self.psi(self.act(theta + phi)))
        mode = "bilinear" if self.dims == 2 else "trilinear"
        alpha = F.interpolate(alpha, size=skip.shape[2:], mode=mode, align_corners=False)
        return skip * alpha, alpha
