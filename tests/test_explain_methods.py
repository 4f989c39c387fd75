"""Targets, activation maps and maximisation, SmoothGrad, channel contribution, stitching,
slice-wise (2D / 2.5D) processing and the ``explain`` entry point."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from delineo.errors import DelineoError
from delineo.explain import (METHODS, explain, explain_full, gaussian_importance, list_layers, make_target,
                             region_mask, slice_by_slice, stack_neighbours, stitch_patches)
from delineo.explain import attribution as attr
from delineo.explain.activation import activation_maximisation
from delineo.models.unet import UNet

torch.set_num_threads(1)


# ---------------------------------------------------------------- targets

def test_positive_prediction_gradient_flows_through_predicted_voxels_only() -> None:
    logits = torch.tensor([[[-2.0, -0.1, 0.3, 3.0]]], requires_grad=True)  # (B=1, K=1, S=4)
    j = make_target("positive-prediction")(logits)
    p = torch.sigmoid(logits.detach())[0, 0]
    assert j.item() == pytest.approx(float(p[2] + p[3]))
    (g,) = torch.autograd.grad(j.sum(), logits)
    assert g[0, 0, :2].abs().sum() == 0 and (g[0, 0, 2:] > 0).all()
    assert make_target("positive-prediction", threshold=0.05)(logits).item() == pytest.approx(float(p.sum()))


def test_targets_values_and_label_selection() -> None:
    logits = torch.randn(2, 3, 5, 4, generator=torch.Generator().manual_seed(0))
    p = torch.softmax(logits, 1)
    ref = torch.zeros(5, 4)
    ref[1:3, 1:3] = 1
    assert torch.allclose(make_target("class", label=2)(logits), p[:, 2].flatten(1).sum(1))
    assert torch.allclose(make_target("class")(logits), p[:, 1].flatten(1).sum(1))  # first foreground
    assert torch.allclose(make_target("true-positive", reference=ref)(logits), (p[:, 1] * ref).flatten(1).sum(1))
    assert torch.allclose(make_target("region", mask=ref, label=2)(logits), (p[:, 2] * ref).flatten(1).sum(1))
    assert torch.allclose(make_target("mean")(logits), p[:, 1].flatten(1).mean(1))
    assert torch.allclose(make_target("max")(logits), p[:, 1].flatten(1).amax(1))
    assert torch.allclose(make_target("min", mask=ref)(logits), p[:, 1][:, 1:3, 1:3].flatten(1).amin(1))
    assert torch.allclose(make_target("mean", mask=ref)(logits), p[:, 1][:, 1:3, 1:3].flatten(1).mean(1))
    with pytest.raises(DelineoError, match="out of range"):
        make_target("class", label=3)(logits)
    with pytest.raises(DelineoError, match="one \\(sigmoid\\) output"):
        make_target("class", label=2)(logits[:, :1])
    with pytest.raises(DelineoError, match="did you mean 'true-positive'"):
        make_target("true-positiv")
    with pytest.raises(DelineoError, match="reference"):
        make_target("true-positive")


def test_region_components() -> None:
    pred = np.zeros((10, 10), bool)
    pred[1:3, 1:3] = True  # 4 voxels
    pred[5:9, 5:9] = True  # 16 voxels
    assert region_mask(pred).sum() == 16
    assert region_mask(pred, 2).sum() == 4
    assert region_mask(pred, (1, 2)).sum() == 4
    with pytest.raises(DelineoError, match="not inside"):
        region_mask(pred, (0, 9))
    with pytest.raises(DelineoError, match="2 components"):
        region_mask(pred, 3)
    with pytest.raises(DelineoError, match="empty"):
        region_mask(np.zeros((4, 4)))
    logits = torch.where(torch.as_tensor(pred), 4.0, -4.0)[None, None]
    p = torch.sigmoid(logits)[0, 0]
    assert make_target("region")(logits).item() == pytest.approx(float(p[5:9, 5:9].sum()))
    assert make_target("region", component=2)(logits).item() == pytest.approx(float(p[1:3, 1:3].sum()))


# ---------------------------------------------------------------- activation

def detector(kernel: torch.Tensor) -> nn.Module:
    conv = nn.Conv2d(1, 1, kernel.shape[-1], bias=False)
    with torch.no_grad():
        conv.weight.copy_(kernel[None, None])
    return nn.Sequential(conv, nn.ReLU(), nn.Conv2d(1, 1, 1))


def patch_correlation(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Normalised cross-correlation of every kernel-sized patch of x with the kernel."""
    k = kernel.shape[-1]
    kn = (kernel - kernel.mean()) / kernel.norm()
    xn = x[None, None]
    mean = F.avg_pool2d(xn, k, stride=1)
    std = (F.avg_pool2d(xn ** 2, k, stride=1) - mean ** 2).clamp(min=1e-12).sqrt() * k
    return (F.conv2d(xn, kn[None, None]) / std)[0, 0]


EDGE = torch.tensor([[-1.0, -1.0, 0.0, 1.0, 1.0]] * 5)  # vertical edge
CHECKER = torch.tensor([[(-1.0) ** (i + j) for j in range(4)] for i in range(4)])


@pytest.mark.parametrize("kernel", [EDGE, CHECKER], ids=["edge", "checker"])
@pytest.mark.parametrize("regularise", [{}, {"jitter": 1, "tv_weight": 0.02, "l2_weight": 0.05}], ids=["plain", "reg"])
def test_activation_maximisation_recovers_the_detected_pattern(kernel: torch.Tensor, regularise: dict) -> None:
    net = detector(kernel)
    x = activation_maximisation(net, (1, 16, 16), layer="1", channel=0, steps=64, step_size=0.05, **regularise)
    assert x.shape == (1, 16, 16)
    ncc = patch_correlation(x[0], kernel)
    noise = patch_correlation(torch.randn(16, 16, generator=torch.Generator().manual_seed(1)), kernel)
    assert ncc.max() > 0.9
    assert ncc.abs().mean() > 0.5 > noise.abs().mean()
    # the filter responds far more to the synthesised input than to noise of the same size
    with torch.no_grad():
        response = net[1](net[0](x[None])).mean()
        baseline = net[1](net[0]((torch.randn(1, 1, 16, 16) * x.std()))).mean()
    assert response > 3 * baseline


def test_activation_maximisation_class_output_and_3d() -> None:
    torch.manual_seed(0)
    net = UNet(1, 2, dims=3, filters=(2, 4), norm="instance", act="mish").eval()
    x = activation_maximisation(net, (1, 8, 8, 6), label=1, steps=8, step_size=0.1, jitter=1, tv_weight=0.1)
    assert x.shape == (1, 8, 8, 6) and torch.isfinite(x).all()
    x0 = torch.randn(1, 1, 8, 8, 6, generator=torch.Generator().manual_seed(0)) * 0.1
    with torch.no_grad():
        assert net(x[None])[0, 1].mean() > net(x0)[0, 1].mean()
    with pytest.raises(DelineoError, match="channel 9"):
        activation_maximisation(net, (1, 8, 8, 6), layer="encoders.0.body.0", channel=9, steps=1)
    # through explain: the explain-level label selects the output that is maximised
    three = UNet(3, 3, dims=2, filters=(2, 4), norm="batch", act="leakyrelu").eval()
    image = np.zeros((1, 8, 8, 5), np.float32)
    synth = {lab: explain(three, image, "activation-maximisation", mode="2.5d", context=1, label=lab, steps=6)
             for lab in (1, 2)}
    assert synth[2].shape == (3, 8, 8)  # one 2.5D network input: 3 stacked slices
    with torch.no_grad():
        means = {lab: three(torch.as_tensor(v)[None])[0, 1:].mean((1, 2)) for lab, v in synth.items()}
    assert means[2][1] - means[2][0] > means[1][1] - means[1][0]


def test_activation_maps_ranked_inside_the_prediction() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Conv2d(1, 3, 1, bias=False)
            self.act = nn.ReLU()
            self.head = nn.Conv2d(3, 1, 1)
            with torch.no_grad():
                self.features.weight.copy_(torch.tensor([-1.0, 2.0, 0.5]).view(3, 1, 1, 1))
                self.head.weight.copy_(torch.tensor([0.0, 1.0, 0.0]).view(1, 3, 1, 1))
                self.head.bias.fill_(-1.0)

        def forward(self, x):
            return self.head(self.act(self.features(x)))

    image = np.zeros((1, 8, 8), np.float32)
    image[0, 2:5, 3:6] = 2.0
    net = Net()
    assert list_layers(net) == ["features", "act", "head"]
    e = explain_full(net, image, "activation", layer="act", mode="2d", rank=True)
    assert e.map.shape == (3, 8, 8)
    assert e.info["channels"] == [1, 2, 0]
    assert e.prediction.sum() == 9
    top = explain_full(net, image, "activation", layer="act", mode="2d", top=1)
    np.testing.assert_allclose(top.map[0], np.maximum(2 * image[0], 0))


# ---------------------------------------------------------------- other attributions

def test_smoothgrad_without_noise_is_saliency_and_channel_contribution() -> None:
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ELU(), nn.Conv2d(3, 1, 1)).eval()
    x = torch.randn(1, 2, 8, 8)
    target = make_target("class")
    torch.testing.assert_close(attr.smoothgrad(net, x, target, noise_level=0.0, samples=3), attr.saliency(net, x, target))
    noisy = attr.smoothgrad(net, x, target, noise_level=0.2, samples=4, rule="guided-backprop", batch_size=3)
    assert noisy.shape == x.shape and not torch.allclose(noisy, attr.saliency(net, x, target))

    only_first = nn.Conv2d(2, 1, 1)  # the output ignores channel 1
    with torch.no_grad():
        only_first.weight.copy_(torch.tensor([3.0, 0.0]).view(1, 2, 1, 1))
        only_first.bias.fill_(-1.0)
    image = np.random.default_rng(0).normal(size=(2, 8, 8)).astype(np.float32)
    image[0, 2:6, 2:6] += 3.0
    e = explain_full(only_first, image, "channel-contribution", mode="2d", steps=8)
    assert e.map.shape == (2, 8, 8) and (e.map >= 0).all()
    assert e.info["shares"]["inside"] == pytest.approx([1.0, 0.0])
    assert np.all(e.map[1] == 0)


# ---------------------------------------------------------------- stitching and slices

def test_gaussian_importance() -> None:
    w = gaussian_importance((9, 8, 5))
    assert w.shape == (9, 8, 5) and w.dtype == torch.float32
    assert w.max() == pytest.approx(1.0) and w.min() > 0
    assert w[4, 3, 2] > w[0, 0, 0]
    torch.testing.assert_close(w, w.flip(0).flip(1).flip(2))


def test_stitching_a_pointwise_model_equals_the_whole() -> None:
    torch.manual_seed(4)
    conv = nn.Conv3d(2, 3, 1)
    volume = torch.randn(2, 21, 17, 9)
    with torch.no_grad():
        whole = conv(volume[None])[0]
        stitched = stitch_patches(lambda p: conv(p[None])[0], volume, (8, 8, 8), overlap=0.5)
        uneven = stitch_patches(lambda p: conv(p[None])[0], volume, (7, 16, 12), overlap=0.25)
    torch.testing.assert_close(stitched, whole, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(uneven, whole, rtol=1e-5, atol=1e-5)  # axis shorter than patch padded
    seen = []
    stitch_patches(lambda p, e: seen.append(torch.equal(p[:1], e)) or p, volume, 8, extras=[volume[:1]])
    assert seen and all(seen)  # extras are cut exactly like the volume

    # the same through explain: a per-voxel model's saliency does not depend on the patching
    net = nn.Sequential(nn.Conv3d(2, 1, 1), nn.Mish())
    image = volume.numpy()
    for method in ("saliency", "guided-backprop", "integrated-gradients"):
        whole_map = explain(net, image, method, target="class")
        patched = explain(net, image, method, target="class", patch_size=8)
        np.testing.assert_allclose(patched, whole_map, rtol=1e-4, atol=1e-6)


def test_slices_and_neighbour_stacking() -> None:
    volume = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5)
    s = stack_neighbours(volume, axis=2, index=0, context=1)
    assert s.shape == (6, 3, 4)
    # channel-major: channel c, offsets -1, 0, +1 (edge replicated) -- the training order
    torch.testing.assert_close(s[[0, 3]], volume[:, :, :, 0])
    torch.testing.assert_close(s[[1, 4]], volume[:, :, :, 0])
    torch.testing.assert_close(s[[2, 5]], volume[:, :, :, 1])
    from delineo.sampling.patches import slab

    np.testing.assert_array_equal(s.numpy(), slab(volume.numpy(), axis=2, index=0, context=1))
    out = slice_by_slice(lambda t: t[[1, 4]] * 2, volume, axis=1, context=1)
    torch.testing.assert_close(out, volume * 2)

    torch.manual_seed(5)
    net25 = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.LeakyReLU(0.1), nn.Conv2d(4, 2, 1)).eval()
    image = np.random.default_rng(1).normal(size=(1, 6, 5, 4)).astype(np.float32)
    grad = explain(net25, image, "guided-backprop", target="class", mode="2.5d", axis=0, context=1)
    assert grad.shape == image.shape
    # slice 3 along axis 0 by hand: its own voxels' attribution (centre channel of the stack)
    x = stack_neighbours(torch.as_tensor(image), 0, 3, 1)[None]
    want = attr.guided_backprop(net25, x, make_target("class"))[0, 1]
    np.testing.assert_allclose(grad[0, 3], want.numpy(), rtol=1e-5, atol=1e-7)

    net2d = UNet(1, 1, dims=2, filters=(2, 4), norm="batch", act="prelu").eval()
    for method, shape in (("gradcam", (6, 5, 4)), ("saliency", (1, 6, 5, 4)), ("occlusion", (6, 5, 4)),
                          ("activation", (2, 6, 5, 4))):
        kw = {"layer": "encoders.1.body.0"} if method == "gradcam" else {"layer": "encoders.0"} if method == "activation" else {}
        m = explain(net2d, image, method, target="mean", mode="2d", axis=2, patch=2, **kw) if method == "occlusion" \
            else explain(net2d, image, method, target="mean", mode="2d", axis=2, patch_size=4, **kw)
        assert m.shape == shape, method
        assert np.isfinite(m).all()


# ---------------------------------------------------------------- entry point

def test_explain_every_method_and_user_errors() -> None:
    torch.manual_seed(6)
    net = UNet(2, 3, dims=3, filters=(2, 4), norm="instance", act="elu").eval()
    image = np.random.default_rng(2).normal(size=(2, 8, 8, 6)).astype(np.float32)
    reference = np.zeros((8, 8, 6), np.int64)
    reference[2:5, 2:5, 1:4] = 2
    shapes = {"input": (2, 8, 8, 6), "spatial": (8, 8, 6), "layer": (4, 8, 8, 6), "synthetic": (2, 8, 8, 6)}
    for name, spec in METHODS.items():
        kw = {"layer": "encoders.1.body.0"} if spec.needs_layer else {}
        kw.update({"integrated-gradients": {"steps": 4}, "smoothgrad": {"samples": 2},
                   "activation-maximisation": {"steps": 2}, "occlusion": {"patch": 4},
                   "channel-contribution": {"steps": 2}}.get(name, {}))
        out = explain(net, image, name, target="true-positive", reference=reference, label=2, threshold=0.3, **kw)
        assert out.shape == shapes[spec.kind], name
        assert out.dtype == np.float32 and np.isfinite(out).all(), name
    with pytest.raises(DelineoError, match="did you mean 'gradcam'"):
        explain(net, image, "gradcan")
    with pytest.raises(DelineoError, match="needs a layer"):
        explain(net, image, "gradcam")
    with pytest.raises(DelineoError, match="no layer 'encoder.1'.*did you mean"):
        explain(net, image, "gradcam", layer="encoder.1")
    with pytest.raises(DelineoError, match="unknown parameter 'step'.*did you mean 'steps'"):
        explain(net, image, "integrated-gradients", step=3)
    with pytest.raises(DelineoError, match="mode must be"):
        explain(net, image, "saliency", mode="3D-ish")
    with pytest.raises(DelineoError, match="reference shape"):
        explain(net, image, "saliency", target="true-positive", reference=reference[:4])
