"""Slice-entropy profiles of a dataset's volumes (``delineo inspect``): entropy against slice
index with the threshold and the foreground slices, one PNG per case, and ``entropy.csv`` with
one row per slice. Read-only on the dataset; the profile is the one the training-slice filter
(:mod:`delineo.sampling.slice_filter`) computes, here on the unpreprocessed images."""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from tqdm import tqdm

from delineo.config import DataConfig
from delineo.data.sources import load_dataset
from delineo.errors import InputError
from delineo.evaluate.plots import plot_entropy_profile
from delineo.io.atomic import write_text_atomic
from delineo.sampling.slice_filter import entropy_profile, foreground_profile

log = logging.getLogger(__name__)


def inspect_dataset(dataset: Path, out: Path, kind: Optional[str] = None, case_ids: Sequence[str] = (),
                    max_cases: int = 5, axis: int = 2, threshold: float = 2.0, bins: int = 256, channel: int = 0,
                    progress: bool = True) -> list[dict[str, Any]]:
    """Profile the chosen cases (``case_ids``, else the first ``max_cases``); return one summary per case."""
    dataset, out = Path(dataset), Path(out)
    if kind is None:
        suffix = dataset.suffix.lower()
        kind = "csv" if suffix == ".csv" else "hdf5" if suffix in (".h5", ".hdf5") else "msd"
    data = load_dataset(DataConfig(source={"type": kind, "path": str(dataset.resolve())}))
    by_id = {c.case_id: c for c in data.cases}
    unknown = [c for c in case_ids if c not in by_id]
    if unknown:
        raise InputError(f"{dataset}: no case {unknown[0]!r}; cases are e.g. {', '.join(list(by_id)[:3])}.")
    chosen = [by_id[c] for c in case_ids] if case_ids else data.cases[:max_cases]
    results, table = [], []
    for case in tqdm(chosen, desc="inspect", unit="case", disable=not progress, leave=False):
        images, label = case.load()
        if channel >= len(images):
            raise InputError(f"{case.images[0] if case.images else case.case_id}: case {case.case_id} has "
                             f"{len(images)} channel(s), not {channel + 1}.")
        volume = np.asarray(images[channel].array)
        if axis >= volume.ndim:
            raise InputError(f"{case.case_id}: a {volume.ndim}D image has no axis {axis}.")
        entropy = entropy_profile(volume, axis, bins)
        fg = (foreground_profile(np.asarray(label.array), axis) if label is not None
              else np.zeros(entropy.size, bool))
        plot = plot_entropy_profile(entropy, threshold, fg, out / f"entropy_{case.case_id}.png", case.case_id)
        kept = entropy > threshold
        results.append({"case": case.case_id, "slices": int(entropy.size), "kept": int(kept.sum()),
                        "foreground": int(fg.sum()), "foreground_dropped": int((fg & ~kept).sum()), "plot": plot})
        table += [(case.case_id, k, float(e), bool(f), bool(kk)) for k, (e, f, kk) in enumerate(zip(entropy, fg, kept))]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["case", "slice", "entropy_bits", "foreground", "above_threshold"])
    writer.writerows(table)
    write_text_atomic(out / "entropy.csv", buffer.getvalue())
    return results
