"""The comparison logic of ``benchmarks/pipeline_brain_tumour.py`` on phantoms with known answers:
a post-processing search on validation phantoms must keep exactly one step (largest component)
that removes a false-positive blob; the pipeline's own post-processing stage applied to a test
phantom must then lift Dice and lesion precision to 1, and the script's tables must show it."""

from __future__ import annotations


import numpy as np

from delineo.infer.pipeline.postprocess import PostprocessStage
from delineo.infer.pipeline.stages import StageOutput, mask_from_probs
from delineo.postprocess.search import DEFAULT_CANDIDATES, SearchCase, search_steps, search_thresholds

from tests.conftest import load_benchmark

SPACING = (0.5, 0.5, 6.5)  # mm, as the brain-tumour studies: 1.625 microlitres per voxel
VOXEL_ML = 0.5 * 0.5 * 6.5 / 1000


def _bench():
    return load_benchmark("pipeline_brain_tumour")


def _phantom(shift: int) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities (2, 40, 40, 8), reference): a 10x10x3 tumour predicted exactly, plus a
    6x6x2 false-positive blob far from it, both at probability 0.9."""
    ref = np.zeros((40, 40, 8), np.uint8)
    ref[5 + shift:15 + shift, 5:15, 2:5] = 1
    fg = np.full(ref.shape, 0.1, np.float32)
    fg[ref == 1] = 0.9
    fg[28:34, 28:34, 5:7] = 0.9
    return np.stack([1 - fg, fg]), ref


def test_search_keeps_largest_and_the_table_shows_what_it_did():
    bench = _bench()
    labels = {1: "tumour"}
    val = [_phantom(s) for s in (0, 2, 4)]
    thresholds, thr_table = search_thresholds([p for p, _ in val], [r for _, r in val], [1], [0.3, 0.5, 0.7])
    assert thresholds == {}  # every threshold keeps both blobs: no gain over arg-max
    cases = [SearchCase(mask_from_probs(p, [1]), r, SPACING) for p, r in val]
    chosen, step_table = search_steps(cases, [1], DEFAULT_CANDIDATES)
    assert chosen == {1: [{"name": "largest"}]}
    base = 2 * 300 / (300 + 372)  # the tumour found exactly, 72 false-positive voxels
    assert abs(step_table[0]["dice"] - base) < 1e-12
    assert [r["kept"] for r in step_table] == [True, True, False, False, False, False]
    assert abs(step_table[1]["dice"] - 1.0) < 1e-12

    tables = {"clean.thresholds": thr_table, "clean.steps": step_table}
    assert bench.chosen_thresholds(tables) == {1: "arg-max"}
    text = bench.search_table(tables, labels)
    assert "| tumour step | largest | 1.0000 | yes |" in text
    assert "| tumour step | fill_holes | 1.0000 | no |" in text
    assert f"| tumour threshold | arg-max | {base:.4f} | |" in text

    # the test phantom through the pipeline's own post-processing stage
    probs, ref = _phantom(10)
    stage = PostprocessStage("clean", labels, steps=chosen)
    plain = mask_from_probs(probs, [1])
    post = stage.apply(StageOutput(probs, labels, plain), SPACING)
    without = bench.study_row("p_1", plain, ref, SPACING, seconds=1.5, peak_mb=800.0)
    with_pp = bench.study_row("p_1", post, ref, SPACING, seconds=1.6, peak_mb=810.0)
    assert abs(without["dice"] - base) < 1e-12 and with_pp["dice"] == 1.0
    assert (without["lesions_ref"], without["lesions_pred"]) == (1, 2) and (with_pp["lesions_pred"]) == 1
    assert without["lesion_recall"] == 1.0 and without["lesion_precision"] == 0.5 and with_pp["lesion_precision"] == 1.0
    assert abs(without["volume_pred_ml"] - 372 * VOXEL_ML) < 1e-9 and abs(with_pp["volume_ref_ml"] - 300 * VOXEL_ML) < 1e-9
    assert with_pp["hd95"] == 0.0 and without["hd95"] > 9.7  # the blob lies >= 9.7 mm from the tumour

    # a study with nothing predicted: Dice 0, HD95 and lesion precision undefined (shown as -)
    empty = bench.study_row("p_2", np.zeros_like(ref), ref, SPACING, seconds=1.0, peak_mb=700.0)
    assert empty["dice"] == 0.0 and empty["hd95"] is None and empty["lesion_precision"] is None
    table = bench.comparison_table({"without post-processing": [without, empty],
                                    "with chosen post-processing": [with_pp]})
    lines = table.splitlines()
    assert len(lines) == 2 + 3 + 2
    mean_without = next(x for x in lines if x.startswith("| without post-processing | **mean**"))
    # Dice mean over both studies; HD95 and lesion precision over the defined one only
    assert f"| {base / 2:.3f} | {without['hd95']:.1f} | 2 / 2 | 0.50 | 0.50 |" in mean_without
    assert "| p_2 | 0.000 | - | 1 / 0 | 0.00 | - |" in table
    assert "| with chosen post-processing | **mean** | 1.000 | 0.0 | 1 / 1 | 1.00 | 1.00 |" in table
