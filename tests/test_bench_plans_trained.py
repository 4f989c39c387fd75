"""benchmarks/plans_trained.py: the thick-slice copy (block means, majority labels, the affine
that keeps the anatomy in place) and the reading of a run's log against its budget."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.conftest import load_benchmark

bench = load_benchmark("plans_trained")


def test_thick_slices_are_block_means_and_majority_labels():
    image = np.arange(2 * 1 * 10, dtype=np.int16).reshape(2, 1, 10)  # slices 0..9 along z
    label = np.zeros((2, 1, 10), np.uint8)
    label[0, 0, [0, 1, 2]] = 1  # 3 of the first 4: majority 1
    label[1, 0, [4, 5]] = 2  # 2 of 4: a tie with background goes to the lower label (0)
    label[1, 0, 8] = 2  # 1 of the last, incomplete block of 2: tie -> 0
    out, lab = bench.thick_slices(image, label, 4)
    assert out.shape == (2, 1, 3) and lab.shape == (2, 1, 3)
    np.testing.assert_allclose(out[0, 0], [1.5, 5.5, 8.5])  # means of 0-3, 4-7, 8-9
    np.testing.assert_allclose(out[1, 0], [11.5, 15.5, 18.5])
    assert lab[0, 0].tolist() == [1, 0, 0] and lab[1, 0].tolist() == [0, 0, 0]


def test_thick_affine_centres_each_block_on_its_slices():
    affine = np.array([[1.0, 0, 0, -10], [0, 1, 0, 5], [0, 0, 1.0, 3], [0, 0, 0, 1]])
    thick = bench.thick_affine(affine, 4)
    # new voxel k is the centre of old slices 4k..4k+3, i.e. old index 4k + 1.5
    for k in range(3):
        old = affine @ np.array([0, 0, 4 * k + 1.5, 1])
        np.testing.assert_allclose(thick @ np.array([0, 0, k, 1]), old)


def _log(tmp_path: Path, rows: list[dict]) -> Path:
    keys = list(rows[0])
    lines = [",".join(keys)] + [",".join(str(r.get(k, "")) for k in keys) for r in rows]
    (tmp_path / "log.csv").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_read_run_and_budget_verdict(tmp_path: Path):
    rows = [{"epoch": 0, "iterations": 50, "net_seconds": 40.0, "data_seconds": 10.0, "seconds": 50.0, "val_dice": ""},
            {"epoch": 1, "iterations": 50, "net_seconds": 40.0, "data_seconds": 10.0, "seconds": 58.0, "val_dice": 0.5},
            {"epoch": 2, "iterations": 20, "net_seconds": 16.0, "data_seconds": 4.0, "seconds": 30.0, "val_dice": 0.6}]
    fig = bench.read_run(_log(tmp_path, rows), "x INFO delineo.train.loop: preprocessing ready in 12.5 s (9 cases)")
    assert fig.iterations == 120 and fig.epochs == 3 and fig.counted_s == 138.0
    assert fig.last_validation_s == 10.0 and abs(fig.step_s - 1.0) < 1e-9
    assert fig.best_dice == 0.6 and fig.setup_s == 12.5
    # counted 138 s: inside a 130 s budget plus the last validation (10 s) and a step or two
    assert bench.within_budget(fig, 130.0)
    assert not bench.within_budget(fig, 100.0)  # 38 s over: an overshoot


def test_planned_steps_from_the_plan_comment():
    assert bench.planned_steps("  # largest batch whose probed step (0.100 s on cpu) leaves 2400 >= 1000 steps") == 2400
    assert bench.planned_steps("  # NO probed set-up leaves 1000 steps in the budget: the fastest one "
                               "(0.500 s/step, 480 steps); give more time") == 480
