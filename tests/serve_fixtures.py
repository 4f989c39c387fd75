"""Fixtures shared by the viewer's tests (imported by tests/test_serve_*.py): a tiny hippocampus
model trained for two iterations in a models folder, and a DICOM export of a hippocampus case.

The model is deliberately untrained (it segments a blob, not the hippocampus): the tests check
the viewer's plumbing (upload, queue, overlay, correction, export), not accuracy.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "delineo" / "sample_data" / "hippocampus"
CASE = SAMPLE / "imagesTr" / "hippocampus_001_0000.nii.gz"


def tiny_experiment(data: Path) -> dict:
    return {
        "name": "hippo-tiny",
        "data": {"source": {"type": "msd", "path": str(data)}, "folds": 4, "seed": 0},
        "preprocess": {"orientation": "RAS", "crop_foreground": False, "intensity": [{"preset": "mr"}]},
        "sampling": {"mode": "2d", "patch_size": [40, 56], "batch_size": 8, "axis": 2, "foreground_fraction": 0.9},
        "model": {"name": "unet", "filters": [8, 16], "norm": "batch"},
        "train": {"epochs": 1, "iterations_per_epoch": 2, "val_every": 1, "num_threads": 2,
                  "optimizer": {"name": "adam", "lr": 0.02}},
    }


@pytest.fixture(scope="session")
def serve_models(tmp_path_factory) -> Path:
    """A ``--models`` folder holding one run folder (``hippo-tiny/fold_0``) trained on 8 sample cases."""
    from delineo.config import config_from_dict
    from delineo.train.loop import train

    root = tmp_path_factory.mktemp("serve_models")
    data = root / "data"
    (data / "imagesTr").mkdir(parents=True)
    (data / "labelsTr").mkdir()
    meta = json.loads((SAMPLE / "dataset.json").read_text())
    cases = sorted(p.name.replace("_0000.nii.gz", "") for p in (SAMPLE / "imagesTr").glob("*_0000.nii.gz"))[:8]
    for c in cases:
        shutil.copy(SAMPLE / "imagesTr" / f"{c}_0000.nii.gz", data / "imagesTr")
        shutil.copy(SAMPLE / "labelsTr" / f"{c}.nii.gz", data / "labelsTr")
    meta["training"] = [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in cases]
    (data / "dataset.json").write_text(json.dumps(meta))
    models = root / "models"
    train(config_from_dict(tiny_experiment(data)), models, fold=0, progress=False)
    shutil.rmtree(models / "hippo-tiny" / "cache", ignore_errors=True)
    return models


def dicom_series_from_nifti(nifti: Path, folder: Path, modality: str = "MR", seed: int = 1) -> Path:
    """Write ``nifti`` as a DICOM series (one file per k slice, LPS geometry from the affine), so
    that DICOM-SEG / RTSTRUCT export can be tested on the embedded hippocampus case."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    img = nib.load(str(nifti))
    data = np.asarray(img.dataobj, dtype=np.float32)
    lps = np.diag([-1.0, -1.0, 1.0]) @ img.affine[:3, :3]
    origin = np.diag([-1.0, -1.0, 1.0]) @ img.affine[:3, 3]
    spacing = np.sqrt((img.affine[:3, :3] ** 2).sum(axis=0))
    row_dir, col_dir = lps[:, 0] / spacing[0], lps[:, 1] / spacing[1]  # i runs along a row (columns)
    scaled = np.round((data - data.min()) / max(float(np.ptp(data)), 1e-6) * 4000).astype(np.uint16)
    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    sop_class = "1.2.840.10008.5.1.4.1.1.4"  # MR Image Storage
    now = dt.datetime(2026, 1, 2, 10, 0, 0)
    for k in range(data.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"slice{k:03d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Hippocampus", "HIPPO001", "19700101", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
        ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "A1", ""
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, 3, k + 1
        ds.SeriesDescription = "hippocampus sample"
        ds.Manufacturer = "Delineo test"
        ds.ImagePositionPatient = [float(v) for v in origin + lps[:, 2] * k]
        ds.ImageOrientationPatient = [float(v) for v in list(row_dir) + list(col_dir)]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]  # row spacing (j), column spacing (i)
        ds.SliceThickness = float(spacing[2])
        ds.Rows, ds.Columns = data.shape[1], data.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = np.ascontiguousarray(scaled[:, :, k].T).tobytes()  # rows = j, columns = i
        pydicom.dcmwrite(ds.filename, ds, enforce_file_format=True)
    return folder


def zip_folder(folder: Path, archive: Path) -> Path:
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                zf.write(f, f"study/{f.relative_to(folder)}")
    return archive


@pytest.fixture(scope="session")
def hippocampus_dicom_zip(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hippo_dicom")
    return zip_folder(dicom_series_from_nifti(CASE, root / "series"), root / "hippocampus_001_dicom.zip")
