"""`delineo evaluate PRED REF` with aggregations and lesions, end to end on NIfTI phantoms with
known answers (empty-on-empty slices included), and the run-folder evaluation's settings."""

from __future__ import annotations

import json

import numpy as np
import pytest

from delineo.cli import main
from delineo.config import EvaluateConfig
from delineo.errors import ConfigError
from delineo.evaluate.aggregate import AGGREGATIONS
from delineo.evaluate.lesions import read_lesion_table
from delineo.evaluate.options import evaluate_options
from delineo.evaluate.scoring import slice_dice
from delineo.evaluate.table import read_cases_csv
from delineo.io.files import write_image
from delineo.io.image import Image

AFFINE = np.array([[1.0, 0, 0, -10], [0, 1.0, 0, 20], [0, 0, 2.0, 5], [0, 0, 0, 1]])


def _folders(tmp_path):
    """Case a, slices along the last axis: 0 empty on both, 1 reference only, 2 prediction only
    (elsewhere in the plane), 3 identical. Case b: a 24-voxel reference lesion, nothing predicted."""
    a_ref = np.zeros((8, 8, 4), np.uint8)
    a_pred = np.zeros_like(a_ref)
    a_ref[1:3, 1:3, 1] = 1
    a_pred[5:7, 5:7, 2] = 1
    a_ref[1:3, 1:3, 3] = a_pred[1:3, 1:3, 3] = 1
    b_ref = np.zeros_like(a_ref)
    b_ref[1:5, 1:7, 0] = 1
    b_pred = np.zeros_like(a_ref)
    for name, ref, pred in (("a", a_ref, a_pred), ("b", b_ref, b_pred)):
        for folder, arr in (("ref", ref), ("pred", pred)):
            (tmp_path / folder).mkdir(exist_ok=True)
            write_image(Image(arr, AFFINE), tmp_path / folder / f"{name}.nii.gz")
    return tmp_path / "pred", tmp_path / "ref"


def test_cli_aggregations_and_lesions_with_known_answers(tmp_path, capsys):
    pred, ref = _folders(tmp_path)
    out = tmp_path / "out"
    assert main(["-q", "evaluate", str(pred), str(ref), "--out", str(out), "--lesions", "connectivity=26",
                 "--hd95", "max_directed"]) == 0
    summary = json.loads((out / "metrics" / "summary.json").read_text())
    agg = summary["aggregations"]
    assert agg["mean_per_case"]["labels"]["label_1"]["dice"] == pytest.approx(0.25)      # (0.5 + 0) / 2
    assert agg["pooled"]["labels"]["label_1"]["dice"] == pytest.approx(8 / (8 + 8 + 24))  # 2*4 / (8 + 32)
    assert agg["per_slice"]["labels"]["label_1"]["dice"] == pytest.approx((0.5 * 4 + 0.75 * 4) / 8)
    assert agg["per_slice"]["labels"]["label_1"]["n_slices"] == 8
    pooled = agg["pooled"]["labels"]["label_1"]
    assert pooled["lesion_recall"] == pytest.approx(1 / 3) and pooled["lesion_precision"] == pytest.approx(1 / 2)
    assert pooled["lesion_fp_per_case"] == pytest.approx(0.5)
    assert pooled["avd_percent"] == pytest.approx(abs(8 - 32) / 32 * 100)
    assert summary["hd95_definition"]["name"] == "max_directed"
    assert summary["lesions"]["labels"]["label_1"]["all"]["n_ref"] == 3
    rows = {r["case"]: r for r in read_cases_csv(out / "metrics" / "cases.csv")}
    assert rows["a"]["lesion_detected"] == 1 and rows["a"]["lesion_fp"] == 1 and rows["b"]["lesion_missed"] == 1
    assert rows["a"]["slice_dice"] == pytest.approx(0.5) and rows["b"]["slice_dice"] == pytest.approx(0.75)
    assert rows["a"]["f2"] == pytest.approx(5 * 4 / (5 * 4 + 4 * 4 + 4))
    assert rows["b"]["hd95"] is None and rows["b"]["lesion_f1"] == 0.0
    table = read_lesion_table(out / "metrics" / "lesions.csv")
    assert len(table) == 5  # 3 reference + 2 predicted lesions
    fp = next(r for r in table if r["status"] == "false_positive")
    # centroid at index (5.5, 5.5, 2) through the affine
    assert (fp["centroid_x_mm"], fp["centroid_y_mm"], fp["centroid_z_mm"]) == pytest.approx((-4.5, 25.5, 9.0))
    assert fp["ml"] == pytest.approx(4 * 2 / 1000)
    html = (out / "report.html").read_text()
    assert "Aggregation: pooled" in html and "Aggregation: per_slice" in html and "max_directed" in html
    assert (out / "plots" / "lesion_detection_by_size.png").is_file()


def test_cli_options_are_validated(tmp_path, capsys):
    pred, ref = _folders(tmp_path)
    assert main(["-q", "evaluate", str(pred), str(ref), "--out", str(tmp_path / "o"), "--aggregate", "median"]) == 2
    assert "median" in capsys.readouterr().err
    assert main(["-q", "evaluate", str(pred), str(ref), "--out", str(tmp_path / "o"), "--lesions", "conectivity=6"]) == 2
    assert "unknown setting 'conectivity'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing written
    assert main(["-q", "evaluate", str(pred), str(ref), "--out", str(tmp_path / "o2"), "--lesions", "off",
                 "--aggregate", "pooled"]) == 0
    assert not (tmp_path / "o2" / "metrics" / "lesions.csv").exists()
    summary = json.loads((tmp_path / "o2" / "metrics" / "summary.json").read_text())
    assert list(summary["aggregations"]) == ["pooled"] and "lesions" not in summary


def test_options_and_registry_agree():
    assert set(AGGREGATIONS.items) == set(EvaluateConfig().aggregate)
    opts = evaluate_options(EvaluateConfig(), "pooled", "min_size=3,size_unit=ml", None)
    assert opts.aggregate == ["pooled"] and opts.lesions.min_size == 3 and opts.lesions.size_unit == "ml"
    with pytest.raises(ConfigError, match="connectivity"):
        evaluate_options(None, None, "connectivity=5", None)


def test_slice_dice_conventions():
    empty = np.zeros((4, 4, 3), bool)
    assert slice_dice(empty, empty) == (1.0, 3)           # every slice empty on both: 1
    one = empty.copy()
    one[0, 0, 1] = True
    assert slice_dice(one, empty) == (pytest.approx(2 / 3), 3)  # one slice one-empty: 0
    assert slice_dice(one[..., 1], empty[..., 1]) == (0.0, 1)  # a 2D image is one slice


def test_cross_validation_summary_joins_fold_lesion_tables(tmp_path):
    """summarise_folds (after `train --fold all`) pools the held-out lesions of every fold."""
    from delineo.config import config_from_dict, save_config
    from delineo.evaluate.run import summarise_folds
    from delineo.evaluate.table import evaluate_folders

    pred, ref = _folders(tmp_path)
    exp = tmp_path / "exp"
    cfg = config_from_dict({"data": {"source": {"path": str(ref)}}})
    for fold in ("fold_0", "fold_1"):  # the same two cases in each fold: every count doubles
        evaluate_folders(pred, ref, {1: "lesion"}, exp / fold, report=False)
        save_config(cfg, exp / fold / "config.yaml")
    summary = summarise_folds(exp)
    assert summary["n_cases"] == 2 and set(summary["folds"]) == {"fold_0", "fold_1"}
    assert len(read_lesion_table(exp / "metrics" / "lesions.csv")) == 10
    pooled = summary["aggregations"]["pooled"]["labels"]["lesion"]
    assert pooled["lesion_n_ref"] == 6 and pooled["lesion_recall"] == pytest.approx(1 / 3)
    assert summary["lesions"]["labels"]["lesion"]["all"]["fp_per_case"] == pytest.approx(0.5)
