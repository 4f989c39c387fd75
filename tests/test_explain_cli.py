"""`delineo explain` end to end: every method on trained 2D, 2.5D and 3D models, maps written in
the exact geometry of the input scan, PNG panels, and the sanity check from the command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from delineo.config import config_from_dict
from delineo.explain.run import explain_scan
from delineo.io import read_image
from delineo.train.loop import train

from .conftest import phantom_case, phantom_experiment, write_msd

METHODS = ["activation", "saliency", "deconvnet", "guided-backprop", "gradcam", "gradcam++", "occlusion",
           "integrated-gradients", "smoothgrad", "channel-contribution", "activation-maximisation"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("explain")
    data = write_msd(root / "data", n=6)
    out = {}
    for mode, extra in (("2d", {}), ("2.5d", {"context": 1}), ("3d", {})):
        exp = phantom_experiment(data, epochs=2, iterations_per_epoch=6)
        exp["name"] = f"ph-{mode}"
        exp["model"]["act"] = "leakyrelu"
        exp["sampling"] = {"mode": mode, "batch_size": 4, **extra,
                           "patch_size": [16, 16, 16] if mode == "3d" else [24, 28]}
        out[mode] = train(config_from_dict(exp), root / "runs", fold=0, progress=False)
    image, label = phantom_case(np.random.default_rng(42))
    affine = np.array([[0, -1.0, 0, 3], [1.0, 0, 0, -2], [0, 0, 1.5, 7], [0, 0, 0, 1]])  # not RAS
    nib.save(nib.Nifti1Image(image, affine), root / "scan.nii.gz")
    nib.save(nib.Nifti1Image(label, affine), root / "ref.nii.gz")
    return out, root / "scan.nii.gz", root / "ref.nii.gz"


@pytest.mark.parametrize("mode", ["2d", "2.5d", "3d"])
@pytest.mark.parametrize("method", METHODS)
def test_every_method_writes_maps_in_input_geometry(models, tmp_path, mode, method):
    runs, scan, ref = models
    layer = "encoders.1" if method in ("activation", "gradcam", "gradcam++", "activation-maximisation") else None
    params = {"steps": 4} if method in ("integrated-gradients", "activation-maximisation") else {}
    if method == "smoothgrad":
        params = {"samples": 3}
    if method == "occlusion":
        params = {"patch": 8}
    report = explain_scan(runs[mode], scan, tmp_path, method, "class" if method != "activation" else "positive-prediction",
                          layer=layer, label=1, reference=ref, params=params)
    mp = read_image(report["map"], allow_4d=True)
    assert Path(report["panels"]).stat().st_size > 1000
    if method == "activation-maximisation":  # a synthetic input pattern, not a map of the scan
        assert np.isfinite(mp.array).all() and mp.array.std() > 0
        return
    src = read_image(scan)
    np.testing.assert_allclose(mp.affine, src.affine, atol=1e-5)
    assert mp.array.shape[-3:] == src.array.shape
    assert np.isfinite(mp.array).all()
    assert np.abs(mp.array).max() > 0


def test_cli_explain_and_sanity(models, tmp_path):
    runs, scan, _ = models
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "delineo.cli", "explain", str(runs["2d"]), str(scan), "--method",
                          "saliency", "--target", "class", "--label", "1", "--sanity", "--out", str(tmp_path), "-q"],
                         capture_output=True, text=True, env=env, timeout=300)
    # saliency of a trained model depends on its weights: the check passes (exit 0), judged at the
    # sanity cut-off 0.9 and not at the prediction threshold 0.5 (they were once mixed up)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "map:" in res.stdout and "passed" in res.stdout and "FAILED" not in res.stdout, res.stdout
    assert "threshold 0.9" in res.stdout and "threshold 0.5" not in res.stdout, res.stdout
    assert any(l.startswith("layer") and "spearman" in l for l in res.stdout.splitlines()), res.stdout
    layers = subprocess.run([sys.executable, "-m", "delineo.cli", "explain", str(runs["2d"]), "--list-layers"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert "encoders.0" in layers.stdout
