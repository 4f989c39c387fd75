"""Gradient rules (saliency / deconvnet / guided backprop) and Grad-CAM: against Captum on ReLU
networks, by hand on tiny LeakyReLU / PReLU networks, against autograd for ELU / Mish, through
functional activations, refusals, and the model left exactly as it was."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from delineo.errors import DelineoError
from delineo.explain import attribution as attr
from delineo.explain.rules import check_modules, gradient_rule
from delineo.explain.targets import make_target
from delineo.models.unet import UNet

captum_attr = pytest.importorskip("captum.attr")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

torch.set_num_threads(1)


def identity_target(out: torch.Tensor) -> torch.Tensor:
    return out.flatten(1).sum(1)


class Wrapped(nn.Module):
    """model + target as one forward returning J per batch item (what Captum attributes)."""

    def __init__(self, net: nn.Module, target) -> None:
        super().__init__()
        self.net, self.target = net, target

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.target(self.net(x))


def small_convnet() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(4, 1, 1)).eval()


def small_unet() -> nn.Module:
    torch.manual_seed(2)
    return UNet(2, 2, dims=2, filters=(4, 8), norm="batch", act="relu").eval()


def median_target(net: nn.Module, x: torch.Tensor, name: str):
    """positive-prediction / true-positive / class targets with about half the voxels selected."""
    with torch.no_grad():
        out = net(x)
        p = torch.sigmoid(out[:, 0]) if out.shape[1] == 1 else torch.softmax(out, 1)[:, 1]
    thr = float(p.median())
    reference = (torch.rand(p.shape, generator=torch.Generator().manual_seed(3)) > 0.5).float()
    return make_target(name, threshold=thr, reference=reference)


NETS = {"convnet": small_convnet, "unet": small_unet}


@pytest.mark.parametrize("net_name", NETS)
@pytest.mark.parametrize("target_name", ["positive-prediction", "true-positive", "class"])
def test_gradient_rules_match_captum(net_name: str, target_name: str) -> None:
    net = NETS[net_name]()
    x = torch.randn(2, 2, 12, 12, generator=torch.Generator().manual_seed(0))
    target = median_target(net, x, target_name)
    wrapped = Wrapped(net, target).eval()
    ours = {rule: attr.input_gradient(net, x, target, rule) for rule in ("saliency", "deconvnet", "guided-backprop")}
    theirs = {
        "saliency": captum_attr.Saliency(wrapped).attribute(x.clone(), abs=False),
        "deconvnet": captum_attr.Deconvolution(wrapped).attribute(x.clone()),
        "guided-backprop": captum_attr.GuidedBackprop(wrapped).attribute(x.clone()),
    }
    for rule in ours:
        assert theirs[rule].abs().max() > 0, rule  # not a trivial all-zero comparison
        torch.testing.assert_close(ours[rule], theirs[rule], rtol=1e-4, atol=1e-6, msg=rule)
    # the rules really differ from each other on these nets
    assert not torch.allclose(ours["saliency"], ours["guided-backprop"])
    assert not torch.allclose(ours["deconvnet"], ours["guided-backprop"])


@pytest.mark.parametrize("net_name,layer", [("convnet", "2"), ("unet", "encoders.1.body.3"),
                                            ("unet", "decoders.0.body.0")])
def test_gradcam_matches_captum(net_name: str, layer: str) -> None:
    net = NETS[net_name]()
    x = torch.randn(2, 2, 12, 12, generator=torch.Generator().manual_seed(4))
    target = median_target(net, x, "positive-prediction")
    ours = attr.gradcam(net, x, target, layer, upsample=False)
    module = dict(net.named_modules())[layer]
    theirs = captum_attr.LayerGradCam(Wrapped(net, target), module).attribute(x, relu_attributions=True)
    assert theirs.abs().max() > 0
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)
    up = attr.gradcam(net, x, target, layer)
    assert up.shape == (2, 1, 12, 12) and up.min() >= 0
    pp = attr.gradcam(net, x, target, layer, plus_plus=True)
    assert pp.shape == (2, 1, 12, 12) and pp.min() >= 0 and pp.max() > 0


def test_occlusion_and_integrated_gradients_match_captum() -> None:
    net = small_convnet()
    x = torch.randn(1, 2, 12, 12, generator=torch.Generator().manual_seed(5))
    target = median_target(net, x, "class")
    wrapped = Wrapped(net, target)
    ours = attr.occlusion(net, x, target, patch=4, stride=2, value=0.0)
    theirs = captum_attr.Occlusion(wrapped).attribute(x, sliding_window_shapes=(2, 4, 4), strides=(2, 2, 2),
                                                      baselines=0.0)
    torch.testing.assert_close(ours.expand_as(theirs), theirs, rtol=1e-4, atol=1e-5)
    ig = attr.integrated_gradients(net, x, target, steps=16, batch_size=5)
    ig_captum = captum_attr.IntegratedGradients(wrapped).attribute(x, n_steps=16, method="riemann_middle")
    torch.testing.assert_close(ig, ig_captum, rtol=1e-4, atol=1e-5)
    # completeness: sum of attributions ~ J(x) - J(baseline)
    with torch.no_grad():
        gap = float(target(net(x)) - target(net(torch.zeros_like(x))))
    ig_fine = attr.integrated_gradients(net, x, target, steps=64, batch_size=64)
    assert abs(float(ig_fine.sum()) - gap) < 0.02 * abs(gap) + 1e-3


def tiny(act: nn.Module) -> nn.Module:
    """x (1 value) -> [x, -x] -> act -> [1, -1] . a : worked out by hand in the tests below."""
    first, second = nn.Linear(1, 2, bias=False), nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        first.weight.copy_(torch.tensor([[1.0], [-1.0]]))
        second.weight.copy_(torch.tensor([[1.0, -1.0]]))
    return nn.Sequential(first, act, second)


class FunctionalLeaky(nn.Module):
    """The same network with the activation as a functional call inside forward."""

    def __init__(self, call) -> None:
        super().__init__()
        self.net = tiny(nn.Identity())
        self.call = call

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net[2](self.call(self.net[0](x)))


# x = -2: C = [-2, 2]; f'(C) = [s, 1] (s the negative slope); R = [1, -1] (second layer weights).
# saliency = 1*s*1 + (-1)*1*(-1) = s + 1; guided: only R > 0 (unit 0) -> s; deconvnet: clamp(R) -> 1.
@pytest.mark.parametrize("make,slope", [
    (lambda: tiny(nn.LeakyReLU(0.1)), 0.1),
    (lambda: tiny(nn.PReLU(1, init=0.25)), 0.25),
    (lambda: FunctionalLeaky(lambda h: F.leaky_relu(h, 0.1)), 0.1),
    (lambda: FunctionalLeaky(lambda h: F.leaky_relu(h, negative_slope=0.2, inplace=True)), 0.2),
    (lambda: FunctionalLeaky(lambda h: torch.prelu(h, torch.tensor([0.3]))), 0.3),
])
def test_hand_computed_leaky_and_prelu(make, slope: float) -> None:
    net = make()
    x = torch.tensor([[-2.0]])
    sal = attr.input_gradient(net, x, identity_target, "saliency")
    guided = attr.input_gradient(net, x, identity_target, "guided-backprop")
    deconv = attr.input_gradient(net, x, identity_target, "deconvnet")
    assert sal.item() == pytest.approx(slope + 1.0)
    assert guided.item() == pytest.approx(slope)
    assert deconv.item() == pytest.approx(1.0)
    assert guided.item() != pytest.approx(sal.item())  # guided differs from the plain gradient
    # x = +2: C = [2, -2], f' = [1, s], R = [1, -1]: saliency 1 + s, guided 1, deconvnet 1
    x = torch.tensor([[2.0]])
    assert attr.input_gradient(net, x, identity_target, "saliency").item() == pytest.approx(1 + slope)
    assert attr.input_gradient(net, x, identity_target, "guided-backprop").item() == pytest.approx(1.0)
    assert attr.input_gradient(net, x, identity_target, "deconvnet").item() == pytest.approx(1.0)


ACTIVATIONS = {
    "relu": lambda: nn.ReLU(),
    "leakyrelu": lambda: nn.LeakyReLU(0.05),
    "prelu": lambda: nn.PReLU(6, init=0.2),
    "elu": lambda: nn.ELU(alpha=0.7),
    "mish": lambda: nn.Mish(),
    "gelu": lambda: nn.GELU(),
}


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_rules_use_each_activations_own_derivative(name: str) -> None:
    torch.manual_seed(6)
    act = ACTIVATIONS[name]()
    if isinstance(act, nn.PReLU):
        with torch.no_grad():
            act.weight.copy_(torch.linspace(-0.3, 0.4, 6))
    first, second = nn.Linear(3, 6), nn.Linear(6, 1)
    net = nn.Sequential(first, act, second)
    x = torch.randn(16, 3) * 2
    # by hand: C = first(x); f'(C) from autograd of the activation module itself; R = second's weights
    c = first(x).detach().requires_grad_(True)
    (fprime,) = torch.autograd.grad(act(c).sum(), c)
    r = second.weight.detach().expand_as(c)
    w1 = first.weight.detach()
    expected = {"saliency": (fprime * r) @ w1, "guided-backprop": (fprime * r.clamp(min=0)) @ w1,
                "deconvnet": r.clamp(min=0) @ w1}
    for rule, value in expected.items():
        got = attr.input_gradient(net, x, identity_target, rule)
        torch.testing.assert_close(got, value, rtol=1e-5, atol=1e-6, msg=f"{name} {rule}")
    # the rule machinery with the saliency rule is exactly autograd
    xx = x.clone().requires_grad_(True)
    with gradient_rule(net, "saliency") as mode:
        out = net(xx)
    assert mode.applied == 1
    torch.testing.assert_close(torch.autograd.grad(out.sum(), xx)[0], expected["saliency"], rtol=1e-5, atol=1e-6)


class FunctionalBlock(nn.Module):
    """Activations written as functional calls / tensor methods inside a block's forward."""

    def __init__(self, call) -> None:
        super().__init__()
        self.conv1, self.conv2, self.head = nn.Conv2d(1, 3, 3, padding=1), nn.Conv2d(3, 3, 3, padding=1), nn.Conv2d(3, 1, 1)
        self.call = call

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.call(self.conv2(self.call(self.conv1(x)))))


class ModuleBlock(nn.Module):
    def __init__(self, functional: FunctionalBlock, act: nn.Module) -> None:
        super().__init__()
        self.conv1, self.conv2, self.head = functional.conv1, functional.conv2, functional.head
        self.act1, self.act2 = act, copy.deepcopy(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act2(self.conv2(self.act1(self.conv1(x)))))


@pytest.mark.parametrize("call,module", [
    (F.relu, nn.ReLU()), (torch.relu, nn.ReLU()), (lambda t: t.relu(), nn.ReLU()),
    (lambda t: F.relu(t, inplace=True), nn.ReLU()), (lambda t: t.clone().relu_(), nn.ReLU()),
    (lambda t: F.elu(t, 0.5), nn.ELU(0.5)), (F.mish, nn.Mish()),
])
def test_functional_activations_are_handled(call, module: nn.Module) -> None:
    torch.manual_seed(7)
    functional = FunctionalBlock(call).eval()
    modular = ModuleBlock(functional, module).eval()
    x = torch.randn(2, 1, 8, 8)
    target = make_target("class")
    for rule in ("deconvnet", "guided-backprop"):
        got = attr.input_gradient(functional, x, target, rule)
        want = attr.input_gradient(modular, x, target, rule)
        torch.testing.assert_close(got, want, msg=rule)
    with torch.no_grad():
        torch.testing.assert_close(functional(x), modular(x))


class Square(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * x


class Gate(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.how = how

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        if self.how == "clamp":
            return torch.clamp(h, min=0)
        return h * (h > 0)


def test_unknown_nonlinearities_are_refused_by_name() -> None:
    x = torch.randn(1, 1, 6, 6)
    target = make_target("class")
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), Square(), nn.Conv2d(2, 1, 1))
    for rule in ("deconvnet", "guided-backprop"):
        with pytest.raises(DelineoError, match=r"module '1' \(Square\)"):
            attr.input_gradient(net, x, target, rule)
    with pytest.raises(DelineoError, match="Square"):
        check_modules(net, "deconvnet")
    assert attr.input_gradient(net, x, target, "saliency").abs().sum() > 0  # plain gradient needs no rule
    allowed = attr.input_gradient(net, x, target, "guided-backprop", passthrough=(Square,))
    assert allowed.shape == x.shape
    for how, call in (("clamp", "torch.clamp"), ("compare", "Tensor.gt")):
        gated = nn.Sequential(Gate(how), nn.Conv2d(2, 1, 1))
        with pytest.raises(DelineoError, match=rf"'{call}' called in module '0' \(Gate\)"):
            attr.input_gradient(gated, x, target, "guided-backprop")
        assert_pristine(gated)
        with gradient_rule(gated, "saliency"):  # the plain-gradient rule refuses nothing
            gated(x)
        assert_pristine(gated)


def hook_dicts(module: nn.Module) -> list[dict]:
    names = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
             "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called")
    return [getattr(module, n) for n in names if hasattr(module, n)]


def assert_pristine(model: nn.Module) -> None:
    for module in model.modules():
        assert all(len(d) == 0 for d in hook_dicts(module)), type(module).__name__
    assert torch._C._len_torch_function_stack() == 0
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("act", ["relu", "leakyrelu", "prelu", "elu", "mish"])
def test_model_left_exactly_as_it_was(act: str) -> None:
    from delineo.explain import METHODS, explain

    torch.manual_seed(8)
    model = UNet(1, 2, dims=2, filters=(4, 8), norm="batch", act=act, dropout=0.2, deep_supervision=True)
    model.train()  # explanation runs in eval mode; the caller's flags must come back
    modes = {n: m.training for n, m in model.named_modules()}
    state = copy.deepcopy(model.state_dict())
    modules_before = [(n, type(m)) for n, m in model.named_modules()]
    x = torch.randn(1, 1, 12, 12)
    model.eval()
    with torch.no_grad():
        before = model(x)
    model.train()
    image = x[0].numpy()
    for name, spec in METHODS.items():
        kwargs = {"layer": "encoders.1.body.3"} if spec.needs_layer else {}
        kwargs.update({"integrated-gradients": {"steps": 4}, "smoothgrad": {"samples": 2},
                       "activation-maximisation": {"steps": 2}, "occlusion": {"patch": 6},
                       "channel-contribution": {"steps": 2}}.get(name, {}))
        explain(model, image, name, target="class", **kwargs)
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert [(n, type(m)) for n, m in model.named_modules()] == modules_before
    after_state = model.state_dict()
    assert after_state.keys() == state.keys()
    for key in state:
        assert torch.equal(after_state[key], state[key]), key
    assert_pristine(model)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), before)
