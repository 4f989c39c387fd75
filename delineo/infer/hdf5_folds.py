"""Test-fold prediction written back into the deoxys HDF5 fold layout.

The head-and-neck PET/CT pipeline (Moe et al. 2019, the deoxys framework) keeps its data as
groups ``fold_0..fold_n`` of 2D slices (``x`` (N, H, W, C), ``y`` (N, H, W, 1), ``patient_idx``)
and writes its predictions as another file of the same shape, so that the analysis scripts read
image, reference and prediction slice by slice side by side. :func:`predict_hdf5_fold` does that
for one fold: the output holds group ``fold_k`` with ``x``, ``y`` and ``patient_idx`` copied,
and ``predicted`` (N, H, W, 1) float32, the foreground probability of each pixel, slice for
slice in the input's order. Prediction goes through :class:`~delineo.infer.predictor.Predictor`
patient by patient (the same volumes training validated on); the file is written atomically.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from delineo.config import DataConfig, DataSource
from delineo.errors import InputError
from delineo.io.atomic import atomic_path

log = logging.getLogger(__name__)


def predict_hdf5_fold(predictor, source: str | Path, fold: int, out: str | Path) -> Path:
    """Predict every slice of ``fold_<fold>`` of ``source`` and write the fold with ``predicted``."""
    import h5py

    from delineo.data.sources import load_dataset

    source, out = Path(source), Path(out)
    ds = load_dataset(DataConfig(source=DataSource(type="hdf5", path=str(source)), folds=2))
    cases = [c for c in ds.cases if c.fold == fold]
    if not cases:
        raise InputError(f"{source}: no group fold_{fold}.")
    slices = []
    for case in cases:
        images, _ = case.load()
        _, probs = predictor.predict_images(images)
        p = np.asarray(probs.array, dtype=np.float32)  # (K, H, W, N): slices stacked last
        foreground = p[0] if p.shape[0] == 1 else 1.0 - p[0]
        slices.append(np.moveaxis(foreground, -1, 0)[..., None])
    predicted = np.concatenate(slices, axis=0)
    with h5py.File(source, "r") as src:
        group = src[f"fold_{fold}"]
        if predicted.shape[:3] != group["x"].shape[:3]:
            raise InputError(f"{source}: fold_{fold} has {group['x'].shape[0]} slices, predicted {predicted.shape[0]}.")
        with atomic_path(out, suffix=".h5") as tmp:
            with h5py.File(tmp, "w") as dst:
                g = dst.create_group(f"fold_{fold}")
                for name in ("x", "y", "patient_idx"):
                    if name in group:
                        g.create_dataset(name, data=group[name][()], compression="gzip")
                g.create_dataset("predicted", data=predicted, compression="gzip")
                dst.attrs["source"] = str(source)
                dst.attrs["model"] = str(predictor.cfg.name)
    log.info("%s: %d slices of fold_%d predicted", out, predicted.shape[0], fold)
    return out
