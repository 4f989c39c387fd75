"""Tests of metric tables, summaries and folder evaluation on small synthetic NIfTI/NRRD files."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from delineo.errors import InputError
from delineo.evaluate.metrics import METRICS
from delineo.evaluate.table import (
    evaluate_folders,
    read_cases_csv,
    rows_from_scores,
    summarise,
    write_cases_csv,
    write_summary_json,
)
from delineo.io.files import write_image
from delineo.io.image import Image

AFFINE = np.diag([1.0, 1.0, 2.0, 1.0])


def _row(case, label, **metrics):
    row = {"case": case, "label": label, **{m: 0 for m in METRICS}}
    row.update(metrics)
    return row


def test_summarise_ignores_none_and_counts_it():
    rows = [
        _row("a", "liver", dice=0.8, hd95=2.0),
        _row("b", "liver", dice=0.6, hd95=None),
        _row("c", "liver", dice=1.0, hd95=4.0),
        _row("a", "tumour", dice=0.2, hd95=None),
        _row("b", "tumour", dice=None, hd95=None),
    ]
    s = summarise(rows)
    assert s["n_cases"] == 3
    liver, tumour = s["labels"]["liver"], s["labels"]["tumour"]
    assert liver["dice"]["mean"] == pytest.approx(0.8)
    assert liver["dice"]["median"] == pytest.approx(0.8)
    assert liver["dice"]["std"] == pytest.approx(0.2)  # sample std of 0.6, 0.8, 1.0
    assert liver["hd95"] == {"mean": 3.0, "median": 3.0, "std": pytest.approx(np.sqrt(2)), "n": 2, "n_undefined": 1}
    assert tumour["dice"]["n"] == 1 and tumour["dice"]["n_undefined"] == 1 and tumour["dice"]["std"] is None
    assert tumour["hd95"] == {"mean": None, "median": None, "std": None, "n": 0, "n_undefined": 2}
    assert s["mean_dice"] == pytest.approx((0.8 + 0.2) / 2)  # mean of per-label means


def test_csv_and_json_round_trip(tmp_path):
    rows = [_row("case<1>", "liver", dice=0.123456789012, hd95=None, tp=5)]
    path = write_cases_csv(rows, tmp_path / "m" / "cases.csv")
    with open(path) as fh:
        lines = list(csv.reader(fh))
    assert lines[0] == ["case", "label", *METRICS]
    back = read_cases_csv(path)
    assert back[0]["dice"] == 0.123456789012 and back[0]["hd95"] is None and back[0]["tp"] == 5
    summary = summarise(back)
    jpath = write_summary_json(summary, tmp_path / "m" / "summary.json")
    assert json.loads(jpath.read_text()) == json.loads(json.dumps(summary))
    assert "NaN" not in jpath.read_text()
    assert not [p for p in (tmp_path / "m").iterdir() if p.name.startswith(".")]  # no temp files left


def test_rows_from_scores():
    rows = rows_from_scores("c1", {"liver": {"dice": 1.0}, "tumour": {"dice": 0.5}})
    assert rows == [{"case": "c1", "label": "liver", "dice": 1.0}, {"case": "c1", "label": "tumour", "dice": 0.5}]


def _write(folder, name, array, affine=AFFINE):
    folder.mkdir(parents=True, exist_ok=True)
    write_image(Image(array.astype(np.uint8), affine), folder / name)


def _dataset(tmp_path):
    """Three cases: perfect, half-overlapping label 1, and one case where label 2 is missed."""
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    base = np.zeros((12, 12, 6), np.uint8)
    r1 = base.copy(); r1[2:6, 2:6, 1:3] = 1
    p1 = r1.copy()
    r2 = base.copy(); r2[2:6, 2:6, 1:3] = 1
    p2 = base.copy(); p2[4:8, 2:6, 1:3] = 1  # overlap 2x4x2 of 32 -> dice 0.5
    r3 = r1.copy(); r3[8:10, 8:10, 4:5] = 2  # 4 voxels of 2 mm^3
    p3 = r1.copy()
    for name, ref, pred in (("c1", r1, p1), ("c2", r2, p2), ("c3", r3, p3)):
        _write(ref_dir, f"{name}.nii.gz", ref)
        _write(pred_dir, f"{name}.nii.gz", pred)
    return pred_dir, ref_dir


def test_evaluate_folders_infers_labels_and_writes_tables(tmp_path):
    pred_dir, ref_dir = _dataset(tmp_path)
    _write(pred_dir, "extra.nii.gz", np.zeros((12, 12, 6)))  # ignored with a warning
    summary = evaluate_folders(pred_dir, ref_dir, None, tmp_path / "out")
    rows = read_cases_csv(tmp_path / "out" / "metrics" / "cases.csv")
    assert [(r["case"], r["label"]) for r in rows] == [
        ("c1", "label_1"), ("c1", "label_2"), ("c2", "label_1"), ("c2", "label_2"), ("c3", "label_1"), ("c3", "label_2"),
    ]
    by = {(r["case"], r["label"]): r for r in rows}
    assert by[("c2", "label_1")]["dice"] == pytest.approx(0.5)
    assert by[("c1", "label_2")]["dice"] == 1.0 and by[("c1", "label_2")]["hd95"] == 0.0  # absent from both
    assert by[("c3", "label_2")]["dice"] == 0.0 and by[("c3", "label_2")]["hd95"] is None
    assert by[("c3", "label_2")]["volume_ref_ml"] == pytest.approx(4 * 2.0 / 1000)  # spacing from affine
    assert summary["labels"]["label_1"]["dice"]["mean"] == pytest.approx(2.5 / 3)
    assert summary["labels"]["label_2"]["hd95"]["n_undefined"] == 1
    assert json.loads((tmp_path / "out" / "metrics" / "summary.json").read_text()) == summary


def test_evaluate_folders_with_named_labels_and_nrrd(tmp_path):
    ref = np.zeros((8, 8, 4), np.uint8)
    ref[2:5, 2:5, 1:3] = 1
    _write(tmp_path / "ref", "p01.nrrd", ref)
    _write(tmp_path / "pred", "p01.nii.gz", ref)  # pairing is by case name, not by format
    summary = evaluate_folders(tmp_path / "pred", tmp_path / "ref", {1: "gtv"}, tmp_path / "out")
    assert list(summary["labels"]) == ["gtv"]
    assert summary["mean_dice"] == 1.0


def test_mismatched_shape_names_both_files(tmp_path):
    _write(tmp_path / "ref", "c1.nii.gz", np.zeros((8, 8, 4)))
    _write(tmp_path / "pred", "c1.nii.gz", np.zeros((8, 8, 5)))
    with pytest.raises(InputError) as err:
        evaluate_folders(tmp_path / "pred", tmp_path / "ref", None, tmp_path / "out")
    message = str(err.value)
    assert str(tmp_path / "pred" / "c1.nii.gz") in message and str(tmp_path / "ref" / "c1.nii.gz") in message
    assert "shape" in message


def test_mismatched_affine_names_both_files(tmp_path):
    _write(tmp_path / "ref", "c1.nii.gz", np.zeros((8, 8, 4)))
    _write(tmp_path / "pred", "c1.nii.gz", np.zeros((8, 8, 4)), affine=np.diag([1.0, 1.0, 3.0, 1.0]))
    with pytest.raises(InputError, match="affine") as err:
        evaluate_folders(tmp_path / "pred", tmp_path / "ref", None, tmp_path / "out")
    assert "pred" in str(err.value) and "ref" in str(err.value)


def test_missing_prediction_is_named(tmp_path):
    _write(tmp_path / "ref", "c1.nii.gz", np.zeros((8, 8, 4)))
    _write(tmp_path / "ref", "c2.nii.gz", np.zeros((8, 8, 4)))
    _write(tmp_path / "pred", "c1.nii.gz", np.zeros((8, 8, 4)))
    with pytest.raises(InputError, match="c2.nii.gz"):
        evaluate_folders(tmp_path / "pred", tmp_path / "ref", None, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_non_integer_prediction_is_rejected(tmp_path):
    _write(tmp_path / "ref", "c1.nii.gz", np.zeros((8, 8, 4)))
    tmp = tmp_path / "pred"
    tmp.mkdir()
    write_image(Image(np.full((8, 8, 4), 0.4, np.float32), AFFINE), tmp / "c1.nii.gz")
    with pytest.raises(InputError, match="not a label map"):
        evaluate_folders(tmp, tmp_path / "ref", None, tmp_path / "out")
