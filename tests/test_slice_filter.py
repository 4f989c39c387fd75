"""Training-slice selection: entropy with known answers, foreground, combinations, and the sampler
drawing only kept slices (training only)."""

from __future__ import annotations

import numpy as np
import pytest

from delineo.config import SliceFilterConfig, config_from_dict
from delineo.data.cache import CachedCase
from delineo.errors import ConfigError
from delineo.sampling.patches import PatchSampler
from delineo.sampling.slice_filter import entropy_profile, select_slices, slice_entropy


def test_entropy_known_answers():
    assert slice_entropy(np.full((16, 16), 7.5)) == 0.0                      # constant slice
    levels = np.arange(256, dtype=np.float32).repeat(4).reshape(32, 32)
    assert slice_entropy(levels) == pytest.approx(8.0)                       # 256 equally frequent levels
    assert slice_entropy(levels * 0.01 - 3) == pytest.approx(8.0)            # independent of linear scaling
    two = np.zeros((8, 8)); two[:4] = 1
    assert slice_entropy(two) == pytest.approx(1.0)                          # two equal halves: 1 bit
    assert slice_entropy(levels, bins=16) == pytest.approx(4.0)              # 16 bins of 16 levels each
    quarter = np.zeros((8, 8)); quarter[:2] = 1                              # p = 1/4, 3/4
    assert slice_entropy(quarter) == pytest.approx(-(0.25 * np.log2(0.25) + 0.75 * np.log2(0.75)))


def _case(case_id="c0"):
    """10 slices along the last axis: 0-3 blank (constant value 1000*k), 4-9 noise around 1000*k;
    foreground (label 1) on slices 2 and 6."""
    rng = np.random.default_rng(0)
    image = np.zeros((1, 16, 16, 10), np.float32)
    for k in range(10):
        image[0, ..., k] = 1000 * k + (rng.random((16, 16)) if k >= 4 else 0)
    label = np.zeros((16, 16, 10), np.uint8)
    label[4:8, 4:8, 2] = 1
    label[4:8, 4:8, 6] = 1
    coords = np.argwhere(label == 1)
    return CachedCase(case_id, image, label, None, {1: coords})


@pytest.mark.parametrize("filters,combine,expected", [
    (["entropy"], "all", [4, 5, 6, 7, 8, 9]),
    (["foreground"], "all", [2, 6]),
    (["entropy", "foreground"], "all", [6]),
    (["entropy", "foreground"], "any", [2, 4, 5, 6, 7, 8, 9]),
])
def test_filters_and_combinations(filters, combine, expected):
    case = _case()
    cfg = SliceFilterConfig(filters=filters, combine=combine)
    kept, masks = select_slices(case.image, case.label, 2, cfg)
    assert np.flatnonzero(kept).tolist() == expected
    assert set(masks) == set(filters)


@pytest.mark.parametrize("mode", ["2d", "2.5d"])
def test_sampler_draws_only_kept_slices_and_counts_them(mode):
    cfg = SliceFilterConfig(filters=["entropy"], entropy_threshold=2.0)
    sampler = PatchSampler([_case("a"), _case("b")], mode, [16, 16], axis=2, context=1,
                           foreground_fraction=0.5, slice_filter=cfg)
    x, y = sampler.sample(200, np.random.default_rng(1))
    centre = x[:, 1] if mode == "2.5d" else x[:, 0]  # 2.5D: the middle of the 3 stacked slices
    drawn = np.unique(np.floor(centre.max(axis=(1, 2)) / 1000).astype(int))
    assert set(drawn.tolist()) <= {4, 5, 6, 7, 8, 9} and len(drawn) >= 5
    assert y[:, 0].any(axis=(1, 2)).sum() > 50  # foreground draws still happen, on kept slice 6
    counts = sampler.selection.counts
    assert counts["total"] == 20 and counts["kept"] == {"entropy": 12, "combined": 12}
    # without a filter the blank slices are drawn too
    plain = PatchSampler([_case("a")], mode, [16, 16], axis=2, foreground_fraction=0.0)
    x, _ = plain.sample(200, np.random.default_rng(1))
    assert (np.floor((x[:, 1] if mode == "2.5d" else x[:, 0]).max(axis=(1, 2)) / 1000) < 4).any()


def test_nothing_kept_and_3d_are_refused():
    with pytest.raises(ConfigError, match="no training slice"):
        PatchSampler([_case()], "2d", [16, 16], slice_filter=SliceFilterConfig(entropy_threshold=9.0))
    with pytest.raises(ConfigError, match="slice_filter needs mode 2d or 2.5d"):
        config_from_dict({"data": {"source": {"path": "x"}}, "sampling": {"slice_filter": {}}})


def test_entropy_profile_real_volume():
    """The embedded hippocampus crops: every slice through the brain carries > 2 bits."""
    from pathlib import Path

    import nibabel as nib

    path = sorted((Path(__file__).resolve().parents[1] / "delineo" / "sample_data" / "hippocampus"
                   / "imagesTr").glob("*.nii.gz"))[0]
    profile = entropy_profile(np.asarray(nib.load(path).dataobj), axis=2)
    assert profile.shape[0] == nib.load(path).shape[2]
    assert (profile > 2.0).all() and (profile <= 8.0).all()


def test_inspect_verb_writes_profiles(tmp_path, capsys):
    """`delineo inspect` on the embedded hippocampus sample: one PNG per case, one CSV row per slice."""
    import csv
    from pathlib import Path

    from delineo.cli import main

    sample = Path(__file__).resolve().parents[1] / "delineo" / "sample_data" / "hippocampus"
    assert main(["-q", "inspect", str(sample), "--max-cases", "2", "--out", str(tmp_path), "--threshold", "2"]) == 0
    printed = capsys.readouterr().out
    rows = list(csv.DictReader(open(tmp_path / "entropy.csv")))
    cases = sorted({r["case"] for r in rows})
    assert len(cases) == 2 and all((tmp_path / f"entropy_{c}.png").read_bytes()[:4] == b"\x89PNG" for c in cases)
    first = [r for r in rows if r["case"] == cases[0]]
    assert [int(r["slice"]) for r in first] == list(range(len(first)))
    assert sum(r["foreground"] == "True" for r in first) > 0
    assert f"{len(first)}/{len(first)} slices above 2 bits" in printed
    assert main(["-q", "inspect", str(sample), "--case", "nope", "--out", str(tmp_path / "x")]) == 2


def test_training_run_records_the_filter_and_evaluates_lesions(tmp_path):
    """A tiny 2D run with the foreground filter: slice_filter.json counts the training slices with
    foreground (validation is untouched), and the evaluation writes lesions.csv and the report sections."""
    import json

    import nibabel as nib

    from delineo.evaluate.run import evaluate_run
    from delineo.train.loop import train

    from .conftest import phantom_experiment, write_msd

    data = write_msd(tmp_path / "data", n=6)
    raw = phantom_experiment(data, epochs=1, iterations_per_epoch=2)
    raw["sampling"]["slice_filter"] = {"filters": ["foreground"]}
    cfg = config_from_dict(raw)
    run = train(cfg, tmp_path / "runs", 0, progress=False)
    counts = json.loads((run / "slice_filter.json").read_text())
    expected_total = expected_fg = 0
    for cid in json.loads((run / "cases.json").read_text())["train"]:  # preprocessing keeps the grid here
        label = np.asarray(nib.load(data / "labelsTr" / f"{cid}.nii.gz").dataobj)
        expected_total += label.shape[2]
        expected_fg += int((label > 0).any(axis=(0, 1)).sum())
    assert counts["total"] == expected_total and counts["kept"]["foreground"] == expected_fg < expected_total
    evaluate_run(run, progress=False)
    html = (run / "report.html").read_text()
    assert "Training-slice filter" in html and "Lesions" in html
    assert (run / "metrics" / "lesions.csv").is_file()
    from delineo.evaluate.table import read_cases_csv

    for row in read_cases_csv(run / "metrics" / "cases.csv"):  # validation scored every slice
        assert row["n_slices"] == np.asarray(nib.load(data / "labelsTr" / f"{row['case']}.nii.gz").dataobj).shape[2]
