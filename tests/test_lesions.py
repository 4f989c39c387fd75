"""Lesion-wise metrics on phantoms with known answers: sizes, misses, false positives, merges and splits."""

from __future__ import annotations

import numpy as np
import pytest

from delineo.errors import ConfigError
from delineo.evaluate.lesions import (
    LesionRules,
    label_lesions,
    read_lesion_table,
    score_lesions,
    summarise_lesions,
    write_lesion_table,
)


def _cube(mask, corner, size):
    i, j, k = corner
    mask[i:i + size, j:j + size, k:k + size] = True


def _phantom():
    """Reference: cubes of 8, 125 and 1000 voxels (+ a 27-voxel one). Prediction: the 1000-voxel
    cube split in two halves by a 1-voxel gap, the 125 cube found, the 8 cube missed, the 27 cube
    found, and one 64-voxel false positive."""
    ref = np.zeros((40, 40, 40), bool)
    pred = np.zeros_like(ref)
    _cube(ref, (2, 2, 2), 2)          # 8 voxels: missed
    _cube(ref, (10, 10, 10), 5)       # 125 voxels: found
    _cube(ref, (20, 20, 20), 10)      # 1000 voxels: split in two
    _cube(ref, (2, 30, 30), 3)        # 27 voxels: found
    _cube(pred, (10, 10, 10), 5)
    pred[20:24, 20:30, 20:30] = True  # 400 voxels
    pred[25:30, 20:30, 20:30] = True  # 500 voxels (slab 24 empty: a split)
    _cube(pred, (2, 30, 30), 3)
    _cube(pred, (32, 2, 2), 4)        # 64 voxels: false positive
    return pred, ref


def test_three_lesions_one_missed_one_false_positive_one_split():
    pred, ref = _phantom()
    m, rows = score_lesions(pred, ref, (1.0, 1.0, 2.0), case="c1", label="lesion")
    assert m["lesion_n_ref"] == 4 and m["lesion_n_pred"] == 5
    assert m["lesion_detected"] == 3 and m["lesion_missed"] == 1
    assert m["lesion_correct"] == 4 and m["lesion_fp"] == 1
    assert m["lesion_split"] == 1 and m["lesion_merged"] == 0
    assert m["lesion_recall"] == pytest.approx(3 / 4)
    assert m["lesion_precision"] == pytest.approx(4 / 5)
    assert m["lesion_f1"] == pytest.approx(2 * 0.75 * 0.8 / 1.55)
    ref_rows = sorted((r for r in rows if r["side"] == "reference"), key=lambda r: r["voxels"])
    assert [r["voxels"] for r in ref_rows] == [8, 27, 125, 1000]
    assert [r["status"] for r in ref_rows] == ["missed", "detected", "detected", "detected"]
    assert ref_rows[0]["ml"] == pytest.approx(8 * 2.0 / 1000)
    big = ref_rows[3]
    assert len(big["matched"].split(";")) == 2 and big["overlap_voxels"] == 900
    assert big["overlap_fraction"] == pytest.approx(0.9)
    fp = [r for r in rows if r["status"] == "false_positive"]
    assert len(fp) == 1 and fp[0]["voxels"] == 64 and fp[0]["matched"] == ""
    # centroid of the 64-voxel cube at indices 33.5, 3.5, 3.5 with spacing (1, 1, 2)
    assert (fp[0]["centroid_x_mm"], fp[0]["centroid_y_mm"], fp[0]["centroid_z_mm"]) == pytest.approx((33.5, 3.5, 7.0))


def test_centroids_use_the_scanner_affine():
    pred, ref = _phantom()
    affine = np.array([[-1.0, 0, 0, 10], [0, 1, 0, -5], [0, 0, 2, 3], [0, 0, 0, 1]])
    _, rows = score_lesions(pred, ref, (1.0, 1.0, 2.0), affine=affine)
    fp = next(r for r in rows if r["status"] == "false_positive")
    assert (fp["centroid_x_mm"], fp["centroid_y_mm"], fp["centroid_z_mm"]) == pytest.approx((10 - 33.5, -5 + 3.5, 3 + 7.0))


def test_merged_lesions_rule():
    ref = np.zeros((20, 20, 20), bool)
    ref[2:6, 2:6, 2:6] = True
    ref[8:12, 2:6, 2:6] = True
    pred = np.zeros_like(ref)
    pred[2:12, 2:6, 2:6] = True  # one blob over both
    m, _ = score_lesions(pred, ref, (1, 1, 1))
    assert (m["lesion_detected"], m["lesion_n_ref"], m["lesion_correct"], m["lesion_n_pred"]) == (2, 2, 1, 1)
    assert m["lesion_merged"] == 1 and m["lesion_split"] == 0 and m["lesion_f1"] == 1.0


def test_coverage_rule_and_min_size():
    pred, ref = _phantom()
    # with >= 95 % coverage the split 1000-voxel lesion (90 % covered) is no longer detected
    m, _ = score_lesions(pred, ref, (1, 1, 1), LesionRules(min_overlap=0.95))
    assert m["lesion_detected"] == 2 and m["lesion_fp"] == 1
    # min_size 10 drops the 8-voxel reference lesion: nothing is missed any more
    m, _ = score_lesions(pred, ref, (1, 1, 1), LesionRules(min_size=10))
    assert (m["lesion_n_ref"], m["lesion_detected"]) == (3, 3)


@pytest.mark.parametrize("connectivity,expected", [(6, 3), (18, 2), (26, 1), (None, 1)])
def test_connectivity_3d(connectivity, expected):
    m = np.zeros((5, 5, 5), bool)
    m[1, 1, 1] = m[2, 2, 1] = True   # edge neighbours (18-connected)
    m[3, 3, 2] = True                # corner neighbour of (2, 2, 1) (26-connected)
    assert label_lesions(m, LesionRules(connectivity=connectivity))[1] == expected


@pytest.mark.parametrize("connectivity,expected", [(4, 2), (8, 1)])
def test_connectivity_2d(connectivity, expected):
    m = np.zeros((4, 4), bool)
    m[0, 0] = m[1, 1] = True
    assert label_lesions(m, LesionRules(connectivity=connectivity))[1] == expected
    with pytest.raises(ConfigError, match="connectivity 6"):
        label_lesions(m, LesionRules(connectivity=6))


def test_empty_conventions():
    empty = np.zeros((6, 6), bool)
    one = empty.copy()
    one[2, 2] = True
    m, rows = score_lesions(empty, empty, (1, 1))
    assert (m["lesion_recall"], m["lesion_precision"], m["lesion_f1"]) == (1.0, 1.0, 1.0) and rows == []
    m, _ = score_lesions(one, empty, (1, 1))
    assert (m["lesion_recall"], m["lesion_precision"], m["lesion_f1"], m["lesion_fp"]) == (None, 0.0, 0.0, 1)
    m, _ = score_lesions(empty, one, (1, 1))
    assert (m["lesion_recall"], m["lesion_precision"], m["lesion_f1"]) == (0.0, None, 0.0)


def test_size_brackets_and_table_round_trip(tmp_path):
    pred, ref = _phantom()
    _, rows = score_lesions(pred, ref, (1, 1, 1), case="c1", label="lesion")
    summary = summarise_lesions(rows, {"lesion": 2})["lesion"]
    assert summary["all"]["recall"] == pytest.approx(0.75) and summary["all"]["fp_per_case"] == 0.5
    assert summary["[0,10) voxels"]["n_ref"] == 1 and summary["[0,10) voxels"]["recall"] == 0.0
    assert summary["[10,400) voxels"]["recall"] == 1.0 and summary["[10,400) voxels"]["n_ref"] == 2
    assert summary["[1000,inf) voxels"]["recall"] == 1.0
    # a second case with one missed 50-voxel lesion: pooled recall 3/5, mean per case (3/4 + 0) / 2
    two = rows + [{"case": "c2", "label": "lesion", "side": "reference", "voxels": 50, "ml": 0.05,
                   "status": "missed"}]
    both = summarise_lesions(two, 2)["lesion"]
    assert both["all"]["recall"] == pytest.approx(3 / 5) and both["all"]["recall_mean_per_case"] == pytest.approx(0.375)
    assert both["[10,400) voxels"]["recall_mean_per_case"] == pytest.approx((1.0 + 0.0) / 2)
    # predicted lesions: 125, 27, 64 (FP) in [10,400); 400 and 500 in [400,1000)
    assert summary["[10,400) voxels"]["precision"] == pytest.approx(2 / 3)
    assert summary["[400,1000) voxels"]["precision"] == 1.0 and summary["[400,1000) voxels"]["recall"] is None
    assert summary["[400,1000) voxels"]["f1"] is None and summary["[10,400) voxels"]["f1"] == pytest.approx(0.8)
    by_ml = summarise_lesions(rows, 1, edges=[0, 0.2], unit="ml")["lesion"]
    assert by_ml["[0,0.2) ml"]["n_ref"] == 3 and by_ml["[0.2,inf) ml"]["n_ref"] == 1
    path = write_lesion_table(rows, tmp_path / "lesions.csv")
    back = read_lesion_table(path)
    assert len(back) == len(rows) == 9
    assert back[0]["voxels"] == rows[0]["voxels"] and back[0]["centroid_x_mm"] == rows[0]["centroid_x_mm"]
