"""``delineo plan``: fingerprint a dataset and write a starting experiment file, the way
nnU-Net configures itself: spacing, shape and intensity statistics decide the target spacing,
2D or 3D, the patch size, the network depth and the intensity presets.

The rules are deliberately few and written down (docstrings of each step), so that a user can
read why the plan chose what it chose and override any of it with ``--set``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import yaml
from tqdm import tqdm

from delineo.config import DataConfig, config_from_dict
from delineo.data.sources import load_dataset
from delineo.io.atomic import write_text_atomic

log = logging.getLogger(__name__)

#: voxels in one training patch that fit a 2-core CPU step of about a second (3D) ...
PATCH_VOXELS_3D = 40 * 56 * 40 * 1.2
#: ... and in one 2D batch
BATCH_PIXELS_2D = 32 * 48 * 64
MAX_LEVELS = 5


@dataclass
class Fingerprint:
    """What the plan is decided from."""

    n_cases: int
    channels: list[str]
    labels: dict[int, str]
    spacings: np.ndarray  # (n, 3) mm
    shapes: np.ndarray  # (n, 3) voxels
    intensity: list[dict[str, float]] = field(default_factory=list)  # per channel, inside the labels
    foreground_fraction: float = 0.0
    label_extents: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))  # (n, 3) mm, foreground bounding box

    @property
    def median_spacing(self) -> np.ndarray:
        return np.median(self.spacings, axis=0)

    @property
    def median_shape_mm(self) -> np.ndarray:
        return np.median(self.shapes * self.spacings, axis=0)


def fingerprint(data: DataConfig, max_cases: int = 200, progress: bool = True) -> Fingerprint:
    """Read up to ``max_cases`` cases: spacing, shape, and per-channel intensity percentiles of
    the labelled voxels (nnU-Net's foreground statistics, used for CT windows)."""
    ds = load_dataset(data)
    cases = ds.cases[:max_cases]
    spacings, shapes, fg_values, fg, extents = [], [], [[] for _ in ds.channels], [], []
    rng = np.random.default_rng(0)
    for case in tqdm(cases, desc="fingerprint", unit="case", disable=not progress, leave=False):
        images, label = case.load()
        spacings.append(images[0].spacing)
        shapes.append(images[0].spatial_shape)
        mask = np.asarray(label.array) > 0 if label is not None else None
        if mask is not None:
            fg.append(mask.mean())
            if mask.any():  # the structure's size, for the field of view a budgeted plan needs
                idx = np.nonzero(mask)
                extents.append([(int(i.max()) - int(i.min()) + 1) * float(sp) for i, sp in zip(idx, images[0].spacing)])
        for c, img in enumerate(images):
            values = np.asarray(img.array)[mask] if mask is not None and mask.any() else np.asarray(img.array).ravel()
            if len(values) > 10000:
                values = rng.choice(values, 10000, replace=False)
            fg_values[c].append(values.astype(np.float32))
    stats = []
    for values in fg_values:
        v = np.concatenate(values)
        stats.append({"p00_5": float(np.percentile(v, 0.5)), "p99_5": float(np.percentile(v, 99.5)),
                      "mean": float(v.mean()), "std": float(v.std())})
    return Fingerprint(len(cases), list(ds.channels), dict(ds.labels), np.asarray(spacings), np.asarray(shapes),
                       stats, float(np.mean(fg)) if fg else 0.0, np.asarray(extents).reshape(-1, 3))


def _preset(name: str, stats: dict[str, float]) -> dict[str, Any]:
    """CT: clip to the labelled voxels' 0.5-99.5 percentiles (HU); PET: SUV clip at the 99.5th;
    anything else (MR, unknown): z-score per case, inside the non-zero region."""
    key = name.lower()
    if key in ("ct", "computed tomography") or key.startswith("ct"):
        return {"preset": "ct", "window": [round(stats["p00_5"]), round(stats["p99_5"])]}
    if key in ("pet", "pt", "suv") or "pet" in key:
        return {"preset": "pet", "window": [0.0, round(max(stats["p99_5"], 1.0), 1)]}
    return {"preset": "mr", "foreground_only": False}


def make_plan(fp: Fingerprint, name: str, data: DataConfig) -> dict[str, Any]:
    """The experiment dict for ``fp``.

    * target spacing: the median spacing; 2D when one axis is more than 3x coarser than the
      others (thick slices), slicing along that axis;
    * patch: the median extent at the target spacing, shrunk isotropically (in voxels) to the CPU
      budget, rounded to the network divisor;
    * depth: pool while the smallest patch side stays >= 4 voxels (at most 5 levels);
    * filters from 16 (3D) or 32 (2D), doubling, capped at 256;
    * folds: 5, or one per case when there are fewer (3 cases cannot fill 5 folds, and a plan
      must train as written).
    """
    spacing = fp.median_spacing
    anisotropy = spacing.max() / max(np.sort(spacing)[1], 1e-6)
    mode = "2d" if anisotropy > 3 else "3d"
    axis = int(np.argmax(spacing)) if mode == "2d" else 2
    extent = fp.median_shape_mm / spacing  # voxels at the target spacing
    if mode == "3d":
        shape = extent.copy()
        scale = min(1.0, (PATCH_VOXELS_3D / np.prod(shape)) ** (1 / 3))
        shape = shape * scale
    else:
        shape = np.delete(extent, axis)
        scale = min(1.0, (BATCH_PIXELS_2D / 32 / np.prod(shape)) ** 0.5)
        shape = shape * scale
    levels = 1
    while levels < MAX_LEVELS and shape.min() / 2 ** levels >= 4:
        levels += 1
    divisor = 2 ** (levels - 1)
    patch = [int(max(divisor, int(np.ceil(s / divisor)) * divisor)) for s in shape]
    base = 16 if mode == "3d" else 32
    filters = [min(base * 2 ** i, 256) for i in range(levels)]
    batch = 4 if mode == "3d" else int(max(8, min(64, BATCH_PIXELS_2D // int(np.prod(patch)))))
    needs_resampling = bool(np.any(np.abs(fp.spacings - spacing).max(axis=0) > 0.05 * spacing))
    plan: dict[str, Any] = {
        "name": name,
        "data": {"source": data.source.model_dump(mode="json", exclude_none=True),
                 "folds": int(min(5, max(2, fp.n_cases))), "seed": 0},
        "preprocess": {
            "orientation": "RAS",
            "spacing": [round(float(s), 3) for s in spacing] if needs_resampling else None,
            "crop_foreground": True,
            "intensity": [_preset(ch, st) for ch, st in zip(fp.channels, fp.intensity)],
        },
        "sampling": {"mode": mode, "patch_size": patch, "axis": axis, "batch_size": batch,
                     "foreground_fraction": 0.33},
        "augment": {"affine": {"p": 0.2}, "brightness": {"p": 0.15, "range": [-0.1, 0.1]},
                    "contrast": {"p": 0.15, "range": [0.75, 1.25]}, "gamma": {"p": 0.15, "range": [0.7, 1.5]},
                    "noise": {"p": 0.1, "std": 0.1}},
        "model": {"name": "unet", "filters": filters, "norm": "batch", "act": "leakyrelu"},
        "loss": {"name": "dice_ce"},
        "train": {"optimizer": {"name": "adamw", "lr": 0.003, "weight_decay": 0.0001},
                  "schedule": {"name": "poly"}, "epochs": 1000, "max_minutes": 20, "iterations_per_epoch": 50,
                  "val_every": 2},
    }
    return plan


def plan_dataset(data: DataConfig, out: Path, name: Optional[str] = None, progress: bool = True,
                 budget: Optional[str] = None, device: str = "cpu") -> tuple[Path, dict]:
    """Fingerprint ``data``, write the planned experiment to ``out`` (validated), return both.
    With a ``budget`` (``20m``) the plan is fitted to that time on ``device`` by a timed probe
    and written with a comment on every choice (delineo.data.budget)."""
    fp = fingerprint(data, progress=progress)
    plan = make_plan(fp, name or Path(data.source.path).name.lower().replace(" ", "-"), data)
    header = (
        f"# Planned by `delineo plan` from {fp.n_cases} cases: median spacing "
        f"{np.round(fp.median_spacing, 3).tolist()} mm, median shape {np.median(fp.shapes, 0).astype(int).tolist()}, "
        f"channels {fp.channels}, labels {fp.labels}.\n# Edit freely; every field is documented in README.md.\n"
    )
    if budget is not None:
        from delineo.data.budget import budget_plan, dump_commented, parse_duration

        plan, comments, _ = budget_plan(fp, plan, parse_duration(budget), device, progress=progress)
        config_from_dict(plan, source=str(out))
        write_text_atomic(out, dump_commented(plan, comments, header.rstrip() + f"\n# Budget {budget} on {device}."))
        return Path(out), plan
    config_from_dict(plan, source=str(out))  # the plan must be a valid experiment
    write_text_atomic(out, header + yaml.safe_dump(plan, sort_keys=False))
    return Path(out), plan
