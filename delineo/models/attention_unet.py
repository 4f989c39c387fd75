"""A U-Net with optional additive attention gates and multi-scale (pyramid) input, 2D or 3D.

Registered as

* ``attention_unet``: attention gates on by default (Oktay et al. 2018, "Attention U-Net:
  learning where to look for the pancreas"), used with pyramid input and deep supervision by
  Abraham & Khan 2019 (focal Tversky loss, lesion segmentation);
* ``pyramid_unet``: multi-scale input on, attention off (pyramid input after Abraham & Khan);
* ``unet256``: the 2D U-Net of Buda et al. 2019 (brain FLAIR abnormality, used for white-matter
  hyperintensities): filters 32-64-128-256 + 512 bottleneck, conv -> batch norm -> ReLU,
  2x2 transposed convolutions, 1x1 head; 7,763,041 parameters with 3 input channels.

All are presets of :class:`delineo.models.unet.UNet`, the one U-Net implementation.
"""

from __future__ import annotations

from typing import Sequence

from delineo.models.layers import AttentionGate  # noqa: F401  (re-exported: it lived here first)
from delineo.models.unet import UNet
from delineo.registry import MODELS


@MODELS.register("attention_unet")
def attention_unet(in_channels: int = 1, out_channels: int = 2, dims: int = 3,
                   filters: Sequence[int] = (16, 32, 64, 128, 256), norm: str = "instance",
                   act: str = "leakyrelu", groups: int = 8, residual: bool = False, dropout: float = 0.0,
                   deep_supervision: bool = False, deep_supervision_levels: int = 2,
                   upsample: str = "transpose", block_order: str = "norm-act",
                   attention: bool = True, pyramid: bool = False) -> UNet:
    """U-Net with attention gates on every skip (coefficients in ``model.attention_maps``)."""
    return UNet(in_channels, out_channels, dims, filters, norm, act, groups, residual, dropout,
                deep_supervision, deep_supervision_levels, upsample, block_order, attention, pyramid)


AttentionUNet = attention_unet  # the name under which earlier code and tests build it


@MODELS.register("pyramid_unet")
def pyramid_unet(in_channels: int = 1, out_channels: int = 2, dims: int = 3,
                 filters: Sequence[int] = (16, 32, 64, 128, 256), norm: str = "instance",
                 act: str = "leakyrelu", groups: int = 8, residual: bool = False, dropout: float = 0.0,
                 deep_supervision: bool = False, deep_supervision_levels: int = 2,
                 upsample: str = "transpose", block_order: str = "norm-act",
                 attention: bool = False, pyramid: bool = True) -> UNet:
    """U-Net with multi-scale (pyramid) input; same options as ``attention_unet``."""
    return UNet(in_channels, out_channels, dims, filters, norm, act, groups, residual, dropout,
                deep_supervision, deep_supervision_levels, upsample, block_order, attention, pyramid)


@MODELS.register("unet256")
def unet256(in_channels: int = 3, out_channels: int = 1, dims: int = 2,
            filters: Sequence[int] = (32, 64, 128, 256, 512), norm: str = "batch", act: str = "relu",
            groups: int = 8, residual: bool = False, dropout: float = 0.0, deep_supervision: bool = False,
            deep_supervision_levels: int = 2, upsample: str = "transpose", block_order: str = "norm-act",
            attention: bool = False, pyramid: bool = False) -> UNet:
    """Buda et al. 2019 U-Net (WMH set-up): 32-64-128-256 + 512, BN, ReLU, transposed convs.

    Attention gates and pyramid input can be switched on (then the count is no longer Buda's).
    """
    return UNet(in_channels, out_channels, dims, filters, norm, act, groups, residual, dropout,
                deep_supervision, deep_supervision_levels, upsample, block_order, attention, pyramid)
