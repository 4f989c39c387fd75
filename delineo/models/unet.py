"""The U-Net of Delineo, 2D or 3D, registered as ``unet``: depth and filters per level, norm,
activation, residual units, dropout, deep supervision, and optional additive attention gates
(Oktay et al. 2018) and pyramid (multi-scale) input. ``attention_unet``, ``pyramid_unet`` and
``unet256`` (delineo.models.attention_unet) are presets of this one class.

Pooling uses floor division and every upsampled map is padded to its skip's size, so any input
size works (e.g. 191x265) although sizes divisible by ``2**(levels-1)`` waste nothing. Every
activation is its own module instance (the explain stage hooks them one by one).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from delineo.models.layers import AttentionGate, ConvBlock, conv_nd, conv_transpose_nd, match_size, max_pool_nd
from delineo.registry import MODELS


@MODELS.register("unet")
class UNet(nn.Module):
    """Encoder-decoder with skip concatenation; outputs logits ``(B, out_channels, *spatial)``.

    ``out_channels == 1`` means a sigmoid (binary) output, more means softmax over labels
    including background. Options:

    * ``attention``: gate every skip with the coarser level's features; after each forward the
      coefficients are in ``self.attention_maps`` (finest level first, each ``(B, 1, *skip)``,
      detached) for display.
    * ``pyramid``: the input max-pooled to each encoder level is concatenated with that level's
      pooled features.
    * ``norm``: batch / instance / group (``groups`` per layer) / none; ``act``: relu /
      leakyrelu / prelu / elu / mish.
    * ``deep_supervision``: 1x1 heads on up to ``deep_supervision_levels`` coarser decoder levels;
      in training ``forward`` returns a list (finest first), in eval one tensor.
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 2, dims: int = 3,
                 filters: Sequence[int] = (16, 32, 64, 128, 256), norm: str = "instance",
                 act: str = "leakyrelu", groups: int = 8, residual: bool = False,
                 dropout: float = 0.0, deep_supervision: bool = False, deep_supervision_levels: int = 2,
                 upsample: str = "transpose", block_order: str = "norm-act",
                 attention: bool = False, pyramid: bool = False) -> None:
        super().__init__()
        if dims not in (2, 3):
            raise ValueError(f"dims must be 2 or 3, got {dims}")
        if len(filters) < 2:
            raise ValueError("filters needs at least two levels")
        if upsample not in ("transpose", "interpolate"):
            raise ValueError("upsample must be 'transpose' or 'interpolate'")
        filters = [int(f) for f in filters]
        self.dims, self.in_channels, self.out_channels = dims, in_channels, out_channels
        self.deep_supervision, self.attention, self.pyramid = deep_supervision, attention, pyramid
        self.attention_maps: list[torch.Tensor] = []
        block = dict(dims=dims, norm=norm, act=act, groups=groups, residual=residual,
                     dropout=dropout, order=block_order)
        self.encoders = nn.ModuleList()
        cin = in_channels
        for i, f in enumerate(filters):
            extra = in_channels if (pyramid and i > 0) else 0
            self.encoders.append(ConvBlock(cin + extra, f, **block))
            cin = f
        self.pool = max_pool_nd(dims)(2)
        self.input_pool = max_pool_nd(dims)(2) if pyramid else None
        self.ups = nn.ModuleList()
        self.gates = nn.ModuleList() if attention else None
        self.decoders = nn.ModuleList()
        for f_coarse, f_skip in zip(reversed(filters[1:]), reversed(filters[:-1])):
            if upsample == "transpose":
                self.ups.append(conv_transpose_nd(dims)(f_coarse, f_skip, 2, stride=2))
            else:
                self.ups.append(nn.Sequential(
                    nn.Upsample(scale_factor=2, mode="bilinear" if dims == 2 else "trilinear", align_corners=False),
                    conv_nd(dims)(f_coarse, f_skip, 1)))
            if attention:
                self.gates.append(AttentionGate(f_skip, f_coarse, max(1, f_skip // 2), dims))
            self.decoders.append(ConvBlock(2 * f_skip, f_skip, **block))
        self.head = conv_nd(dims)(filters[0], out_channels, 1)
        n_aux = min(deep_supervision_levels, len(filters) - 2) if deep_supervision else 0
        self.aux_heads = nn.ModuleList(conv_nd(dims)(filters[i + 1], out_channels, 1) for i in range(n_aux))

    @property
    def divisor(self) -> int:
        """Input sizes divisible by this need no internal padding."""
        return 2 ** (len(self.encoders) - 1)

    def forward(self, x: torch.Tensor):
        skips = []
        scaled = x
        h = x
        for i, enc in enumerate(self.encoders):
            if i > 0:
                h = self.pool(h)
                if self.pyramid:
                    scaled = self.input_pool(scaled)
                    h = torch.cat([h, scaled], dim=1)
            h = enc(h)
            skips.append(h)
        h = skips.pop()
        decoded, maps = [], []
        for j, (up, dec) in enumerate(zip(self.ups, self.decoders)):
            skip = skips.pop()
            if self.gates is not None:
                skip, alpha = self.gates[j](skip, h)
                maps.append(alpha.detach())
            h = dec(torch.cat([skip, match_size(up(h), skip)], dim=1))
            decoded.append(h)
        self.attention_maps = maps[::-1]
        out = self.head(h)
        if self.deep_supervision and self.training:
            return [out] + [head(decoded[-2 - i]) for i, head in enumerate(self.aux_heads)]
        return out
