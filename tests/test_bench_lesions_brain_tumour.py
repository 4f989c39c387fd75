"""The table logic of ``benchmarks/lesions_brain_tumour.py`` with known answers: the entropy
threshold rule on a hand-written profile, and the lesion summaries on a phantom (2 mm3 voxels)
with one found lesion (8 voxels, bracket [0,10)), one missed (500 voxels, [400,1000)) and one
false positive (27 voxels, [10,400))."""

from __future__ import annotations


import numpy as np
import pytest

from delineo.evaluate.lesions import LesionRules, score_lesions

from tests.conftest import load_benchmark


def _bench():
    return load_benchmark("lesions_brain_tumour")


def test_threshold_rule_is_lowest_training_tumour_slice_minus_margin():
    bench = _bench()
    profile = [{"case": "a_1", "slice": 0, "entropy_bits": "6.0", "foreground": "False"},
               {"case": "a_1", "slice": 1, "entropy_bits": "5.37", "foreground": "True"},
               {"case": "a_1", "slice": 2, "entropy_bits": "5.9", "foreground": "True"},
               {"case": "b_1", "slice": 0, "entropy_bits": "1.0", "foreground": "True"}]  # not a training case
    assert bench.choose_threshold(profile, ["a_1"], 0.25) == pytest.approx(5.10)  # 5.12 rounded down to 0.05
    assert bench.choose_threshold(profile, ["a_1"], 0.0) == pytest.approx(5.35)
    with pytest.raises(SystemExit):
        bench.choose_threshold(profile, ["c_1"])


def test_lesion_summaries_count_found_missed_and_invented():
    bench = _bench()
    ref = np.zeros((40, 40, 10), bool)
    pred = np.zeros_like(ref)
    ref[2:4, 2:4, 2:4] = True                 # 8 voxels, found
    pred[2:4, 2:4, 2:4] = True
    ref[20:30, 20:30, 0:5] = True             # 500 voxels, missed
    pred[10:13, 30:33, 6:9] = True            # 27 voxels, false positive
    _, rows = score_lesions(pred, ref, (1.0, 1.0, 2.0), LesionRules(), case="s1", label="tumour")
    tables = {"m": rows}
    summary = bench.lesion_rows_summary(tables)
    assert "| m | s1 | 1 / 2 | 1.02 (1.00) | 1.00 | 1 / 2 | 1 | 0.05 (0.05) |" in summary
    brackets = bench.bracket_table(tables, 1, (0, 10, 400, 1000), "voxels")
    assert "| m | all | 0.50 (1 / 2) | 0.50 (1 / 2) | 0.50 | 1.0 |" in brackets
    assert "| m | [0,10) voxels | 1.00 (1 / 1) | 1.00 (1 / 1) | 1.00 | 0.0 |" in brackets
    assert "| m | [10,400) voxels | - (0 / 0) | 0.00 (0 / 1) | - | 1.0 |" in brackets
    assert "| m | [400,1000) voxels | 0.00 (0 / 1) | - (0 / 0) | - | 0.0 |" in brackets
