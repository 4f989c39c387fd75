"""Classification backbones written without torchvision/timm, with torchvision's state-dict
layout so that a user's local torchvision ``.pth`` file loads with :func:`load_pretrained`.

* ResNet 18/34/50/101/152 (He et al. 2016) and ResNeXt 50 (32x4d) / 101 (32x8d) (Xie et al.
  2017), following torchvision's ``resnet.py`` layer names;
* DenseNet 121/201 (Huang et al. 2017), torchvision's ``densenet.py`` names;
* Inception-v3 (Szegedy et al. 2016), torchvision's ``inception.py`` names, auxiliary head
  included by default (27,161,264 parameters for 1000 classes).

Differences from torchvision that do not change the state dict: every activation is its own
``nn.Module`` (no functional ReLU, no shared ReLU module, so the explain stage can hook each),
pooling is held in modules, any number of input channels, and an ``output_stride`` of 8, 16 or
32 obtained by replacing the last strides with dilation (as in DeepLab).

Every backbone has ``forward_features(x) -> list`` of 5 maps at strides 2, 4, 8, 16, 32 (fewer strides
with dilation), ``feature_channels`` (their channel counts) and, when built with
``num_classes``, ``forward(x) -> (B, num_classes)`` logits after global average pooling.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn

from delineo.errors import ConfigError
from delineo.registry import closest

log = logging.getLogger(__name__)


def _check_output_stride(output_stride: int) -> None:
    if output_stride not in (8, 16, 32):
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")


class _Classifier(nn.Module):
    """Shared tail: global average pooling, dropout, linear head named like torchvision's."""

    num_classes: int | None
    feature_channels: list[int]

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:  # pragma: no cover - overridden
        """The five stage outputs (strides 2, 4, 8, 16, 32 before dilation); every backbone defines it."""
        raise TypeError(f"{type(self).__name__} does not define forward_features")

    def _head(self) -> nn.Module:
        return self.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.forward_features(x)[-1]
        if self.num_classes is None:
            return feats
        pooled = torch.flatten(self.avgpool(feats), 1)
        return self._head()(self.dropout(pooled))


# --- ResNet / ResNeXt -------------------------------------------------------------------------


def conv3x3(cin: int, cout: int, stride: int = 1, groups: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, groups=groups, bias=False, dilation=dilation)


def conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 groups: int = 1, base_width: int = 64, dilation: int = 1) -> None:
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ValueError("BasicBlock only supports groups=1 and base_width=64")
        self.conv1 = conv3x3(inplanes, planes, stride, dilation=dilation)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = conv3x3(planes, planes, dilation=dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 groups: int = 1, base_width: int = 64, dilation: int = 1) -> None:
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu1 = nn.ReLU()
        self.conv2 = conv3x3(width, width, stride, groups, dilation)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu2 = nn.ReLU()
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu3 = nn.ReLU()
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu3(out + identity)


class ResNet(_Classifier):
    """ResNet / ResNeXt in torchvision's layout (conv1, bn1, layer1..4, fc)."""

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: Sequence[int], in_channels: int = 3,
                 num_classes: int | None = 1000, groups: int = 1, width_per_group: int = 64,
                 output_stride: int = 32, dropout: float = 0.0) -> None:
        super().__init__()
        _check_output_stride(output_stride)
        dilate = {32: (False, False, False), 16: (False, False, True), 8: (False, True, True)}[output_stride]
        self.num_classes = num_classes
        self.inplanes, self.dilation = 64, 1
        self.groups, self.base_width = groups, width_per_group
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], 2, dilate[0])
        self.layer3 = self._make_layer(block, 256, layers[2], 2, dilate[1])
        self.layer4 = self._make_layer(block, 512, layers[3], 2, dilate[2])
        e = block.expansion
        self.feature_channels = [64, 64 * e, 128 * e, 256 * e, 512 * e]
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(512 * e, num_classes) if num_classes else None
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, block, planes: int, blocks: int, stride: int = 1, dilate: bool = False) -> nn.Sequential:
        downsample = None
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(conv1x1(self.inplanes, planes * block.expansion, stride),
                                       nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample, self.groups, self.base_width, previous_dilation)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes, groups=self.groups, base_width=self.base_width,
                                dilation=self.dilation))
        return nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        f0 = self.relu(self.bn1(self.conv1(x)))
        f1 = self.layer1(self.maxpool(f0))
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        return [f0, f1, f2, f3, self.layer4(f3)]


def resnet18(**kw: Any) -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2), **kw)


def resnet34(**kw: Any) -> ResNet:
    return ResNet(BasicBlock, (3, 4, 6, 3), **kw)


def resnet50(**kw: Any) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), **kw)


def resnet101(**kw: Any) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 23, 3), **kw)


def resnet152(**kw: Any) -> ResNet:
    return ResNet(Bottleneck, (3, 8, 36, 3), **kw)


def resnext50_32x4d(**kw: Any) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), groups=32, width_per_group=4, **kw)


def resnext101_32x8d(**kw: Any) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 23, 3), groups=32, width_per_group=8, **kw)


# --- DenseNet -----------------------------------------------------------------------------------


class _DenseLayer(nn.Module):
    def __init__(self, cin: int, growth_rate: int, bn_size: int, drop_rate: float, dilation: int = 1) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(cin, bn_size * growth_rate, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, 3, padding=dilation, dilation=dilation, bias=False)
        self.drop = nn.Dropout(drop_rate)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(features, 1)
        x = self.conv1(self.relu1(self.norm1(x)))
        return self.drop(self.conv2(self.relu2(self.norm2(x))))


class _DenseBlock(nn.ModuleDict):
    def __init__(self, num_layers: int, cin: int, bn_size: int, growth_rate: int, drop_rate: float,
                 dilation: int = 1) -> None:
        super().__init__()
        for i in range(num_layers):
            self.add_module(f"denselayer{i + 1}",
                            _DenseLayer(cin + i * growth_rate, growth_rate, bn_size, drop_rate, dilation))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class _Transition(nn.Sequential):
    def __init__(self, cin: int, cout: int, pool: bool = True) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(cin)
        self.relu = nn.ReLU()
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.pool = nn.AvgPool2d(2, stride=2) if pool else nn.Identity()


class DenseNet(_Classifier):
    """DenseNet-BC in torchvision's layout (features.conv0 ... features.norm5, classifier)."""

    def __init__(self, growth_rate: int = 32, block_config: Sequence[int] = (6, 12, 24, 16),
                 num_init_features: int = 64, bn_size: int = 4, drop_rate: float = 0.0, in_channels: int = 3,
                 num_classes: int | None = 1000, output_stride: int = 32, dropout: float = 0.0) -> None:
        super().__init__()
        _check_output_stride(output_stride)
        # transitions 2 and 3 keep their stride for output stride 32; dilation takes over after
        pools = {32: (True, True, True), 16: (True, True, False), 8: (True, False, False)}[output_stride]
        self.num_classes = num_classes
        feats = OrderedDict([
            ("conv0", nn.Conv2d(in_channels, num_init_features, 7, stride=2, padding=3, bias=False)),
            ("norm0", nn.BatchNorm2d(num_init_features)),
            ("relu0", nn.ReLU()),
            ("pool0", nn.MaxPool2d(3, stride=2, padding=1)),
        ])
        n = num_init_features
        channels = [num_init_features]
        dilation = 1
        for i, num_layers in enumerate(block_config):
            feats[f"denseblock{i + 1}"] = _DenseBlock(num_layers, n, bn_size, growth_rate, drop_rate, dilation)
            n += num_layers * growth_rate
            channels.append(n)
            if i != len(block_config) - 1:
                feats[f"transition{i + 1}"] = _Transition(n, n // 2, pool=pools[i])
                if not pools[i]:
                    dilation *= 2
                n //= 2
        feats["norm5"] = nn.BatchNorm2d(n)
        self.features = nn.Sequential(feats)
        self.final_relu = nn.ReLU()
        self.feature_channels = channels
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(n, num_classes) if num_classes else None
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)

    def _head(self) -> nn.Module:
        return self.classifier

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        f = self.features
        x = f.relu0(f.norm0(f.conv0(x)))
        out.append(x)
        x = f.pool0(x)
        blocks = [m for name, m in f.named_children() if name.startswith("denseblock")]
        for i, block in enumerate(blocks):
            x = block(x)
            if i < len(blocks) - 1:
                out.append(x)
                x = getattr(f, f"transition{i + 1}")(x)
        out.append(self.final_relu(f.norm5(x)))
        return out


def densenet121(**kw: Any) -> DenseNet:
    return DenseNet(32, (6, 12, 24, 16), 64, **kw)


def densenet201(**kw: Any) -> DenseNet:
    return DenseNet(32, (6, 12, 48, 32), 64, **kw)


# --- Inception-v3 -------------------------------------------------------------------------------


class BasicConv2d(nn.Module):
    def __init__(self, cin: int, cout: int, **kwargs: Any) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class InceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(cin, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.pool = nn.AvgPool2d(3, stride=1, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([b1, b5, b3, self.branch_pool(self.pool(x))], 1)


class InceptionB(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)
        self.pool = nn.MaxPool2d(3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([b3, bd, self.pool(x)], 1)


class InceptionC(nn.Module):
    def __init__(self, cin: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.pool = nn.AvgPool2d(3, stride=1, padding=1)
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = x
        for i in range(1, 6):
            bd = getattr(self, f"branch7x7dbl_{i}")(bd)
        return torch.cat([b1, b7, bd, self.branch_pool(self.pool(x))], 1)


class InceptionD(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)
        self.pool = nn.MaxPool2d(3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = x
        for i in range(1, 5):
            b7 = getattr(self, f"branch7x7x3_{i}")(b7)
        return torch.cat([b3, b7, self.pool(x)], 1)


class InceptionE(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(cin, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.pool = nn.AvgPool2d(3, stride=1, padding=1)
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        return torch.cat([b1, b3, bd, self.branch_pool(self.pool(x))], 1)


class InceptionAux(nn.Module):
    def __init__(self, cin: int, num_classes: int) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(5, stride=3)
        self.conv0 = BasicConv2d(cin, 128, kernel_size=1)
        self.conv1 = BasicConv2d(128, 768, kernel_size=5)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(self.conv0(self.pool(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _dilate_(module: nn.Module, dilation: int, first_dilation: int | None = None) -> None:
    """In place: strided convs/max-pools of ``module`` get stride 1 ('same' padding, dilation
    ``first_dilation``), the other spatial convs dilation ``dilation`` with 'same' padding."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d) and max(m.kernel_size) > 1:
            d = dilation
            if m.stride != (1, 1):
                m.stride = (1, 1)
                d = first_dilation or 1
            m.dilation = (d, d)
            m.padding = tuple(d * (k // 2) for k in m.kernel_size)
        elif isinstance(m, nn.MaxPool2d) and m.stride not in (1, (1, 1)):
            m.stride, m.padding = 1, m.kernel_size // 2 if isinstance(m.kernel_size, int) else 1


class Inception3(_Classifier):
    """Inception-v3 in torchvision's layout; valid convolutions, so inputs need >= 75x75.

    In training mode with ``aux_logits`` the auxiliary logits of the last forward are kept in
    ``self.aux_output`` (add them to the loss with weight 0.4 as in the paper if wanted).
    """

    def __init__(self, in_channels: int = 3, num_classes: int | None = 1000, aux_logits: bool = True,
                 output_stride: int = 32, dropout: float = 0.5) -> None:
        super().__init__()
        _check_output_stride(output_stride)
        self.num_classes = num_classes
        self.Conv2d_1a_3x3 = BasicConv2d(in_channels, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.maxpool1 = nn.MaxPool2d(3, stride=2)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.maxpool2 = nn.MaxPool2d(3, stride=2)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.AuxLogits = InceptionAux(768, num_classes) if (aux_logits and num_classes) else None
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280)
        self.Mixed_7c = InceptionE(2048)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(2048, num_classes) if num_classes else None
        self.feature_channels = [64, 192, 288, 768, 2048]
        self.aux_output: torch.Tensor | None = None
        # like torchvision's ResNet: the former reduction block keeps the previous dilation
        if output_stride == 8:
            _dilate_(self.Mixed_6a, 1, first_dilation=1)
            for m in (self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e):
                _dilate_(m, 2)
        if output_stride <= 16:
            d = 2 if output_stride == 16 else 4
            _dilate_(self.Mixed_7a, d // 2, first_dilation=d // 2)
            for m in (self.Mixed_7b, self.Mixed_7c):
                _dilate_(m, d)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        f0 = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        f1 = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(self.maxpool1(f0)))
        f2 = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(self.maxpool2(f1))))
        f3 = self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(self.Mixed_6a(f2)))))
        self.aux_output = self.AuxLogits(f3) if (self.AuxLogits is not None and self.training) else None
        f4 = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(f3)))
        return [f0, f1, f2, f3, f4]


def inception_v3(**kw: Any) -> Inception3:
    return Inception3(**kw)


BACKBONES: dict[str, Callable[..., _Classifier]] = {
    "resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50, "resnet101": resnet101,
    "resnet152": resnet152, "resnext50_32x4d": resnext50_32x4d, "resnext101_32x8d": resnext101_32x8d,
    "densenet121": densenet121, "densenet201": densenet201, "inception_v3": inception_v3,
}


def build_backbone(name: str, in_channels: int = 3, num_classes: int | None = None, output_stride: int = 32,
                   dropout: float | None = None) -> _Classifier:
    """Build a backbone by name (see ``BACKBONES``); ``num_classes=None`` leaves out the head."""
    key = str(name).lower()
    if key not in BACKBONES:
        raise ConfigError(f"unknown backbone '{name}'{closest(key, BACKBONES)}; known: {', '.join(BACKBONES)}.")
    kw: dict[str, Any] = dict(in_channels=in_channels, num_classes=num_classes, output_stride=output_stride)
    if dropout is not None:
        kw["dropout"] = dropout
    return BACKBONES[key](**kw)


# --- Loading local checkpoints ------------------------------------------------------------------


@dataclass
class LoadReport:
    """What :func:`load_pretrained` did, by state-dict key of the model."""

    loaded: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)  # in the model, not (usably) in the checkpoint
    mismatched: list[str] = field(default_factory=list)  # same key, incompatible shape: skipped
    adapted: list[str] = field(default_factory=list)  # first conv adapted to the input channels
    unused: list[str] = field(default_factory=list)  # checkpoint keys the model does not have

    def __str__(self) -> str:
        return (f"loaded {len(self.loaded)} tensors ({len(self.adapted)} adapted to the input channels), "
                f"{len(self.new)} new, {len(self.mismatched)} mismatched, {len(self.unused)} unused")


_DENSENET_OLD = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$")


def _state_dict_of(obj: Any) -> dict[str, torch.Tensor]:
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, dict):
        for key in ("model", "state_dict", "model_state_dict", "net"):
            if key in obj and isinstance(obj[key], (dict, nn.Module)):
                return _state_dict_of(obj[key])
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
    raise ConfigError("checkpoint holds no state dict (expected a dict of tensors or a dict with a 'model' key)")


def _prefixes(keys, depth: int = 2) -> set[str]:
    out = {""}
    for k in keys:
        parts = k.split(".")
        for d in range(1, min(depth, len(parts) - 1) + 1):
            out.add(".".join(parts[:d]) + ".")
    return out


def _align(ckpt: dict[str, torch.Tensor], model_keys: set[str]) -> dict[str, torch.Tensor]:
    """Rename checkpoint keys to the model's: legacy DenseNet names, then the (strip, add)
    prefix pair (e.g. strip 'module.', add 'backbone.') that matches the most keys."""
    fixed = {}
    for k, v in ckpt.items():
        m = _DENSENET_OLD.match(k)
        fixed[m.group(1) + m.group(2) if m else k] = v
    model_norm = {k: k for k in model_keys}
    best, best_map = -1, {}
    adds = sorted(_prefixes(model_norm, 2))  # '' first: ties keep the names as they are
    for strip in sorted(_prefixes(fixed, 1)):
        stripped = {k[len(strip):]: v for k, v in fixed.items() if k.startswith(strip)}
        for add in adds:
            hits = sum((add + k) in model_norm for k in stripped)
            if hits > best:
                best = hits
                best_map = {model_norm.get(add + k, add + k): v for k, v in stripped.items()}
    return best_map


def _adapt_in_channels(w: torch.Tensor, channels: int) -> torch.Tensor:
    """Conv weight (O, C, *k) -> (O, channels, *k): average over C, tiled, scaled by C/channels,
    i.e. the sum for one channel; an image copied to every channel gives the same response."""
    return (w.sum(1, keepdim=True) / channels).repeat(1, channels, *([1] * (w.dim() - 2)))


def load_pretrained(model: nn.Module, path: Any, trusted: bool = False) -> LoadReport:
    """Load a local checkpoint (torchvision ``.pth``, a Delineo checkpoint with a 'model' key,
    or a raw state dict) into ``model`` wherever names and shapes agree.

    Conv weights whose only difference is the number of input channels (the first conv with
    3 RGB channels vs N input channels) are adapted (see :func:`_adapt_in_channels`). Keys of
    the model with no usable tensor keep their initialisation (``new``); a classifier head of a
    different size is ``mismatched`` and skipped. Raises :class:`ConfigError` if nothing loads.
    ``trusted=True`` allows full unpickling (only for files you trust).
    """
    if isinstance(path, (dict, nn.Module)):
        raw = path
    else:
        try:
            raw = torch.load(path, map_location="cpu", weights_only=not trusted)
        except FileNotFoundError as exc:
            raise ConfigError(f"pretrained weights not found: {path}") from exc
        except Exception as exc:  # unpickling refused or corrupt file
            raise ConfigError(f"cannot read pretrained weights {path}: {exc} "
                              "(a checkpoint you trust may need trusted=True)") from exc
    own = model.state_dict()
    ckpt = _align(_state_dict_of(raw), set(own))
    report = LoadReport()
    to_load = {}
    for key, target in own.items():
        if key not in ckpt:
            if not key.endswith("num_batches_tracked"):  # absent from older checkpoints: harmless
                report.new.append(key)
            continue
        src = ckpt[key]
        if src.shape == target.shape:
            to_load[key] = src.to(target.dtype)
            report.loaded.append(key)
        elif (src.dim() >= 3 and src.dim() == target.dim() and src.shape[0] == target.shape[0]
              and src.shape[2:] == target.shape[2:] and src.shape[1] != target.shape[1]):
            to_load[key] = _adapt_in_channels(src.to(target.dtype), target.shape[1])
            report.loaded.append(key)
            report.adapted.append(key)
        else:
            report.mismatched.append(key)
            report.new.append(key)
    report.unused = sorted(set(ckpt) - set(own))
    if not report.loaded:
        raise ConfigError(f"pretrained weights {path if isinstance(path, str) else ''} match no layer of the "
                          f"model ({len(ckpt)} tensors in the checkpoint, {len(own)} in the model)")
    model.load_state_dict(to_load, strict=False)
    log.info("pretrained weights: %s", report)
    if report.mismatched:
        log.info("mismatched (kept initialisation): %s", ", ".join(report.mismatched[:10]))
    return report
