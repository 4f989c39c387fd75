"""The split logic of ``benchmarks/lopo_brain_tumour.py`` with known answers: every patient is
tested exactly once and never trains its own model, and the linked training folder holds the
other patients' files only."""

from __future__ import annotations

import json

import pytest

from tests.conftest import load_benchmark


def _bench():
    return load_benchmark("lopo_brain_tumour")


IDS = ["pgbm003_19950329", "pgbm003_19951017", "pgbm006_19961210", "pgbm008_19920331", "pgbm008_19930610"]


def test_every_patient_is_left_out_once_and_never_trains_its_own_model():
    folds = _bench().lopo_folds(list(reversed(IDS)))
    assert [p for p, _, _ in folds] == ["pgbm003", "pgbm006", "pgbm008"]
    for patient, train_ids, test_ids in folds:
        assert all(c.startswith(patient) for c in test_ids)
        assert not any(c.startswith(patient) for c in train_ids)
        assert sorted(train_ids + test_ids) == IDS
    assert sorted(c for _, _, t in folds for c in t) == IDS


def test_one_patient_is_refused():
    with pytest.raises(ValueError, match="two patients"):
        _bench().lopo_folds(["pgbm003_19950329", "pgbm003_19951017"])


def test_linked_folder_holds_only_the_training_cases(tmp_path):
    data = tmp_path / "data"
    (data / "imagesTr").mkdir(parents=True)
    (data / "labelsTr").mkdir()
    for cid in IDS:
        for ch in range(3):
            (data / "imagesTr" / f"{cid}_{ch:04d}.nii.gz").write_bytes(b"x")
        (data / "labelsTr" / f"{cid}.nii.gz").write_bytes(b"y")
    (data / "dataset.json").write_text(json.dumps({"name": "t", "numTraining": 5, "labels": {"0": "bg", "1": "t"}}))
    mod = _bench()
    _, train_ids, _ = mod.lopo_folds(IDS)[0]
    dest = mod.link_subset(data, train_ids, tmp_path / "subset")
    assert sorted(p.name for p in (dest / "labelsTr").iterdir()) == [f"{c}.nii.gz" for c in train_ids]
    assert len(list((dest / "imagesTr").iterdir())) == 3 * len(train_ids)
    assert json.loads((dest / "dataset.json").read_text())["numTraining"] == 3
    assert all(p.resolve().parent == (data / "imagesTr").resolve() for p in (dest / "imagesTr").iterdir())
    again = mod.link_subset(data, train_ids[:1], dest)  # remade, not added to
    assert len(list((again / "labelsTr").iterdir())) == 1
    with pytest.raises(FileNotFoundError, match="pgbm999"):
        mod.link_subset(data, ["pgbm999_20000101"], tmp_path / "bad")
