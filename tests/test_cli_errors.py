"""Every bad input gets one sentence naming the file and the problem, a non-zero exit, no
traceback and no partial output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from .conftest import phantom_experiment, write_msd


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "delineo.cli", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def one_sentence(res: subprocess.CompletedProcess, *needles: str) -> str:
    assert res.returncode == 2, res.stderr
    lines = [l for l in res.stderr.strip().splitlines() if "error:" in l]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def train_on(tmp_path: Path, data: Path, **extra) -> subprocess.CompletedProcess:
    exp = phantom_experiment(data, epochs=1, iterations_per_epoch=1)
    exp.update(extra)
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(exp))
    return cli("train", str(tmp_path / "exp.yaml"), "--runs", str(tmp_path / "runs"), "-q")


def assert_no_run_output(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "phantom" / "fold_0"
    assert not (run / "checkpoints" / "last.pt").exists()


def test_unknown_key_in_experiment(tmp_path):
    write_msd(tmp_path / "d", n=6)
    one_sentence(train_on(tmp_path, tmp_path / "d", trian={}), "exp.yaml", "unknown key 'trian'", "'train'")
    assert not (tmp_path / "runs").exists()


def test_missing_experiment_file(tmp_path):
    one_sentence(cli("train", str(tmp_path / "nope.yaml")), "nope.yaml", "not found")


def test_label_shape_mismatch(tmp_path):
    data = write_msd(tmp_path / "d", n=6)
    nib.save(nib.Nifti1Image(np.zeros((5, 5, 5), np.uint8), np.diag([1, 1, 1.5, 1])), data / "labelsTr" / "ph_003.nii.gz")
    one_sentence(train_on(tmp_path, data), "ph_003.nii.gz", "label shape does not match")
    assert_no_run_output(tmp_path)


def test_label_affine_mismatch(tmp_path):
    data = write_msd(tmp_path / "d", n=6)
    lab = nib.load(data / "labelsTr" / "ph_002.nii.gz")
    nib.save(nib.Nifti1Image(np.asarray(lab.dataobj), np.diag([2, 1, 1.5, 1])), data / "labelsTr" / "ph_002.nii.gz")
    one_sentence(train_on(tmp_path, data), "ph_002.nii.gz", "label affine does not match")


def test_undeclared_label_value(tmp_path):
    data = write_msd(tmp_path / "d", n=6)
    lab = nib.load(data / "labelsTr" / "ph_001.nii.gz")
    arr = np.asarray(lab.dataobj).copy()
    arr[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(arr, lab.affine), data / "labelsTr" / "ph_001.nii.gz")
    one_sentence(train_on(tmp_path, data), "ph_001.nii.gz", "label values [7] are not declared")


def test_nan_voxels_in_training_image(tmp_path):
    data = write_msd(tmp_path / "d", n=6)
    img = nib.load(data / "imagesTr" / "ph_004_0000.nii.gz")
    arr = np.asarray(img.dataobj).astype(np.float32)
    arr[1, 1, 1] = np.nan
    nib.save(nib.Nifti1Image(arr, img.affine), data / "imagesTr" / "ph_004_0000.nii.gz")
    one_sentence(train_on(tmp_path, data), "ph_004_0000.nii.gz", "NaN or infinite")


def test_missing_channel(tmp_path):
    data = write_msd(tmp_path / "d", n=6)
    meta = json.loads((data / "dataset.json").read_text())
    meta["modality"] = {"0": "FLAIR", "1": "T1"}
    (data / "dataset.json").write_text(json.dumps(meta))
    for f in sorted((data / "imagesTr").iterdir())[1:]:
        f.rename(f.with_name(f.name))  # keep _0000
        os.link(f, f.with_name(f.name.replace("_0000", "_0001")))
    one_sentence(train_on(tmp_path, data), "ph_000", "lacks channel file", "ph_000_0001")


@pytest.fixture(scope="module")
def phantom_model(tmp_path_factory) -> Path:
    """A one-iteration model trained through the CLI, shared by the predict tests: a real
    checkpoint, so that predict gets past it and reaches the bad input."""
    root = tmp_path_factory.mktemp("model")
    data = write_msd(root / "d", n=6)
    res = train_on(root, data)
    assert res.returncode == 0, res.stderr
    return root / "runs" / "phantom" / "fold_0"


def test_truncated_nifti_in_predict(tmp_path, phantom_model):
    model = phantom_model
    for name, keep in (("in.nii.gz", 200), ("in.nii", 1000)):
        bad = tmp_path / name
        nib.save(nib.Nifti1Image(np.random.rand(24, 28, 20).astype(np.float32), np.eye(4)), bad)
        bad.write_bytes(bad.read_bytes()[:keep])
        line = one_sentence(cli("predict", str(model), str(bad), str(tmp_path / "out.nii.gz")), name)
        assert "truncated" in line or "not a readable NIfTI" in line, line
        assert not (tmp_path / "out.nii.gz").exists()
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"garbage")
    one_sentence(cli("predict", str(ckpt), str(bad), str(tmp_path / "out.nii.gz")), "model.pt", "not a readable Delineo checkpoint")


def test_4d_input_and_corrupt_input_in_predict(tmp_path, phantom_model):
    model = phantom_model
    four = tmp_path / "four.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((6, 6, 6, 3), np.float32), np.eye(4)), four)
    one_sentence(cli("predict", str(model), str(four), str(tmp_path / "o1.nii.gz")), "four.nii.gz", "4D image")
    assert not (tmp_path / "o1.nii.gz").exists()
    folder = tmp_path / "batch"
    folder.mkdir()
    nib.save(nib.Nifti1Image(np.random.rand(24, 28, 20).astype(np.float32), np.eye(4)), folder / "a.nii.gz")
    (folder / "b.nii.gz").write_bytes(b"\x1f\x8b broken")
    one_sentence(cli("predict", str(model), str(folder), str(tmp_path / "o2")), "b.nii.gz", "not a readable NIfTI")
    assert not (tmp_path / "o2").exists()  # nothing written, not even for the good file
    one_sentence(cli("predict", str(model), str(tmp_path / "missing.nii.gz"), str(tmp_path / "o3.nii.gz")),
                 "missing.nii.gz", "not found")
