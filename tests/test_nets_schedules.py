"""one_cycle, cyclic, exponential schedules and the learning-rate range test."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from delineo.registry import SCHEDULES
from delineo.train.lr_find import lr_find, plot_lr_find
from delineo.train.optim import Schedule, set_momentum


def test_exponential_halves():
    s = SCHEDULES.build({"name": "exponential", "gamma": 0.5})
    assert [s.factor(e, 0.0) for e in range(4)] == [1, 0.5, 0.25, 0.125]


def test_cyclic_triangle():
    s = SCHEDULES.build({"name": "cyclic", "max_factor": 5, "period": 4})
    assert [s.factor(e, 0.0) for e in range(9)] == [1, 3, 5, 3, 1, 3, 5, 3, 1]
    s2 = SCHEDULES.build({"name": "cyclic", "max_factor": 5, "period": 4, "mode": "triangular2"})
    assert s2.factor(2, 0) == 5 and s2.factor(6, 0) == 3


def test_one_cycle_lr_and_inverse_momentum():
    s = SCHEDULES.build({"name": "one_cycle", "warmup": 0.25, "div_factor": 10, "final_div_factor": 100})
    assert s.factor(0, 0.0) == pytest.approx(0.1)
    assert s.factor(0, 0.25) == pytest.approx(1.0)
    assert s.factor(0, 1.0) == pytest.approx(0.001)
    assert 0.1 < s.factor(0, 0.125) < 1 and 0.001 < s.factor(0, 0.6) < 1
    assert s.momentum(0, 0.0) == pytest.approx(0.95)
    assert s.momentum(0, 0.25) == pytest.approx(0.85)
    assert s.momentum(0, 1.0) == pytest.approx(0.95)
    prog = [i / 20 for i in range(21)]
    lrs = [s.factor(0, p) for p in prog]
    moms = [s.momentum(0, p) for p in prog]
    peak = lrs.index(max(lrs))
    assert moms.index(min(moms)) == peak
    assert all(a <= b for a, b in zip(lrs[:peak], lrs[1:peak + 1]))
    assert all(a >= b for a, b in zip(lrs[peak:], lrs[peak + 1:]))


def test_momentum_default_none_and_set_momentum():
    assert Schedule().momentum(0, 0.5) is None
    assert SCHEDULES.build("poly").momentum(3, 0.5) is None
    p = [nn.Parameter(torch.zeros(1))]
    sgd, adam = torch.optim.SGD(p, lr=0.1, momentum=0.9), torch.optim.Adam(p)
    set_momentum(sgd, 0.85)
    set_momentum(adam, 0.85)
    assert sgd.param_groups[0]["momentum"] == 0.85 and adam.param_groups[0]["betas"] == (0.85, 0.999)


def test_lr_find_tiny_regression(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(64, 4)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    model = nn.Linear(4, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = [(x, y)]  # re-iterated every step
    lrs, losses, suggestion = lr_find(model, nn.functional.mse_loss, batches, start=1e-5, end=10, steps=60)
    assert 10 < len(lrs) < 60  # stopped on divergence before the end
    assert all(b > a for a, b in zip(lrs, lrs[1:]))
    assert 1e-3 < suggestion < 1.0
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    out = tmp_path / "lr.png"
    plot_lr_find(lrs, losses, suggestion, str(out))
    assert out.stat().st_size > 1000
