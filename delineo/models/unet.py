"""A configurable U-Net for 2D and 3D: depth and filters per level, norm, activation,
residual units, dropout and deep supervision, registered as ``unet``.

Pooling uses floor division and every upsampled map is padded to its skip's size, so any input
size works (e.g. 191x265) although sizes divisible by ``2**(levels-1)`` waste nothing.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from delineo.models.layers import ConvBlock, conv_nd, conv_transpose_nd, match_size, max_pool_nd
from delineo.registry import MODELS


@MODELS.register("unet")
class UNet(nn.Module):
    """Encoder-decoder with skip concatenation; outputs logits ``(B, out_channels, *spatial)``.

    ``out_channels == 1`` means a sigmoid (binary) output, more means softmax over labels
    including background. ``deep_supervision`` adds 1x1 heads on the coarser decoder levels;
    in training mode ``forward`` then returns a list (finest first), in eval mode one tensor.
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 2, dims: int = 3,
                 filters: Sequence[int] = (16, 32, 64, 128, 256), norm: str = "instance",
                 act: str = "leakyrelu", groups: int = 8, residual: bool = False,
                 dropout: float = 0.0, deep_supervision: bool = False,
                 upsample: str = "transpose", block_order: str = "norm-act") -> None:
        super().__init__()
        if dims not in (2, 3):
            raise ValueError(f"dims must be 2 or 3, got {dims}")
        if len(filters) < 2:
            raise ValueError("filters needs at least two levels")
        if upsample not in ("transpose", "interpolate"):
            raise ValueError("upsample must be 'transpose' or 'interpolate'")
        self.dims, self.in_channels, self.out_channels = dims, in_channels, out_channels
        self.deep_supervision = deep_supervision
        block = dict(dims=dims, norm=norm, act=act, groups=groups, residual=residual,
                     dropout=dropout, order=block_order)
        self.encoders = nn.ModuleList()
        cin = in_channels
        for f in filters:
            self.encoders.append(ConvBlock(cin, f, **block))
            cin = f
        self.pool = max_pool_nd(dims)(2)
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for f_coarse, f_skip in zip(reversed(filters[1:]), reversed(filters[:-1])):
            if upsample == "transpose":
                self.ups.append(conv_transpose_nd(dims)(f_coarse, f_skip, 2, stride=2))
            else:
                self.ups.append(nn.Sequential(
                    nn.Upsample(scale_factor=2, mode="bilinear" if dims == 2 else "trilinear", align_corners=False),
                    conv_nd(dims)(f_coarse, f_skip, 1)))
            self.decoders.append(ConvBlock(2 * f_skip, f_skip, **block))
        self.head = conv_nd(dims)(filters[0], out_channels, 1)
        n_aux = min(2, len(filters) - 2) if deep_supervision else 0
        # aux head i reads the decoder output at level i + 1 (filters[i + 1] channels)
        self.aux_heads = nn.ModuleList(conv_nd(dims)(filters[i + 1], out_channels, 1) for i in range(n_aux))

    @property
    def divisor(self) -> int:
        """Input sizes divisible by this need no internal padding."""
        return 2 ** (len(self.encoders) - 1)

    def forward(self, x: torch.Tensor):
        skips = []
        for i, enc in enumerate(self.encoders):
            x = enc(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        decoded = []
        for up, dec in zip(self.ups, self.decoders):
            skip = skips.pop()
            x = dec(torch.cat([skip, match_size(up(x), skip)], dim=1))
            decoded.append(x)
        out = self.head(x)
        if self.deep_supervision and self.training:
            return [out] + [h(decoded[-2 - i]) for i, h in enumerate(self.aux_heads)]
        return out
