"""Tests of the evaluation plots and the self-contained HTML run report."""

from __future__ import annotations

import base64
import re

import numpy as np
import pytest

from delineo.errors import InputError
from delineo.evaluate.metrics import score_case
from delineo.evaluate.plots import plot_dice_box, plot_learning_curves, plot_overlay
from delineo.evaluate.report import write_report
from delineo.evaluate.table import rows_from_scores, summarise

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LABELS = {1: "liver", 2: "tumour"}


def _case(shift: int):
    """A small image with two labels; the prediction of label 1 is shifted by ``shift`` voxels."""
    rng = np.random.default_rng(shift)
    image = rng.normal(size=(24, 24, 8)).astype(np.float32)
    ref = np.zeros((24, 24, 8), np.uint8)
    ref[4:14, 4:14, 2:6] = 1
    ref[16:20, 16:20, 3:5] = 2
    pred = np.zeros_like(ref)
    pred[4 + shift : 14 + shift, 4:14, 2:6] = 1
    pred[16:20, 16:20, 3:5] = 2
    return image, ref, pred


def _write_log(path):
    path.write_text(
        "epoch,train_loss,val_loss,val_dice,lr,seconds\n"
        "1,0.9,,,0.01,3.1\n"
        "2,0.7,0.8,0.40,0.01,3.0\n"
        "3,0.5,,,0.005,3.2\n"
        "4,0.4,0.5,0.70,0.0025,2.9\n"
    )


def test_plot_learning_curves_with_sparse_validation(tmp_path):
    _write_log(tmp_path / "log.csv")
    out = plot_learning_curves(tmp_path / "log.csv", tmp_path / "plots" / "curves.png")
    assert out.read_bytes()[:8] == PNG_MAGIC


def test_plot_learning_curves_empty_log_is_input_error(tmp_path):
    (tmp_path / "log.csv").write_text("epoch,train_loss\n")
    with pytest.raises(InputError, match="log.csv"):
        plot_learning_curves(tmp_path / "log.csv", tmp_path / "c.png")


def test_plot_dice_box_and_overlay(tmp_path):
    rows = [
        {"case": "a", "label": "liver", "dice": 0.9},
        {"case": "b", "label": "liver", "dice": 0.7},
        {"case": "a", "label": "tumour", "dice": None},
    ]
    assert plot_dice_box(rows, tmp_path / "box.png").read_bytes()[:8] == PNG_MAGIC
    image, ref, pred = _case(2)
    out = plot_overlay(image, ref, pred, tmp_path / "ov.png", "case a", labels=LABELS, spacing=(1, 1, 2))
    assert out.read_bytes()[:8] == PNG_MAGIC
    # empty masks: falls back to the middle slice without contour warnings
    empty = np.zeros_like(ref)
    assert plot_overlay(image, empty, empty, tmp_path / "ov0.png", "empty").exists()


def test_write_report_contains_cases_and_embedded_images(tmp_path):
    cases = {"case_best": _case(0), "case_mid": _case(2), "case_worst": _case(5), "case_<x>&": _case(1)}
    rows = []
    for name, (_, ref, pred) in cases.items():
        rows += rows_from_scores(name, score_case(pred, ref, (1, 1, 2), LABELS))
    summary = summarise(rows)
    _write_log(tmp_path / "log.csv")
    loaded = []

    def load(case):
        loaded.append(case)
        return cases[case]

    out = write_report(tmp_path, rows, summary, load, title="Run <1> & co", labels=LABELS)
    assert out == tmp_path / "report.html"
    text = out.read_text()
    for case in ("case_best", "case_mid", "case_worst"):
        assert case in text
    assert "case_&lt;x&gt;&amp;" in text and "case_<x>&" not in text  # escaped
    assert "Run &lt;1&gt; &amp; co" in text and "<1>" not in text
    assert sorted(loaded) == ["case_best", "case_mid", "case_worst"]  # only the examples are loaded
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(images) == 7  # learning curves, box plot, 2 volume plots, best, median and worst overlays
    assert all(base64.b64decode(data)[:8] == PNG_MAGIC for data in images)
    for name in ("learning_curves", "dice_box", "overlay_best", "overlay_median", "overlay_worst",
                 "volume_scatter", "volume_bland_altman"):
        assert (tmp_path / "plots" / f"{name}.png").read_bytes()[:8] == PNG_MAGIC
    assert "liver" in text and "hd95" in text and "n_undefined" in text


def test_write_report_without_log_and_missing_images(tmp_path):
    image, ref, pred = _case(1)
    rows = rows_from_scores("only", score_case(pred, ref, (1, 1, 1), LABELS))
    out = write_report(tmp_path, rows, summarise(rows), {}, title="no images")
    text = out.read_text()
    assert "only" in text and "Learning curves" not in text
    assert len(re.findall(r"data:image/png;base64,", text)) == 3  # the box plot and the two volume plots
