"""deoxys_unet, unet256, attention_unet / pyramid_unet: counts, layer order, shapes, options."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from delineo.models.attention_unet import AttentionUNet
from delineo.models.deoxys import DeoxysUNet, keras_parameter_count
from delineo.models.unet import UNet
from delineo.registry import MODELS

ACTS = (nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.Mish, nn.Sigmoid)
TINY = (4, 8, 16)


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def assert_activation_modules_unique(model: nn.Module) -> None:
    acts = [m for _, m in model.named_modules(remove_duplicate=False) if isinstance(m, ACTS)]
    assert acts, "no activation modules"
    assert len({id(a) for a in acts}) == len(acts), "an activation module instance is reused"


def test_deoxys_parameter_count_matches_paper():
    model = MODELS.build({"name": "deoxys_unet"}, in_channels=2, out_channels=1, dims=2)
    assert keras_parameter_count(model) == 34_536_833  # Keras total incl. BN moving mean/var
    assert n_params(model) == 34_525_057  # trainable, as PyTorch counts them


def test_deoxys_layer_order_and_upsampling():
    model = DeoxysUNet(2, 1, filters=(64, 128, 256, 512, 1024))
    unit = model.encoders[0][0]
    assert isinstance(unit[0], nn.Conv2d) and unit[0].bias is not None
    assert isinstance(unit[1], nn.ReLU) and isinstance(unit[2], nn.BatchNorm2d)
    up = model.ups[0]
    assert isinstance(up, nn.ConvTranspose2d) and up.kernel_size == (3, 3) and up.stride == (2, 2)
    assert up.in_channels == 1024 and up.out_channels == 512 and up.bias is not None
    assert_activation_modules_unique(model)


def test_deoxys_odd_size_and_skip_first():
    torch.manual_seed(0)
    model = DeoxysUNet(2, 1, filters=(4, 8, 16, 32, 64)).eval()
    seen = {}
    model.encoders[0].register_forward_hook(lambda m, i, o: seen.__setitem__("skip", o))
    model.decoders[-1].register_forward_hook(lambda m, i, o: seen.__setitem__("cat", i[0]))
    with torch.no_grad():
        y = model(torch.randn(1, 2, 191, 265))
    assert y.shape == (1, 1, 191, 265)
    assert torch.equal(seen["cat"][:, :4], seen["skip"])  # skip first, then upsampled


def test_unet256_count():
    model = MODELS.build({"name": "unet256"}, in_channels=3, out_channels=1, dims=2)
    assert abs(n_params(model) - 7.76e6) / 7.76e6 < 0.01
    assert n_params(model) == 7_763_041  # Buda et al.'s brain-segmentation-pytorch U-Net
    assert_activation_modules_unique(model)


def test_plain_options_match_unet_layer_set():
    kw = dict(in_channels=2, out_channels=3, dims=2, filters=(8, 16, 32), norm="batch", act="relu")
    assert n_params(AttentionUNet(**kw, attention=False)) == n_params(UNet(**kw))


@pytest.mark.parametrize("dims,size", [(2, (37, 45)), (3, (13, 11, 17))])
def test_attention_maps_in_unit_interval(dims, size):
    torch.manual_seed(0)
    model = MODELS.build({"name": "attention_unet", "filters": TINY}, in_channels=2, out_channels=2, dims=dims)
    model.eval()
    with torch.no_grad():
        y = model(torch.randn(2, 2, *size))
    assert y.shape == (2, 2, *size)
    assert len(model.attention_maps) == len(TINY) - 1
    first = model.attention_maps[0]
    assert first.shape == (2, 1, *size)
    for a in model.attention_maps:
        assert a.min() >= 0 and a.max() <= 1
    assert_activation_modules_unique(model)


def test_pyramid_and_options_train_mode_deep_supervision():
    torch.manual_seed(0)
    model = MODELS.build({"name": "pyramid_unet", "filters": TINY, "norm": "group", "groups": 2,
                          "act": "mish", "residual": True, "dropout": 0.1, "deep_supervision": True,
                          "attention": True}, in_channels=3, out_channels=1, dims=2)
    assert model.encoders[1].body[0].in_channels == 4 + 3  # pooled features + pooled input
    assert isinstance(model.encoders[0].body[1], nn.GroupNorm)
    outs = model.train()(torch.randn(2, 3, 33, 30))
    assert [o.shape for o in outs] == [(2, 1, 33, 30), (2, 1, 16, 15)]
    sum(o.mean() for o in outs).backward()
    assert_activation_modules_unique(model)


@pytest.mark.parametrize("act", ["relu", "leakyrelu", "prelu", "elu", "mish"])
def test_activations_and_any_in_channels(act):
    model = AttentionUNet(7, 2, 2, filters=(4, 8), act=act, norm="batch").eval()
    assert model(torch.randn(1, 7, 16, 16)).shape == (1, 2, 16, 16)  # 2.5D: in_channels = k * channels
