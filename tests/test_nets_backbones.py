"""Backbones (counts, torchvision keys, output stride), segmenters, classifier, load_pretrained."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from delineo.errors import ConfigError
from delineo.models.backbones import BACKBONES, build_backbone, load_pretrained
from delineo.models.unet import UNet
from delineo.registry import MODELS

TORCHVISION_COUNTS = {
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032, "resnet101": 44_549_160,
    "resnet152": 60_192_808, "resnext50_32x4d": 25_028_904, "resnext101_32x8d": 88_791_336,
    "densenet121": 7_978_856, "densenet201": 20_013_928, "inception_v3": 27_161_264,
}
ACTS = (nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.Mish, nn.Sigmoid)


@pytest.mark.parametrize("name", sorted(TORCHVISION_COUNTS))
def test_parameter_counts_match_torchvision(name):
    with torch.device("meta"):  # count only: nothing allocated, no forward
        model = BACKBONES[name](num_classes=1000)
    assert sum(p.numel() for p in model.parameters()) == TORCHVISION_COUNTS[name]


def test_torchvision_state_dict_keys():
    with torch.device("meta"):
        keys = {n: set(BACKBONES[n](num_classes=1000).state_dict()) for n in ("resnet50", "densenet121", "inception_v3")}
    assert len(keys["resnet50"]) == 320
    assert {"conv1.weight", "bn1.running_var", "layer1.0.downsample.0.weight", "layer4.2.bn3.weight",
            "fc.bias"} <= keys["resnet50"]
    assert {"features.conv0.weight", "features.denseblock1.denselayer1.norm1.weight",
            "features.transition3.conv.weight", "features.denseblock4.denselayer16.conv2.weight",
            "features.norm5.running_mean", "classifier.weight"} <= keys["densenet121"]
    assert {"Conv2d_1a_3x3.conv.weight", "Mixed_6e.branch7x7dbl_5.bn.bias", "AuxLogits.conv1.conv.weight",
            "AuxLogits.fc.weight", "Mixed_7c.branch3x3dbl_3b.conv.weight", "fc.weight"} <= keys["inception_v3"]


@pytest.mark.parametrize("name,size", [("resnet18", 64), ("densenet121", 64), ("inception_v3", 96)])
@pytest.mark.parametrize("output_stride", [32, 16, 8])
def test_output_stride_by_dilation(name, size, output_stride):
    model = build_backbone(name, in_channels=5, output_stride=output_stride).eval()
    with torch.no_grad():
        feats = model.forward_features(torch.randn(1, 5, size, size))
    assert [f.shape[1] for f in feats] == model.feature_channels
    expected = size // output_stride if name != "inception_v3" else {32: 1, 16: 4, 8: 9}[output_stride]
    assert feats[-1].shape[-1] == expected
    acts = [m for _, m in model.named_modules(remove_duplicate=False) if isinstance(m, ACTS)]
    assert len({id(a) for a in acts}) == len(acts)


def test_deeplabv3_layout_and_shape():
    model = MODELS.build({"name": "deeplabv3", "backbone": "resnet18", "output_stride": 16,
                          "atrous_rates": [6, 12, 18]}, in_channels=2, out_channels=3, dims=2)
    aspp = model.classifier[0]
    assert len(aspp.convs) == 5 and [c[0].dilation[0] for c in list(aspp.convs)[1:4]] == [6, 12, 18]
    assert isinstance(aspp.project[3], nn.Dropout) and aspp.project[3].p == 0.5
    assert aspp.project[0].out_channels == 256
    model.train()
    y = model(torch.randn(2, 2, 64, 48))
    assert y.shape == (2, 3, 64, 48)
    y.mean().backward()


@pytest.mark.parametrize("backbone", ["resnet18", "densenet121"])
def test_backbone_unet_shapes(backbone):
    model = MODELS.build({"name": "backbone_unet", "backbone": backbone}, in_channels=4, out_channels=1, dims=2).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 4, 64, 64)).shape == (1, 1, 64, 64)
        assert model(torch.randn(1, 4, 50, 70)).shape == (1, 1, 50, 70)


def test_classifier_logits_and_unknown_backbone():
    model = MODELS.build({"name": "classifier", "backbone": "resnet18", "num_classes": 4}, in_channels=1,
                         out_channels=2, dims=2).eval()
    assert model(torch.randn(3, 1, 64, 64)).shape == (3, 4)
    with pytest.raises(ConfigError, match="resnet50"):
        MODELS.build({"name": "classifier", "backbone": "resnet5o"}, in_channels=1, out_channels=2, dims=2)


def test_load_pretrained_torchvision_file_into_one_and_two_channels(tmp_path):
    torch.manual_seed(0)
    src = build_backbone("resnet18", in_channels=3, num_classes=1000)
    path = tmp_path / "resnet18.pth"
    torch.save(src.state_dict(), path)
    w = src.conv1.weight.detach()

    one = MODELS.build({"name": "classifier", "backbone": "resnet18"}, in_channels=1, out_channels=2, dims=2)
    report = load_pretrained(one, str(path))
    assert torch.allclose(one.conv1.weight, w.sum(1, keepdim=True))
    assert report.adapted == ["conv1.weight"]
    assert set(report.mismatched) == {"fc.weight", "fc.bias"} and set(report.new) == {"fc.weight", "fc.bias"}
    assert torch.equal(one.layer3[1].conv2.weight, src.layer3[1].conv2.weight)

    seg = MODELS.build({"name": "deeplabv3", "backbone": "resnet18", "pretrained": str(path)},
                       in_channels=2, out_channels=2, dims=2)  # keys gain the 'backbone.' prefix
    expected = (w.sum(1, keepdim=True) / 2).repeat(1, 2, 1, 1)
    assert torch.allclose(seg.backbone.conv1.weight, expected)
    assert torch.equal(seg.backbone.layer4[0].bn1.running_mean, src.layer4[0].bn1.running_mean)


def test_load_pretrained_unet_checkpoint_and_failure(tmp_path):
    torch.manual_seed(0)
    kw = dict(in_channels=1, out_channels=2, dims=2, filters=(4, 8, 16))
    a, b = UNet(**kw).eval(), UNet(**kw).eval()
    state = {"module." + k: v for k, v in a.state_dict().items()}  # DataParallel-style names
    path = tmp_path / "ckpt.pt"
    torch.save({"model": state, "epoch": 3}, path)
    report = load_pretrained(b, str(path))
    assert not report.new and not report.mismatched
    x = torch.randn(1, 1, 16, 16)
    assert torch.equal(a(x), b(x))
    torch.save({"something.else": torch.zeros(3)}, tmp_path / "bad.pt")
    with pytest.raises(ConfigError, match="match no layer"):
        load_pretrained(b, str(tmp_path / "bad.pt"))
    with pytest.raises(ConfigError, match="not found"):
        load_pretrained(b, str(tmp_path / "missing.pt"))


def test_load_pretrained_legacy_densenet_keys():
    src = build_backbone("densenet121", num_classes=10)
    state = {k.replace("denselayer1.norm1.", "denselayer1.norm.1."): v for k, v in src.state_dict().items()
             if not k.endswith("num_batches_tracked")}  # pre-1.0 torchvision file
    dst = build_backbone("densenet121", num_classes=10)
    report = load_pretrained(dst, state)
    assert not report.new
    assert torch.equal(dst.features.denseblock2.denselayer1.norm1.weight, src.features.denseblock2.denselayer1.norm1.weight)
