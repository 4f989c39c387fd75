"""Shared fixtures: paths to the real data, and small synthetic phantoms with known answers."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from types import ModuleType
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.track_pg import pg_server  # noqa: F401  one PostgreSQL server per test session (experiment database)

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SAMPLE = ROOT / "delineo" / "sample_data" / "hippocampus"

os.environ.setdefault("OMP_NUM_THREADS", "2")
# Tests never write into a user's experiment database; the tests of delineo.track set their own.
os.environ["DELINEO_DB"] = "off"


def load_benchmark(name: str) -> ModuleType:
    """Import ``benchmarks/NAME.py`` (a folder of scripts, not a package), registered under its name
    (dataclasses look their module up in ``sys.modules``; a sibling import finds it there too)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def needs_shared() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared/data is not present next to the repository")
    return SHARED


def phantom_case(rng: np.random.Generator, shape=(24, 28, 20)) -> tuple[np.ndarray, np.ndarray]:
    """An image with two touching ellipsoids (labels 1 and 2) brighter than a noisy background."""
    zz = np.indices(shape).astype(np.float32)
    centre = np.array(shape) / 2 + rng.uniform(-2, 2, 3)
    radii = np.array([6, 8, 5]) * rng.uniform(0.8, 1.2)
    d = sum(((zz[i] - centre[i]) / radii[i]) ** 2 for i in range(3))
    label = np.zeros(shape, np.uint8)
    label[d <= 1] = 1
    label[(d <= 1) & (zz[1] > centre[1])] = 2
    image = rng.normal(0, 0.3, shape).astype(np.float32) + 10
    image[label == 1] += 2.0
    image[label == 2] += 4.0
    return image, label


def write_msd(root: Path, n: int = 10, seed: int = 0, affine: np.ndarray | None = None) -> Path:
    rng = np.random.default_rng(seed)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    affine = np.diag([1.0, 1.0, 1.5, 1.0]) if affine is None else affine
    for i in range(n):
        image, label = phantom_case(rng)
        nib.save(nib.Nifti1Image(image, affine), root / "imagesTr" / f"ph_{i:03d}_0000.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), root / "labelsTr" / f"ph_{i:03d}.nii.gz")
    meta = {"name": "phantom", "modality": {"0": "MR"}, "labels": {"0": "background", "1": "one", "2": "two"}}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


@pytest.fixture
def phantom_msd(tmp_path: Path) -> Path:
    return write_msd(tmp_path / "phantom")


def phantom_experiment(data: Path, **train) -> dict:
    """A tiny 2D experiment on the phantom data that trains in seconds."""
    cfg = {
        "name": "phantom",
        "data": {"source": {"type": "msd", "path": str(data)}, "folds": 5, "seed": 0},
        "preprocess": {"crop_foreground": False},
        "sampling": {"mode": "2d", "patch_size": [24, 28], "batch_size": 8, "axis": 2},
        "augment": {"flip": {"p": 0.5}},
        "model": {"name": "unet", "filters": [8, 16], "norm": "batch"},
        "train": {"epochs": 3, "iterations_per_epoch": 4, "val_every": 1, "num_threads": 1,
                  "optimizer": {"name": "adam", "lr": 0.01}},
    }
    cfg["train"].update(train)
    return cfg
