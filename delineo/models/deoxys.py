"""The U-Net of Moe et al. 2019 (head-and-neck tumour segmentation in PET/CT, built with the
*deoxys* Keras framework), registered as ``deoxys_unet``.

Layer set (the only one consistent with the published count of 34,536,833 parameters for two
input channels and one output, found by enumerating the candidate layer sets):

* encoder: 4 max-poolings, two 3x3 convolutions (with bias) per level, filters 64-128-256-512
  and a 1024 bottleneck; every 3x3 convolution is followed by ReLU, *then* batch norm;
* decoder: 3x3 transposed convolution, stride 2, with bias, to the skip's number of channels
  (1024 -> 512, ...), not normalised; concatenation ``[skip, upsampled]``; two conv-ReLU-BN;
* output: a 3x3 convolution to ``out_channels`` returning logits (the paper applies a sigmoid).

The published number is a Keras ``model.summary()`` total, which counts the batch-norm moving
mean and variance as (non-trainable) parameters. In PyTorch those are buffers, so
``sum(p.numel() for p in model.parameters())`` is 34,525,057 and the 11,776 running statistics
make up the rest; :func:`keras_parameter_count` returns the Keras-style total.

Pooling is floor division; each upsampled map is padded/cropped to its skip's size before the
concatenation, so odd sizes such as 191x265 work.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from delineo.models.layers import (conv_nd, conv_transpose_nd, dropout_nd, make_act, make_norm,
                                   match_size, max_pool_nd)
from delineo.registry import MODELS


def keras_parameter_count(model: nn.Module) -> int:
    """Parameters plus batch-norm running mean/variance: what Keras reports as 'Total params'."""
    n = sum(p.numel() for p in model.parameters())
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            n += m.running_mean.numel() + m.running_var.numel()
    return n


class ConvActNorm(nn.Sequential):
    """Convolution (with bias) -> activation -> normalisation, the deoxys/Keras ordering."""

    def __init__(self, cin: int, cout: int, dims: int, act: str = "relu", norm: str = "batch",
                 kernel: int = 3, groups: int = 8) -> None:
        super().__init__(conv_nd(dims)(cin, cout, kernel, padding=kernel // 2, bias=True),
                         make_act(act), make_norm(norm, cout, dims, groups))


@MODELS.register("deoxys_unet")
class DeoxysUNet(nn.Module):
    """Moe et al. 2019 PET/CT U-Net: conv -> ReLU -> BN, 3x3 transposed convs, logits out.

    ``dropout`` (default 0, as published) adds channel dropout after the first conv unit of each
    decoder level. ``dims=3`` gives the same design in 3D (not published).
    """

    def __init__(self, in_channels: int = 2, out_channels: int = 1, dims: int = 2,
                 filters: Sequence[int] = (64, 128, 256, 512, 1024), act: str = "relu",
                 norm: str = "batch", groups: int = 8, dropout: float = 0.0, head_kernel: int = 3) -> None:
        super().__init__()
        if dims not in (2, 3):
            raise ValueError(f"dims must be 2 or 3, got {dims}")
        if len(filters) < 2:
            raise ValueError("filters needs at least two levels")
        self.dims, self.in_channels, self.out_channels = dims, in_channels, out_channels
        unit = dict(dims=dims, act=act, norm=norm, groups=groups)
        self.encoders = nn.ModuleList()
        cin = in_channels
        for f in filters:
            self.encoders.append(nn.Sequential(ConvActNorm(cin, f, **unit), ConvActNorm(f, f, **unit)))
            cin = f
        self.pools = nn.ModuleList(max_pool_nd(dims)(2) for _ in filters[1:])
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for f_coarse, f_skip in zip(reversed(filters[1:]), reversed(filters[:-1])):
            # kernel 3, stride 2, padding 1, output_padding 1 == Keras 'same': exactly doubles
            self.ups.append(conv_transpose_nd(dims)(f_coarse, f_skip, 3, stride=2, padding=1,
                                                    output_padding=1, bias=True))
            layers: list[nn.Module] = [ConvActNorm(2 * f_skip, f_skip, **unit)]
            if dropout > 0:
                layers.append(dropout_nd(dims)(dropout))
            layers.append(ConvActNorm(f_skip, f_skip, **unit))
            self.decoders.append(nn.Sequential(*layers))
        self.head = conv_nd(dims)(filters[0], out_channels, head_kernel, padding=head_kernel // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, enc in enumerate(self.encoders):
            x = enc(x if i == 0 else self.pools[i - 1](x))
            skips.append(x)
        x = skips.pop()
        for up, dec in zip(self.ups, self.decoders):
            skip = skips.pop()
            x = dec(torch.cat([skip, match_size(up(x), skip)], dim=1))
        return self.head(x)
