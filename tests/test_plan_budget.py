"""`delineo plan --budget`: in-plane spacing that does not up-sample the coarser studies, a field
of view from the label sizes, a timed probe that fits the budget, a comment on every choice."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from delineo.config import DataConfig, load_config
from delineo.data.budget import MIN_STEPS, parse_duration
from delineo.data.plan import plan_dataset

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


def test_parse_duration():
    assert parse_duration("20m") == 1200 and parse_duration("1h30m") == 5400 and parse_duration("90s") == 90
    assert parse_duration("15") == 900
    with pytest.raises(ValueError):
        parse_duration("soon")


def test_budget_plan_spacing_field_of_view_and_comments(tmp_path: Path):
    data = DataConfig(source={"type": "msd", "path": str(_mixed_spacing_msd(tmp_path / "d"))})
    path, plan = plan_dataset(data, tmp_path / "p.yaml", progress=False, budget="1000h")
    cfg = load_config(path)  # a valid experiment
    assert cfg.train.max_minutes == 60000 and cfg.train.precision in ("auto", "fp32")
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
