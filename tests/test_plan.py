"""`delineo plan`: the fingerprint decides spacing, 2D/3D, patch, depth and intensity presets."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import yaml

from delineo.config import DataConfig, load_config
from delineo.data.plan import fingerprint, make_plan, plan_dataset

from .conftest import SAMPLE, phantom_case


def test_plan_for_the_hippocampus_sample_matches_the_tuned_experiment(tmp_path):
    path, plan = plan_dataset(DataConfig(source={"type": "msd", "path": str(SAMPLE)}), tmp_path / "h.yaml", progress=False)
    cfg = load_config(path)
    assert cfg.sampling.mode == "3d" and cfg.sampling.patch_size == [40, 56, 40]  # as examples/hippocampus.yaml
    assert cfg.model["filters"] == [16, 32, 64, 128] and cfg.preprocess.spacing is None
    assert cfg.preprocess.intensity[0].preset == "mr"


def test_thick_slices_give_a_2d_plan_and_ct_gets_a_window(tmp_path):
    root = tmp_path / "ct"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        image, label = phantom_case(rng, shape=(48, 40, 12))
        hu = (image - 10) * 100  # background about 0 HU, structures 200 and 400 HU
        affine = np.diag([0.8, 0.8, 5.0 + 0.2 * i, 1.0])  # thick, slightly varying slices
        nib.save(nib.Nifti1Image(hu.astype(np.float32), affine), root / "imagesTr" / f"c{i}_0000.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), root / "labelsTr" / f"c{i}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({"modality": {"0": "CT"}, "labels": {"0": "bg", "1": "a", "2": "b"}}))
    data = DataConfig(source={"type": "msd", "path": str(root)})
    fp = fingerprint(data, progress=False)
    plan = make_plan(fp, "ct", data)
    assert plan["sampling"]["mode"] == "2d" and plan["sampling"]["axis"] == 2
    assert plan["preprocess"]["spacing"] == [0.8, 0.8, 5.3]  # median, since the slices vary
    window = plan["preprocess"]["intensity"][0]
    assert window["preset"] == "ct" and 100 <= window["window"][0] < 250 and 350 < window["window"][1] <= 500
    assert plan["data"]["folds"] == 4  # one fold per case: 4 cases cannot fill the usual 5
    # the plan is a valid experiment that trains
    plan["train"].update({"max_minutes": None, "epochs": 1, "iterations_per_epoch": 1, "num_threads": 1})
    plan["data"]["folds"] = 2
    (tmp_path / "ct.yaml").write_text(yaml.safe_dump(plan))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "delineo.cli", "-q", "train", str(tmp_path / "ct.yaml"), "--runs",
                          str(tmp_path / "runs")], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr


def test_cli_plan(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "delineo.cli", "-q", "plan", str(SAMPLE), "--out", str(tmp_path / "p.yaml")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "3d U-Net" in res.stdout and (tmp_path / "p.yaml").read_text().startswith("# Planned by `delineo plan`")
