"""Segmenters and classifiers built on :mod:`delineo.models.backbones` (2D only).

* ``deeplabv3`` (Chen et al. 2017, "Rethinking atrous convolution"): ASPP on the backbone's last
  map -- a 1x1 branch, one dilated 3x3 branch per atrous rate (e.g. (12, 24, 36) at output
  stride 8 or (6, 12, 18) at 16), an image-pooling branch -- concatenated, 1x1 projection to
  256, BN, ReLU, dropout 0.5, then 3x3 conv, BN, ReLU and a 1x1 conv to the labels; logits are
  bilinearly upsampled to the input size. Module names follow torchvision's ``DeepLabV3``
  (``backbone.*``, ``classifier.0.convs.*`` ...). The pooling branch has batch norm on a 1x1 map,
  so training needs batches of 2 or more (as in torchvision).
* ``backbone_unet``: a U-Net decoder over the backbone's stages (skips at strides 16, 8, 4, 2),
  as in segmentation_models_pytorch's ``Unet``: upsample to the skip's size, concatenate,
  two conv-BN-ReLU, then a last block at full resolution and a 3x3 head.
* ``classifier``: the backbone with global average pooling, dropout and a linear head to
  ``num_classes`` (default ``out_channels``); ``forward`` gives ``(B, num_classes)`` logits.

``backbone`` names one of :data:`delineo.models.backbones.BACKBONES`; ``pretrained`` is an optional
path of a local checkpoint loaded with :func:`delineo.models.backbones.load_pretrained`.
2.5D input is ``in_channels = k * channels``.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from delineo.models.backbones import build_backbone, load_pretrained
from delineo.registry import MODELS


def _check_dims(dims: int, name: str) -> None:
    if dims != 2:
        raise ValueError(f"{name} is 2D only (dims=2); use in_channels = k * channels for 2.5D")


class ASPPPooling(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        for module in self:
            x = module(x)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (torchvision layout: ``convs.0..n``, ``project``)."""

    def __init__(self, cin: int, atrous_rates: Sequence[int], cout: int = 256, dropout: float = 0.5) -> None:
        super().__init__()
        branches: list[nn.Module] = [nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())]
        for rate in atrous_rates:
            branches.append(nn.Sequential(nn.Conv2d(cin, cout, 3, padding=rate, dilation=rate, bias=False),
                                          nn.BatchNorm2d(cout), nn.ReLU()))
        branches.append(ASPPPooling(cin, cout))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(nn.Conv2d(len(branches) * cout, cout, 1, bias=False), nn.BatchNorm2d(cout),
                                     nn.ReLU(), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.convs], dim=1))


class DeepLabHead(nn.Sequential):
    def __init__(self, cin: int, num_classes: int, atrous_rates: Sequence[int], channels: int = 256,
                 dropout: float = 0.5) -> None:
        super().__init__(ASPP(cin, atrous_rates, channels, dropout),
                         nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(),
                         nn.Conv2d(channels, num_classes, 1))


@MODELS.register("deeplabv3")
class DeepLabV3(nn.Module):
    """DeepLabv3 on a dilated backbone; logits ``(B, out_channels, H, W)`` at the input size."""

    def __init__(self, in_channels: int = 3, out_channels: int = 2, dims: int = 2, backbone: str = "resnet50",
                 output_stride: int = 8, atrous_rates: Sequence[int] = (12, 24, 36), channels: int = 256,
                 dropout: float = 0.5, pretrained: str | None = None) -> None:
        super().__init__()
        _check_dims(dims, "deeplabv3")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.backbone = build_backbone(backbone, in_channels, None, output_stride)
        self.classifier = DeepLabHead(self.backbone.feature_channels[-1], out_channels, tuple(atrous_rates),
                                      channels, dropout)
        if pretrained:
            load_pretrained(self, pretrained)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.classifier(self.backbone.forward_features(x)[-1])
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


class DecoderBlock(nn.Module):
    """Upsample to the skip's size, concatenate, two conv-BN-ReLU."""

    def __init__(self, cin: int, skip: int, cout: int) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(cin + skip, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())
        self.conv2 = nn.Sequential(nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None, size) -> torch.Tensor:
        x = F.interpolate(x, size=size, mode="nearest")
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


@MODELS.register("backbone_unet")
class BackboneUNet(nn.Module):
    """U-Net decoder on a classification backbone (segmentation_models_pytorch style)."""

    def __init__(self, in_channels: int = 3, out_channels: int = 2, dims: int = 2, backbone: str = "resnet34",
                 decoder_channels: Sequence[int] = (256, 128, 64, 32, 16), output_stride: int = 32,
                 pretrained: str | None = None) -> None:
        super().__init__()
        _check_dims(dims, "backbone_unet")
        if len(decoder_channels) != 5:
            raise ValueError("decoder_channels needs 5 entries (strides 16, 8, 4, 2, 1)")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.backbone = build_backbone(backbone, in_channels, None, output_stride)
        enc = self.backbone.feature_channels
        skips = [enc[3], enc[2], enc[1], enc[0], 0]
        blocks, cin = [], enc[4]
        for skip, cout in zip(skips, decoder_channels):
            blocks.append(DecoderBlock(cin, skip, cout))
            cin = cout
        self.decoder = nn.ModuleList(blocks)
        self.head = nn.Conv2d(cin, out_channels, 3, padding=1)
        if pretrained:
            load_pretrained(self, pretrained)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone.forward_features(x)
        h = feats[4]
        skips = [feats[3], feats[2], feats[1], feats[0], None]
        for block, skip in zip(self.decoder, skips):
            h = block(h, skip, skip.shape[-2:] if skip is not None else x.shape[-2:])
        return self.head(h)


@MODELS.register("classifier")
def classifier(in_channels: int = 3, out_channels: int = 2, dims: int = 2, backbone: str = "resnet50",
               num_classes: int | None = None, dropout: float | None = None, output_stride: int = 32,
               pretrained: str | None = None) -> nn.Module:
    """Backbone + global average pooling + linear head: ``(B, num_classes)`` logits.

    ``num_classes`` defaults to ``out_channels``; one class means a sigmoid (binary) output.
    State-dict keys are torchvision's, so ``pretrained`` may be a torchvision ``.pth`` (its
    1000-class head is reported as mismatched and left initialised).
    """
    _check_dims(dims, "classifier")
    model = build_backbone(backbone, in_channels, num_classes or out_channels, output_stride, dropout)
    model.in_channels, model.out_channels = in_channels, num_classes or out_channels
    if pretrained:
        load_pretrained(model, pretrained)
    return model
