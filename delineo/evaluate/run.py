"""Evaluate a training run folder: score the kept validation predictions against the
references of the experiment's dataset, and write ``metrics/cases.csv``,
``metrics/summary.json``, the plots and ``report.html``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from delineo.config import load_config
from delineo.data.sources import load_dataset, output_channels, reference_for, segmenter_labels
from delineo.errors import InputError
from delineo.evaluate.lesions import write_lesion_table
from delineo.evaluate.report import write_report
from delineo.evaluate.scoring import score_case_full
from delineo.evaluate.table import LESIONS_CSV, summarise, summarise_full, write_cases_csv, write_summary_json
from delineo.io.files import read_image

log = logging.getLogger(__name__)


def evaluate_run(run_dir: str | Path, predictions: str = "best", progress: bool = True,
                 options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Score ``run_dir/predictions/<predictions>`` and write metrics, plots and report.

    Settings come from the experiment's ``evaluate:`` section; ``options`` (``aggregate``,
    ``lesions``, ``hd95`` as on the command line, see :mod:`delineo.evaluate.options`) override it."""
    run_dir = Path(run_dir)
    cfg_path, cases_path = run_dir / "config.yaml", run_dir / "cases.json"
    if not cfg_path.is_file() or not cases_path.is_file():
        raise InputError(f"{run_dir}: not a Delineo run folder (config.yaml and cases.json are required).")
    cfg = load_config(cfg_path)
    if cfg.train.task == "classification":
        from delineo.train.classify import evaluate_classifier_run

        return evaluate_classifier_run(run_dir, predictions)
    val_ids = json.loads(cases_path.read_text())["val"]
    pred_dir = run_dir / "predictions" / predictions
    if not val_ids:
        raise InputError(f"{run_dir}: this run has no validation cases to evaluate.")
    if not pred_dir.is_dir():
        raise InputError(f"{pred_dir}: no predictions; train with validation first.")
    dataset = load_dataset(cfg.data)
    by_id = {c.case_id: c for c in dataset.cases}
    labels = segmenter_labels(dataset.labels, output_channels(cfg.model, dataset.labels))
    rows: list[dict[str, Any]] = []
    lesion_rows: list[dict[str, Any]] = []
    from delineo.evaluate.options import evaluate_options

    options = evaluate_options(cfg.evaluate, **(options or {}))
    axis = cfg.sampling.axis if options.slice_axis is None else options.slice_axis
    for cid in tqdm(val_ids, desc="evaluate", unit="case", leave=False, disable=not progress):
        pred_path = pred_dir / f"{cid}.nii.gz"
        if not pred_path.is_file():
            raise InputError(f"{pred_path}: prediction missing for validation case {cid}.")
        images, ref = by_id[cid].load()
        pred = read_image(pred_path)
        ref_array = reference_for(ref.array, dataset.labels, labels)
        case_rows, case_lesions = score_case_full(np.asarray(pred.array), ref_array, ref.spacing, labels, options,
                                                  ref.affine, cid, axis)
        rows += case_rows
        lesion_rows += case_lesions
    summary = summarise_full(rows, lesion_rows, options)
    write_cases_csv(rows, run_dir / "metrics" / "cases.csv")
    if options.lesions.enabled:
        write_lesion_table(lesion_rows, run_dir / LESIONS_CSV)
    write_summary_json(summary, run_dir / "metrics" / "summary.json")

    def loader(cid: str):
        images, ref = by_id[cid].load()
        return (np.asarray(images[0].array), reference_for(ref.array, dataset.labels, labels),
                np.asarray(read_image(pred_dir / f"{cid}.nii.gz").array))

    write_report(run_dir, rows, summary, loader, f"{cfg.name} - {run_dir.name}", labels,
                 lesion_rows=lesion_rows if options.lesions.enabled else None)
    log.info("%s: mean Dice %.4f over %d cases", run_dir, summary.get("mean_dice") or float("nan"), len(val_ids))
    return summary


def summarise_folds(exp_dir: str | Path) -> dict[str, Any]:
    """Cross-validation summary: the per-case rows of every ``fold_*/metrics/cases.csv`` of an
    experiment (each case scored once, by the fold that held it out) into
    ``<exp>/metrics/cases.csv`` and ``<exp>/metrics/summary.json`` (with per-fold mean Dice),
    and, when the folds wrote them, the joined ``metrics/lesions.csv`` with the aggregations and
    lesion metrics of the experiment's ``evaluate:`` section over all held-out cases."""
    from delineo.evaluate.lesions import read_lesion_table
    from delineo.evaluate.table import read_cases_csv

    exp_dir = Path(exp_dir)
    rows: list[dict[str, Any]] = []
    per_fold: dict[str, Any] = {}
    lesion_rows: list[dict[str, Any]] = []
    options = None
    for fold_dir in sorted(exp_dir.glob("fold_*")):
        path = fold_dir / "metrics" / "cases.csv"
        if not path.is_file():
            continue
        if options is None and (fold_dir / "config.yaml").is_file():
            options = load_config(fold_dir / "config.yaml").evaluate
        if (fold_dir / LESIONS_CSV).is_file():
            lesion_rows += read_lesion_table(fold_dir / LESIONS_CSV)
        fold_rows = read_cases_csv(path)
        rows += [{**r, "fold": fold_dir.name} for r in fold_rows]
        per_fold[fold_dir.name] = summarise(fold_rows).get("mean_dice")
    if not rows:
        raise InputError(f"{exp_dir}: no evaluated folds (fold_*/metrics/cases.csv) to summarise.")
    extended = options is not None and "slice_dice" in rows[0]  # folds evaluated with this version
    summary = summarise_full(rows, lesion_rows, options) if extended else summarise(rows)
    summary["folds"] = per_fold
    if extended and options.lesions.enabled:
        write_lesion_table(lesion_rows, exp_dir / LESIONS_CSV)
    write_cases_csv(rows, exp_dir / "metrics" / "cases.csv")
    write_summary_json(summary, exp_dir / "metrics" / "summary.json")
    return summary
