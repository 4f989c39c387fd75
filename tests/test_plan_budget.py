"""`delineo plan --budget`: in-plane spacing that does not up-sample the coarser studies, a field
of view from the label sizes, a timed probe that fits the budget, a comment on every choice."""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from delineo.config import DataConfig, load_config
from delineo.data.budget import MIN_STEPS, expected_steps, parse_duration
from delineo.data.plan import plan_dataset
from delineo.train.loop import train

from .conftest import phantom_case


def _mixed_spacing_msd(root: Path) -> Path:
    """Six 3D phantoms, four at 0.5 mm and two at 1.0 mm in plane, 1.5 mm slices."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    for i, sp in enumerate([0.5, 0.5, 0.5, 0.5, 1.0, 1.0]):
        image, label = phantom_case(rng, shape=(40, 44, 24))
        affine = np.diag([sp, sp, 1.5, 1.0])
        nib.save(nib.Nifti1Image(image, affine), root / "imagesTr" / f"c{i}_0000.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), root / "labelsTr" / f"c{i}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({"modality": {"0": "MR"}, "labels": {"0": "bg", "1": "a", "2": "b"}}))
    return root


def _thick_slice_msd(root: Path, n: int = 8) -> Path:
    """Phantoms with 4 mm slices and 1 mm pixels (a 2D plan), 48x48 in plane."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(1)
    for i in range(n):
        image, label = phantom_case(rng, shape=(48, 48, 12))
        affine = np.diag([1.0, 1.0, 4.0, 1.0])
        nib.save(nib.Nifti1Image(image, affine), root / "imagesTr" / f"t{i}_0000.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), root / "labelsTr" / f"t{i}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({"modality": {"0": "MR"}, "labels": {"0": "bg", "1": "a", "2": "b"}}))
    return root


def test_parse_duration():
    assert parse_duration("20m") == 1200 and parse_duration("1h30m") == 5400 and parse_duration("90s") == 90
    assert parse_duration("15") == 900
    with pytest.raises(ValueError):
        parse_duration("soon")


def test_budget_plan_spacing_field_of_view_and_comments(tmp_path: Path):
    data = DataConfig(source={"type": "msd", "path": str(_mixed_spacing_msd(tmp_path / "d"))})
    path, plan = plan_dataset(data, tmp_path / "p.yaml", progress=False, budget="1000h")
    cfg = load_config(path)  # a valid experiment
    assert 59990 < cfg.train.max_minutes <= 60000 and cfg.train.precision in ("auto", "fp32")
    # 90th percentile of the in-plane spacings (1.0), not the median (0.5): coarse studies are not up-sampled
    assert list(cfg.preprocess.spacing[:2]) == [1.0, 1.0] and cfg.preprocess.spacing[2] == 1.5
    assert cfg.sampling.mode == "3d"  # 1.5 / 1.0 is not thick-sliced
    # the largest phantom label is about 2*8*1.2 voxels = 19 mm on the 1 mm axis -> the field of view
    # covers it with context (at least 32 mm), capped at the median image extent (0.5 mm x 44 = 22 mm)
    patch_mm = np.array(cfg.sampling.patch_size) * np.array(cfg.preprocess.spacing)
    assert patch_mm[0] >= 20 and patch_mm[1] >= 22 and patch_mm[2] >= 32
    # an unlimited budget keeps the finest spacing and takes the wider network
    assert cfg.model["filters"][0] == 24
    # a comment above every planned choice
    text = path.read_text()
    for key in ("spacing:", "mode:", "patch_size:", "batch_size:", "filters:", "max_minutes:", "precision:"):
        line = next(i for i, l in enumerate(text.splitlines()) if l.strip().startswith(key))
        assert text.splitlines()[line - 1].strip().startswith("#"), key
    assert yaml.safe_load(text)["sampling"]["patch_size"] == cfg.sampling.patch_size


def test_a_budget_too_small_says_so(tmp_path: Path):
    data = DataConfig(source={"type": "msd", "path": str(_mixed_spacing_msd(tmp_path / "d"))})
    path, plan = plan_dataset(data, tmp_path / "p.yaml", progress=False, budget="1s")
    text = path.read_text()
    assert f"NO probed set-up leaves {MIN_STEPS} steps" in text
    assert plan["preprocess"]["spacing"][0] >= 2.0  # the coarsest candidates are the fastest


def _planned_and_trained(data: DataConfig, tmp_path: Path, budget: str, threads_wanted: int = 1) -> tuple[float, float, str]:
    """(iterations the plan expects, iterations a real training of the written plan made per unit
    of CPU share, the plan's text), both at ``threads_wanted`` threads (at most the cores). The
    default suite plans and trains on one thread: two threads of a small phantom network on a
    shared 2-core machine mostly wait for each other, which no probe of seconds can predict.

    The plan predicts the steps of an unshared machine; the machine running the tests is shared.
    The trainer logs each epoch's CPU seconds (``cpu_seconds``) next to its wall seconds: their
    ratio per thread is the share of the cores the run had, and iterations / share what it makes
    with the cores to itself."""
    threads = torch.get_num_threads()
    n = min(threads_wanted, os.cpu_count() or 1)
    torch.set_num_threads(n)
    try:
        path, _ = plan_dataset(data, tmp_path / "plan.yaml", progress=False, budget=budget)
        run = train(load_config(path), tmp_path / "runs", fold=0, progress=False)
    finally:
        torch.set_num_threads(threads)
    text = path.read_text()
    predicted = float(re.search(r"Expected iterations: (\d+)", text).group(1))
    with open(run / "log.csv") as fh:
        rows = list(csv.DictReader(fh))
    iterations = sum(int(r["iterations"]) for r in rows)
    cpu = sum(float(r["cpu_seconds"]) for r in rows)
    share = min(1.0, cpu / n / sum(float(r["seconds"]) for r in rows))
    return predicted, iterations / share, text


def test_expected_steps_accounts_for_validations_and_warm_up():
    # 100 s, 1 s steps, a 10 s validation every 20 steps (the first 5 s longer), 2 s warm-up:
    # 98 s = 20 steps + 15 s + 20 steps + 10 s + 20 steps + 10 s + 3 steps
    assert expected_steps(100, 1.0, 10, 20, warmup_s=2, val_warmup_s=5) == 63
    assert expected_steps(100, 1.0, 0, 20) == 100  # no validation cases
    assert expected_steps(10, 1.0, 50, 20) == 10  # the budget ends before the first validation


def test_planned_iterations_match_a_real_training(tmp_path: Path):
    """The plan's expected iterations against `delineo train` of the written plan, on phantoms.
    The probe used to time the network alone on random tensors: on small networks sampling,
    augmentation and validation dominate and it promised several times the steps training made."""
    data = DataConfig(source={"type": "msd", "path": str(_mixed_spacing_msd(tmp_path / "d"))})
    predicted, achieved, text = _planned_and_trained(data, tmp_path, "6s")
    assert "data " in text and "validations x" in text and "setup" in text  # the breakdown is written
    assert 0.6 <= predicted / achieved <= 1.6, (predicted, achieved)


@pytest.mark.soak
def test_planned_iterations_match_a_real_training_on_hippocampus(tmp_path: Path):
    """As above on the embedded hippocampus crops, for a one-minute budget."""
    sample = Path(__file__).resolve().parents[1] / "delineo" / "sample_data" / "hippocampus"
    data = DataConfig(source={"type": "msd", "path": str(sample)})
    predicted, achieved, _ = _planned_and_trained(data, tmp_path, "1m", threads_wanted=2)
    assert 0.6 <= predicted / achieved <= 1.6, (predicted, achieved)
