"""Model-randomisation sanity check on a briefly trained model: a method that ignores the
weights is flagged, saliency and guided backprop pass, and the model is left untouched."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from delineo.explain import METHODS, register_method, sanity
from delineo.explain.sanity import randomisation_order, rank_correlation, sanity_check
from delineo.losses.dice import DiceCELoss
from delineo.models.unet import UNet

torch.set_num_threads(1)


def discs(n: int, size: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    images, masks = [], []
    for _ in range(n):
        cy, cx = torch.randint(4, size - 4, (2,), generator=g)
        radius = 2 + 2 * torch.rand(1, generator=g)
        mask = (((yy - cy) ** 2 + (xx - cx) ** 2) <= radius ** 2).float()
        images.append(mask + 0.3 * torch.randn(size, size, generator=g))
        masks.append(mask)
    return torch.stack(images)[:, None], torch.stack(masks)[:, None]


@pytest.fixture(scope="module")
def trained() -> nn.Module:
    torch.manual_seed(0)
    model = UNet(1, 1, dims=2, filters=(4, 8), norm="batch", act="relu")
    optimiser = torch.optim.Adam(model.parameters(), 1e-2)
    loss = DiceCELoss()
    x, y = discs(32)
    for _ in range(60):
        optimiser.zero_grad()
        loss(model(x), y).backward()
        optimiser.step()
    model.zero_grad(set_to_none=True)
    return model.eval()


@pytest.fixture
def fake_method():
    """A registered 'method' that ignores the model: the map is the input itself."""
    @register_method("fake-input", "input")
    def _fake(model, x, target, layer):
        return x.clone()

    yield "fake-input"
    del METHODS["fake-input"]


def test_sanity_flags_a_method_that_ignores_the_weights(trained: nn.Module, fake_method: str) -> None:
    image = discs(1, seed=7)[0][0].numpy()
    state = copy.deepcopy(trained.state_dict())
    with torch.no_grad():
        before = trained(torch.as_tensor(image)[None])
    reports = {m: sanity(trained, image, m, mode="3d") for m in ("fake-input", "saliency", "guided-backprop")}
    for method, report in reports.items():
        print(report.table())
        assert len(report.steps) == len(randomisation_order(trained, torch.as_tensor(image)[None]))
        assert report.steps[0].layer == "head"  # cascading from the output side
        assert method in report.table()
    assert reports["fake-input"].flagged and reports["fake-input"].final == pytest.approx(1.0)
    assert "FAILED" in reports["fake-input"].table()
    for method in ("saliency", "guided-backprop"):
        assert not reports[method].flagged, method
        assert reports[method].final < 0.9
        assert "passed" in reports[method].table()
    # the caller's model is untouched
    for key, value in trained.state_dict().items():
        assert torch.equal(value, state[key]), key
    with torch.no_grad():
        assert torch.equal(trained(torch.as_tensor(image)[None]), before)


def test_sanity_core_with_explicit_layers_and_rank_correlation() -> None:
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Conv2d(2, 1, 1))
    x = torch.randn(1, 1, 6, 6)
    report = sanity_check(net, x, lambda m: m(x).detach(), layers=["2"], method="output")
    assert [s.layer for s in report.steps] == ["2"]
    assert randomisation_order(net, x) == ["2", "0"]
    assert rank_correlation(np.arange(5), np.arange(5) ** 2) == pytest.approx(1.0)
    assert rank_correlation(np.arange(5), -np.arange(5)) == pytest.approx(-1.0)
    assert rank_correlation(np.zeros(4), np.arange(4)) == 0.0
    assert rank_correlation(np.zeros(4), np.zeros(4)) == 1.0
