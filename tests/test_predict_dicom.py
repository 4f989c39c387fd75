"""`delineo predict` on a real DICOM CT series writes all four formats, each checked by reading
it back: NIfTI (geometry of the series), DICOM-SEG (identical mask), RTSTRUCT (Dice >= 0.95)
and an RGB overlay series (right size, new UIDs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import yaml

from .conftest import needs_shared


@pytest.fixture(scope="module")
def ct_model(tmp_path_factory):
    data = needs_shared()
    from delineo.config import config_from_dict
    from delineo.io import read_image, write_image
    from delineo.io.dicom import align_to_grid, read_dicom_series
    from delineo.train.loop import train

    root = tmp_path_factory.mktemp("ct")
    ct = read_dicom_series(data / "ct-abdomen" / "dicom")
    seg = align_to_grid(read_image(data / "ct-abdomen" / "example_seg_dicom.nii.gz"), ct)
    liver = ct.with_array((seg.array == 5).astype(np.uint8))
    msd = root / "msd"
    for i, flip in enumerate((False, True)):
        img = ct.with_array(ct.array[::-1].copy() if flip else ct.array)
        lab = liver.with_array(liver.array[::-1].copy() if flip else liver.array)
        write_image(img, msd / "imagesTr" / f"ct_{i}_0000.nii.gz")
        write_image(lab, msd / "labelsTr" / f"ct_{i}.nii.gz")
    (msd / "dataset.json").write_text(json.dumps({"modality": {"0": "CT"}, "labels": {"0": "background", "1": "liver"}}))
    cfg = config_from_dict({
        "name": "ct-liver",
        "data": {"source": {"type": "msd", "path": str(msd)}, "folds": 2},
        "preprocess": {"spacing": [3.0, 3.0, 3.0], "crop_foreground": False,
                       "intensity": [{"preset": "ct", "window": [-250, 250]}]},
        "sampling": {"mode": "2d", "patch_size": [64, 64], "batch_size": 8, "foreground_fraction": 0.8},
        "model": {"name": "unet", "filters": [8, 16, 32], "norm": "batch"},
        "train": {"epochs": 4, "iterations_per_epoch": 10, "num_threads": 2,
                  "optimizer": {"name": "adam", "lr": 0.01}, "schedule": {"name": "constant"}},
    })
    run = train(cfg, root / "runs", fold=0, progress=False)
    return run, data / "ct-abdomen" / "dicom", ct


def predict(run: Path, src: Path, out: Path, fmt: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    return subprocess.run([sys.executable, "-m", "delineo.cli", "predict", str(run), str(src), str(out), "--format",
                           fmt, "-q"], capture_output=True, text=True, env=env, timeout=300)


def test_all_four_formats(ct_model, tmp_path):
    from delineo.io import read_image
    from delineo.io.dicom_seg import read_dicom_seg
    from delineo.io.rtstruct import read_rtstruct

    run, src, ct = ct_model
    res = predict(run, src, tmp_path / "mask.nii.gz", "nifti")
    assert res.returncode == 0, res.stderr
    nifti = read_image(tmp_path / "mask.nii.gz")
    assert nifti.same_grid(ct) and nifti.array.shape == (512, 512, 20)
    assert (nifti.array == 1).sum() > 1000, "the tiny model should find some liver"
    sidecar = json.loads((tmp_path / "mask.json").read_text())
    assert sidecar["source"]["SeriesInstanceUID"] == ct.meta["series_uid"] and sidecar["labels"]["1"] == "liver"
    assert not {"PatientName", "PatientID", "PatientBirthDate", "path"} & set(sidecar["source"])  # no identity by default

    res = predict(run, src, tmp_path / "mask_seg.dcm", "dicom-seg")
    assert res.returncode == 0, res.stderr
    seg = read_dicom_seg(tmp_path / "mask_seg.dcm", ct, labels={1: "liver"})
    assert np.array_equal(seg.array, nifti.array)
    ds = pydicom.dcmread(tmp_path / "mask_seg.dcm")
    algorithm = ds.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert ds.Modality == "SEG" and ds.Manufacturer == "Delineo"
    assert str(algorithm.AlgorithmName).startswith("Delineo ct-liver")

    res = predict(run, src, tmp_path / "mask_rt.dcm", "rtstruct")
    assert res.returncode == 0, res.stderr
    rt = read_rtstruct(tmp_path / "mask_rt.dcm", ct)
    a, b = rt.array > 0, nifti.array > 0
    assert 2 * (a & b).sum() / (a.sum() + b.sum()) >= 0.95

    res = predict(run, src, tmp_path / "overlay", "overlay")
    assert res.returncode == 0, res.stderr
    files = sorted((tmp_path / "overlay").rglob("*.dcm"))
    assert len(files) == 20
    first = pydicom.dcmread(files[0])
    source = pydicom.dcmread(next(src.iterdir()))
    assert first.PhotometricInterpretation == "RGB" and first.SamplesPerPixel == 3
    assert (first.Rows, first.Columns) == (512, 512) and first.BitsAllocated == 8
    assert first.SeriesInstanceUID != source.SeriesInstanceUID and first.SOPInstanceUID != source.SOPInstanceUID
    assert first.pixel_array.shape == (512, 512, 3)


def test_dicom_format_needs_dicom_input(ct_model, tmp_path):
    run, _, _ = ct_model
    from delineo.io import write_image
    from delineo.io.image import Image

    write_image(Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), tmp_path / "x.nii.gz")
    res = predict(run, tmp_path / "x.nii.gz", tmp_path / "o.dcm", "dicom-seg")
    assert res.returncode == 2 and "needs a DICOM series" in res.stderr
    assert not (tmp_path / "o.dcm").exists()
