"""Dataset sources (MSD with 4D files, CSV, deoxys HDF5) and patient-level splits."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest

from delineo.config import DataConfig
from delineo.data.sources import Case, load_dataset
from delineo.data.splits import fold_cases, load_or_make_splits, make_splits
from delineo.errors import InputError

from .conftest import SAMPLE, write_msd


def test_embedded_sample_is_an_msd_dataset():
    ds = load_dataset(DataConfig(source={"type": "msd", "path": str(SAMPLE)}))
    assert len(ds.cases) == 48 and ds.labels == {1: "Anterior", 2: "Posterior"} and ds.channels == ["MRI"]
    images, label = ds.cases[0].load()
    assert images[0].array.shape == label.array.shape


def test_msd_4d_channels(tmp_path):
    root = tmp_path / "four"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for i in range(3):
        nib.save(nib.Nifti1Image(np.random.rand(6, 7, 8, 2).astype(np.float32), np.eye(4)), root / "imagesTr" / f"c{i}.nii.gz")
        nib.save(nib.Nifti1Image(np.zeros((6, 7, 8), np.uint8), np.eye(4)), root / "labelsTr" / f"c{i}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({"modality": {"0": "CT", "1": "PET"}, "labels": {"0": "bg", "1": "tumour"}}))
    ds = load_dataset(DataConfig(source={"type": "msd", "path": str(root)}))
    images, _ = ds.cases[0].load()
    assert ds.channels == ["CT", "PET"] and len(images) == 2 and images[1].array.shape == (6, 7, 8)


def test_csv_case_list(tmp_path):
    data = write_msd(tmp_path / "d", n=6)
    rows = ["patient,group,flair,label"]
    for i in range(6):
        rows.append(f"p{i // 2},{'A' if i < 4 else 'B'},d/imagesTr/ph_{i:03d}_0000.nii.gz,d/labelsTr/ph_{i:03d}.nii.gz")
    (tmp_path / "cases.csv").write_text("\n".join(rows))
    ds = load_dataset(DataConfig(source={"type": "csv", "path": str(tmp_path / "cases.csv"), "channels": ["flair"]}, folds=2))
    assert [c.patient for c in ds.cases] == ["p0", "p0", "p1", "p1", "p2", "p2"]
    assert ds.cases[0].load()[0][0].array.shape == (24, 28, 20)
    (tmp_path / "bad.csv").write_text("flair,mask\nx.nii.gz,y.nii.gz\n")
    with pytest.raises(InputError, match="bad.csv: no label column 'label'"):
        load_dataset(DataConfig(source={"type": "csv", "path": str(tmp_path / "bad.csv")}))


def test_hdf5_deoxys_layout(tmp_path):
    path = tmp_path / "folds.h5"
    with h5py.File(path, "w") as fh:
        for f in range(3):
            g = fh.create_group(f"fold_{f}")
            g["x"] = np.random.rand(10, 16, 12, 2).astype(np.float32)
            g["y"] = (np.random.rand(10, 16, 12, 1) > 0.5).astype(np.float32)
            g["patient_idx"] = np.repeat([f * 10 + 1, f * 10 + 2], [4, 6])
    ds = load_dataset(DataConfig(source={"type": "hdf5", "path": str(path)}))
    assert len(ds.cases) == 6 and len(ds.channels) == 2
    images, label = ds.cases[1].load()
    assert images[0].array.shape == (16, 12, 6) and label.array.shape == (16, 12, 6)  # 6 slices of patient 2
    splits = make_splits(ds.cases, folds=5)
    assert len(splits["folds"]) == 3  # the file's own folds are kept
    assert set(splits["folds"][1]["val"]) == {"fold_1_p11", "fold_1_p12"}


def cases(n_patients: int, per_patient: int = 2) -> list[Case]:
    return [Case(f"p{p}_s{s}", patient=f"p{p}", group="big" if p % 3 == 0 else "small")
            for p in range(n_patients) for s in range(per_patient)]


def test_splits_are_patient_level_stratified_and_seeded(tmp_path):
    cs = cases(30)
    splits = make_splits(cs, folds=5, seed=3)
    vals = [set(f["val"]) for f in splits["folds"]]
    assert sum(len(v) for v in vals) == 60 and len(set().union(*vals)) == 60
    for f in splits["folds"]:
        pv = {c.split("_")[0] for c in f["val"]}
        pt = {c.split("_")[0] for c in f["train"]}
        assert not pv & pt  # a patient never in both
        groups = Counter("big" if int(p[1:]) % 3 == 0 else "small" for p in pv)
        assert groups["big"] == 2 and groups["small"] == 4  # 10 big / 20 small patients dealt evenly
    assert make_splits(cs, folds=5, seed=3) == splits
    assert make_splits(cs, folds=5, seed=4) != splits
    saved = load_or_make_splits(tmp_path / "splits.json", cs, 5, 3, True, 0.0)
    assert load_or_make_splits(tmp_path / "splits.json", cs, 5, 99, True, 0.0) == saved  # reused
    with pytest.raises(InputError, match="do not match"):
        load_or_make_splits(tmp_path / "splits.json", cases(31), 5, 3, True, 0.0)


def test_test_fraction_and_all_folds():
    splits = make_splits(cases(20), folds=4, test_fraction=0.2)
    assert len(splits["test"]) == 8
    train, val = fold_cases(splits, None)
    assert len(train) == 32 and val == [] and not set(train) & set(splits["test"])


def test_csv_with_dicom_series_and_dicom_seg_label(tmp_path):
    from .conftest import needs_shared

    data = needs_shared() / "ct-liver-seg"
    series = tmp_path / "series"
    series.mkdir()
    for f in ("01.dcm", "02.dcm", "03.dcm"):
        (series / f).write_bytes((data / f).read_bytes())
    (tmp_path / "cases.csv").write_text(f"id,patient,ct,label\na,p1,{series},{data / 'liver.dcm'}\nb,p2,{series},{data / 'liver.dcm'}\n")
    ds = load_dataset(DataConfig(source={"type": "csv", "path": str(tmp_path / "cases.csv"), "channels": ["ct"]}, folds=2))
    images, label = ds.cases[0].load()
    from delineo.io import read_image

    expected = read_image(data / "liver_seg.nrrd")
    assert label.same_grid(images[0])
    np.testing.assert_array_equal(label.array > 0, expected.array > 0)
