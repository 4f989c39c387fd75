"""``delineo evaluate MODEL.delineo DATASET``: score a pipeline file like a run, on the cases of a
dataset (all of them, or those named by ``--cases``: ids, a ``splits.json`` whose ``test`` list
is used, or a run's ``cases.json`` whose ``val`` list is used). Writes the predictions,
``metrics/cases.csv``, ``metrics/lesions.csv`` (lesions on by default, as for a run) and
``metrics/summary.json`` (named aggregations, lesion metrics, seconds per case) under ``out``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
from tqdm import tqdm

from delineo.config import DataConfig
from delineo.data.sources import load_dataset, reference_for
from delineo.errors import InputError
from delineo.evaluate.lesions import write_lesion_table
from delineo.evaluate.options import evaluate_options
from delineo.evaluate.scoring import score_case_full
from delineo.evaluate.table import LESIONS_CSV, summarise_full, write_cases_csv, write_summary_json
from delineo.io.files import write_image

log = logging.getLogger(__name__)


def case_ids(spec: Optional[str]) -> Optional[list[str]]:
    """``--cases``: None (all), a JSON file (splits.json -> test, cases.json -> val, or a list) or
    comma-separated ids."""
    if not spec:
        return None
    path = Path(spec)
    if path.suffix.lower() == ".json":
        if not path.is_file():
            raise InputError(f"{path}: case list not found.")
        data = json.loads(path.read_text())
        if isinstance(data, list):
            return [str(c) for c in data]
        for key in ("test", "val"):
            if isinstance(data, dict) and data.get(key):
                return [str(c) for c in data[key]]
        raise InputError(f"{path}: no 'test' or 'val' case list inside.")
    return [c.strip() for c in spec.split(",") if c.strip()]


def evaluate_pipeline(model: str | Path, dataset: str | Path, out: str | Path, cases: Optional[str] = None,
                      device: str = "auto", progress: bool = True,
                      options: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Predict and score the chosen cases of ``dataset`` (an MSD folder) with a ``.delineo`` file.

    ``options`` (``aggregate``, ``lesions``, ``hd95`` as on the command line) change the default
    evaluation settings, as for a run."""
    from delineo.infer.pipeline.runner import Pipeline

    out = Path(out)
    pipe = Pipeline.load(model, device)
    ds = load_dataset(DataConfig(source={"type": "msd", "path": str(Path(dataset).resolve())}))
    by_id = {c.case_id: c for c in ds.cases}
    ids = case_ids(cases) or sorted(by_id)
    unknown = [c for c in ids if c not in by_id]
    if unknown:
        raise InputError(f"{dataset}: case(s) {', '.join(unknown[:5])} not in this dataset.")
    settings = evaluate_options(None, **(options or {}))
    axis = 2 if settings.slice_axis is None else settings.slice_axis
    rows: list[dict[str, Any]] = []
    lesion_rows: list[dict[str, Any]] = []
    seconds = []
    for cid in tqdm(ids, desc="evaluate", unit="case", disable=not progress):
        images, label = by_id[cid].load()
        if label is None:
            raise InputError(f"{dataset}: case {cid} has no reference label.")
        t0 = time.perf_counter()
        mask, _, _ = pipe.predict_images(images)
        seconds.append(time.perf_counter() - t0)
        write_image(mask, out / "predictions" / f"{cid}.nii.gz")
        ref = reference_for(np.asarray(label.array), ds.labels, pipe.labels)
        case_rows, case_lesions = score_case_full(np.asarray(mask.array), ref, label.spacing, pipe.labels, settings,
                                                  label.affine, cid, axis)
        rows += case_rows
        lesion_rows += case_lesions
    summary = summarise_full(rows, lesion_rows, settings)
    summary["seconds_per_case"] = float(np.mean(seconds))
    write_cases_csv(rows, out / "metrics" / "cases.csv")
    if settings.lesions.enabled:
        write_lesion_table(lesion_rows, out / LESIONS_CSV)
    write_summary_json(summary, out / "metrics" / "summary.json")
    return summary
