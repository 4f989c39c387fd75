"""New losses, checked against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from delineo.registry import LOSSES

BIG = 1e4  # sigmoid(-BIG) == 0 exactly in float32


def build(spec, **passed):
    return LOSSES.build(spec, where="loss", **passed)


def one_missed_pixel():
    """4x4 image, one reference pixel, prediction empty (probabilities exactly 0)."""
    logits = torch.full((1, 1, 4, 4), -BIG)
    target = torch.zeros(1, 1, 4, 4)
    target[0, 0, 1, 2] = 1
    return logits, target


def test_tversky_one_missed_pixel():
    logits, target = one_missed_pixel()
    loss = build({"name": "tversky", "fn_weight": 0.7, "fp_weight": 0.3, "smooth": 2})(logits, target)
    assert loss.item() == pytest.approx(1 - 2 / 2.7, abs=1e-6)  # TI = (0 + 2) / (0 + 0.7*1 + 0 + 2)


def test_focal_tversky_wmh_setup():
    logits, target = one_missed_pixel()
    spec = {"name": "focal_tversky", "fn_weight": 0.85, "fp_weight": 0.15, "gamma": 4 / 3, "smooth": 2}
    ti = 2 / 2.85
    assert build(spec)(logits, target).item() == pytest.approx((1 - ti) ** (4 / 3), rel=1e-5)


def test_tversky_fp_weight_and_per_sample():
    # sample 0: one false-positive pixel (p = 1, g = 0); sample 1: perfect (one pixel, p = 1)
    logits = torch.full((2, 1, 2, 2), -BIG)
    target = torch.zeros(2, 2, 2, dtype=torch.long)
    logits[0, 0, 0, 0] = BIG
    logits[1, 0, 1, 1] = BIG
    target[1, 1, 1] = 1
    spec = {"name": "tversky", "fn_weight": 0.7, "fp_weight": 0.3, "smooth": 1}
    # over the batch: TP = 1, FP = 1, FN = 0 -> TI = 2 / 2.3
    assert build(spec)(logits, target).item() == pytest.approx(1 - 2 / 2.3, abs=1e-6)
    # per sample: TI0 = 1 / 1.3, TI1 = 2 / 2 -> loss = mean(1 - TI)
    per = build({**spec, "per_sample": True})(logits, target).item()
    assert per == pytest.approx(((1 - 1 / 1.3) + 0) / 2, abs=1e-6)


def test_jaccard_half_probabilities():
    logits = torch.zeros(1, 1, 1, 2)  # p = 0.5, 0.5
    target = torch.tensor([[[[1, 0]]]])
    # TP = 0.5, FP = 0.5, FN = 0.5 -> IoU = 0.5 / 1.5
    assert build({"name": "jaccard", "smooth": 0})(logits, target).item() == pytest.approx(2 / 3, abs=1e-6)


def test_jaccard_multiclass_ignores_background():
    logits = torch.full((1, 3, 1, 2), -BIG)
    logits[0, 1, 0, 0] = BIG  # pixel 0 -> label 1 (correct)
    logits[0, 0, 0, 1] = BIG  # pixel 1 -> background, reference label 2 (missed)
    target = torch.tensor([[1, 2]]).view(1, 1, 1, 2)
    # label 1: IoU 1; label 2: IoU 0 -> loss 0.5
    assert build({"name": "jaccard", "smooth": 0})(logits, target).item() == pytest.approx(0.5, abs=1e-6)


def test_soft_fbeta_classifier():
    logits = torch.tensor([[0.0], [-BIG]])  # p = 0.5, 0
    target = torch.tensor([1, 0])  # (B,)
    # TP = 0.5, FP = 0, FN = 0.5: F1 = 1 / 1.5, F2 = 2.5 / 4.5
    assert build("soft_fbeta")(logits, target).item() == pytest.approx(1 - 2 / 3, abs=1e-6)
    f2 = build({"name": "soft_fbeta", "beta": 2})(logits, target.view(2, 1)).item()  # (B, 1)
    assert f2 == pytest.approx(1 - 5 / 9, abs=1e-6)


def test_soft_f1_multiclass_logits():
    logits = torch.full((2, 2), -BIG)
    logits[0, 1] = BIG
    logits[1, 0] = BIG
    target = torch.tensor([1, 0])
    assert build("soft_f1")(logits, target).item() == pytest.approx(0.0, abs=1e-6)
    assert build("soft_f1")(logits, 1 - target).item() == pytest.approx(1.0, abs=1e-6)


def test_focal_binary_and_multiclass():
    logit = torch.zeros(1, 1, 1, 1)
    one = torch.ones(1, 1, 1, 1)
    # p_t = 0.5: (1 - 0.5)^2 * ln 2
    assert build("focal")(logit, one).item() == pytest.approx(0.25 * math.log(2), rel=1e-6)
    assert build({"name": "focal", "alpha": 0.25})(logit, one).item() == pytest.approx(0.0625 * math.log(2), rel=1e-6)
    assert build({"name": "focal", "gamma": 0})(logit, one).item() == pytest.approx(math.log(2), rel=1e-6)
    # classifier logits (B, K) = zeros over 4 classes: p_t = 1/4 -> 0.75^2 ln 4
    logits = torch.zeros(3, 4)
    for target in (torch.tensor([0, 1, 3]), torch.tensor([[0], [1], [3]])):
        assert build("focal")(logits, target).item() == pytest.approx(0.5625 * math.log(4), rel=1e-6)


def test_mse():
    logits = torch.zeros(1, 1, 1, 2)
    target = torch.tensor([[[[1, 0]]]])
    assert build("mse")(logits, target).item() == pytest.approx(0.25)
    assert build({"name": "mse", "activation": False})(torch.tensor([[1.0], [3.0]]), torch.tensor([2.0, 3.0])).item() \
        == pytest.approx(0.5)


def test_lovasz_hinge_hand_example():
    # logits (0.5, 0.5), labels (1, 0): hinge errors 0.5 and 1.5; sorted labels (0, 1);
    # Jaccard steps 1/2, 1/2 -> loss = 1.5 * 0.5 + 0.5 * 0.5 = 1.0
    logits = torch.tensor([0.5, 0.5]).view(1, 1, 1, 2)
    target = torch.tensor([1, 0]).view(1, 1, 2)
    assert build("lovasz_hinge")(logits, target).item() == pytest.approx(1.0)
    perfect = torch.tensor([5.0, -5.0]).view(1, 1, 1, 2)
    assert build({"name": "lovasz_hinge", "per_image": True})(perfect, target).item() == pytest.approx(0.0)
    with pytest.raises(ValueError):
        build("lovasz_hinge")(torch.zeros(1, 2, 2, 2), target)


def test_dice_per_sample_vs_batch():
    # sample 0: perfect single pixel; sample 1: empty prediction, one reference pixel
    logits = torch.full((2, 1, 1, 2), -BIG)
    logits[0, 0, 0, 0] = BIG
    target = torch.zeros(2, 1, 1, 2)
    target[0, 0, 0, 0] = target[1, 0, 0, 1] = 1
    assert build({"name": "dice", "smooth": 0})(logits, target).item() == pytest.approx(1 - 2 / 3, abs=1e-6)
    assert build({"name": "dice", "smooth": 0, "batch_dice": False})(logits, target).item() == pytest.approx(0.5, abs=1e-6)


def test_combo_weighted_sum_and_num_classes():
    logits = torch.zeros(1, 1, 1, 2)
    target = torch.tensor([[[[1, 0]]]])
    combo = build({"name": "combo", "terms": [{"name": "jaccard", "smooth": 0, "weight": 1},
                                              {"name": "mse", "weight": 0.5}, "focal"]}, num_classes=1)
    expected = 2 / 3 + 0.5 * 0.25 + 0.25 * math.log(2)
    assert combo(logits, target).item() == pytest.approx(expected, rel=1e-6)
    from delineo.errors import ConfigError
    with pytest.raises(ConfigError):
        build({"name": "combo", "terms": [{"name": "dice", "smoth": 1}]})


def test_gradients_flow():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, 5, requires_grad=True)
    target = torch.randint(0, 3, (2, 1, 5, 5))
    for name in ("jaccard", "tversky", "focal_tversky", "soft_fbeta", "focal", "mse"):
        logits.grad = None
        build(name)(logits, target).backward()
        assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0, name


EMPTY_CASES = {
    # name: (spec, loss when both empty, loss when the reference is empty and 2 of 16 pixels are predicted)
    "dice": ({"name": "dice", "smooth": 1.0, "include_background": True}, 0.0, 1 - 1 / (2 + 1)),
    "jaccard": ({"name": "jaccard", "smooth": 1.0}, 0.0, 1 - 1 / (2 + 1)),
    "tversky": ({"name": "tversky", "fn_weight": 0.7, "fp_weight": 0.3, "smooth": 2}, 0.0, 1 - 2 / (0.3 * 2 + 2)),
    "focal_tversky": ({"name": "focal_tversky", "fn_weight": 0.85, "fp_weight": 0.15, "gamma": 4 / 3, "smooth": 2},
                      0.0, (1 - 2 / (0.15 * 2 + 2)) ** (4 / 3)),
    "bce": ({"name": "bce"}, 0.0, 2 * BIG / 16),
    "mse": ({"name": "mse"}, 0.0, 2 / 16),
}


@pytest.mark.parametrize("name", sorted(EMPTY_CASES))
def test_empty_reference_and_prediction(name):
    """Worked by hand: with probabilities exactly 0/1, an empty reference and an empty
    prediction cost nothing; two false-positive pixels on an empty reference cost the value
    listed (TP = FN = 0, FP = 2, smoothing s)."""
    spec, both_empty, two_fp = EMPTY_CASES[name]
    target = torch.zeros(1, 1, 4, 4)
    empty = torch.full((1, 1, 4, 4), -BIG)
    assert build(spec)(empty, target).item() == pytest.approx(both_empty, abs=1e-6)
    logits = empty.clone()
    logits[0, 0, 0, :2] = BIG
    assert build(spec)(logits, target).item() == pytest.approx(two_fp, rel=1e-5)
