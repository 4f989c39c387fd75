"""The pneumothorax recipe's per-fold table (delineo.evaluate.fold_table) on hand-made images
whose Dice, pooled Dice, IoU and fold statistics are worked out by hand in the comments."""

from __future__ import annotations

import math

import numpy as np
import pytest

from delineo.evaluate.fold_table import (fold_scores, fold_table, format_fold_table, image_counts, image_dice,
                                         pooled_scores, search_gate_threshold, search_pixel_threshold)


def _mask(n: int, on: list[int]) -> np.ndarray:
    m = np.zeros(n, bool)
    m[on] = True
    return m


def test_image_counts_and_dice_conventions():
    assert image_counts(_mask(6, [0, 1]), _mask(6, [1, 2])) == (1, 2, 2)
    assert image_dice((1, 2, 2)) == 0.5
    assert image_dice((0, 0, 0)) == 1.0          # both empty: 1 (the challenge's rule)
    assert image_dice((0, 3, 0)) == 0.0          # a false-positive image
    assert image_dice((0, 0, 4)) == 0.0          # a missed image
    with pytest.raises(ValueError, match="differ in shape"):
        image_counts(np.zeros((2, 2)), np.zeros((2, 3)))


def test_pooled_scores_weigh_pixels_not_images():
    # image 1: 1 of 2 + 2 pixels; image 2: 3 of 3 + 3 -> pooled Dice 2*4/10, IoU 4/6
    assert pooled_scores([(1, 2, 2), (3, 3, 3)]) == pytest.approx((0.8, 4 / 6))
    assert pooled_scores([(0, 0, 0)]) == (1.0, 1.0)
    s = fold_scores([(1, 2, 2), (0, 0, 0)])
    assert s == pytest.approx({"dice_per_image": 0.75, "dice_pooled": 0.5, "iou_pooled": 1 / 3, "images": 2})


def test_fold_table_mean_and_std_over_folds():
    per_fold = {
        # fold 0: Dice 0.5 and an empty-empty image (1): mean 0.75; pooled 2/4 = 0.5, IoU 1/3
        0: {"argmax, baseline": [(1, 2, 2), (0, 0, 0)], "argmax + cascade": [(1, 2, 2), (0, 0, 0)]},
        # fold 1: a perfect image and a false positive: mean 0.5; pooled 6/7, IoU 3/4
        1: {"argmax, baseline": [(3, 3, 3), (0, 1, 0)], "argmax + cascade": [(3, 3, 3), (0, 0, 0)]},
    }
    rows = fold_table(per_fold)
    assert [r["variant"] for r in rows] == ["argmax, baseline", "argmax + cascade"]
    base, casc = rows
    assert base["folds"] == 2
    assert base["dice_per_image_mean"] == pytest.approx(0.625)
    assert base["dice_per_image_std"] == pytest.approx(0.125)                # population std of 0.75, 0.5
    assert base["dice_pooled_mean"] == pytest.approx((0.5 + 6 / 7) / 2)
    assert base["dice_pooled_std"] == pytest.approx((6 / 7 - 0.5) / 2)
    assert base["iou_pooled_mean"] == pytest.approx((1 / 3 + 3 / 4) / 2)
    assert base["iou_pooled_std"] == pytest.approx((3 / 4 - 1 / 3) / 2)
    # the gate stopped fold 1's false positive: both folds reach per-image 0.75 and 1.0
    assert casc["dice_per_image_mean"] == pytest.approx(0.875) and casc["dice_per_image_std"] == pytest.approx(0.125)
    assert casc["dice_pooled_mean"] == pytest.approx(0.75)                    # (2/4 + 6/6) / 2
    text = format_fold_table(rows)
    assert text.splitlines()[0] == "| variant | Dice per image | pooled Dice | pooled IoU |"
    assert "| argmax, baseline | 0.625 ± 0.125 | 0.679 ± 0.179 | 0.542 ± 0.208 |" in text


def test_fold_table_refuses_uneven_folds():
    with pytest.raises(ValueError, match="'TTA, baseline' is missing in fold"):
        fold_table({0: {"argmax, baseline": [(0, 0, 0)], "TTA, baseline": [(0, 0, 0)]},
                    1: {"argmax, baseline": [(0, 0, 0)]}})
    with pytest.raises(ValueError):
        fold_table({})


def test_pixel_threshold_search():
    # p = 0.3 (background), 0.6 and 0.9 (foreground): every t in (0.3, 0.6] is perfect; the lowest grid value wins
    probs, refs = [np.array([0.3, 0.6, 0.9])], [np.array([False, True, True])]
    assert search_pixel_threshold(probs, refs) == pytest.approx(0.35)
    assert search_pixel_threshold(probs, refs, grid=[0.1, 0.7]) == 0.1      # 0.8 beats 2/3
    with pytest.raises(ValueError):
        search_pixel_threshold([], [])


def test_gate_threshold_search():
    # two empty images with false positives (kept: Dice 0; stopped: 1) and two positive images
    scores, kept, empty = [0.1, 0.4, 0.8, 0.9], [0.0, 0.0, 0.7, 0.9], [True, True, False, False]
    # candidates 0, 0.25, 0.6, 0.85, >0.9 give 0.4, 0.65, 0.9, 0.725, 0.5
    assert search_gate_threshold(scores, kept, empty) == pytest.approx(0.6)
    # a tie between 0 and 0.5 (both 1.0): the middle of the tied candidates, here the second
    assert search_gate_threshold([0.2, 0.8], [1.0, 1.0], [True, False]) == pytest.approx(0.5)
    g = search_gate_threshold([0.3], [0.0], [True])                          # stopping beats passing
    assert g > 0.3 and math.isclose(g, 0.3, rel_tol=1e-9)
