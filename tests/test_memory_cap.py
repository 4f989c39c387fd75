"""Memory-capped prediction: the slab-by-slab path gives the unbounded path's labels (up to ties),
on a phantom and on the embedded CT, and its peak memory stays under the cap."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from delineo.config import config_from_dict
from delineo.infer.memory import parse_size
from delineo.infer.predictor import Predictor
from delineo.infer.sliding import capped_plan, sliding_window, sliding_window_labels
from delineo.io import read_image
from delineo.models.unet import UNet
from delineo.modelfile.checkpoint import ModelMeta
from delineo.preprocess.pipeline import preprocess

from .conftest import phantom_case

ROOT = Path(__file__).resolve().parents[1]


def _disagreements_are_ties(probs: torch.Tensor, a: torch.Tensor, b: torch.Tensor, tol: float) -> tuple[int, int]:
    """(voxels that differ, of which not near-tied): near-tied = top two probabilities within tol."""
    diff = a != b
    top2 = probs.topk(2, dim=0).values
    tied = (top2[0] - top2[1]) <= tol
    return int(diff.sum()), int((diff & ~tied).sum())


def _net(k: int, seed: int = 0, filters: tuple[int, ...] = (4, 8, 16)) -> torch.nn.Module:
    torch.manual_seed(seed)
    return UNet(1, k, dims=3, filters=filters, norm="instance").eval()


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # many small windows: threads only contend on a shared machine
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("shape", [(40, 22, 18), (18, 22, 40)])
def test_slab_labels_match_unbounded_on_a_phantom(shape):
    image, _ = phantom_case(np.random.default_rng(1), shape)
    x = torch.from_numpy((image - image.mean()) / image.std())[None]
    net = _net(4, filters=(4, 8))

    @torch.no_grad()
    def fn(b: torch.Tensor) -> torch.Tensor:
        return torch.softmax(net(b), dim=1)

    probs = sliding_window(fn, x, (16, 16, 16), 0.5, 4, 2)
    full = probs.argmax(0).to(torch.uint8)
    capped = sliding_window_labels(fn, x, (16, 16, 16), lambda p: p.argmax(0), 0.5, 4, 2)
    assert capped.shape == full.shape == shape
    assert len(torch.unique(full)) >= 2  # the comparison is between real label maps
    n, hard = _disagreements_are_ties(probs, full, capped, 1e-5)
    assert hard == 0, f"{n} voxels differ, {hard} of them not ties"
    # a cap that forces float16 accumulators and one-window batches: only near-ties may move
    dtype, batch, _ = capped_plan(4, 1, shape, (16, 16, 16), 4, 1, int(np.argmax(shape)))
    assert (dtype, batch) == (torch.float16, 1)
    tight = sliding_window_labels(fn, x, (16, 16, 16), lambda p: p.argmax(0), 0.5, 4, 2, max_bytes=1, n_out=4)
    n, hard = _disagreements_are_ties(probs, full, tight, 5e-3)
    assert hard == 0 and n < full.numel() * 1e-3


def _ct_predictor(max_memory: str | None) -> tuple[Predictor, list]:
    data = ROOT / "delineo" / "sample_data" / "ct_liver"
    cfg = config_from_dict({
        "name": "ct", "data": {"source": {"type": "msd", "path": str(data)}, "folds": 3},
        "preprocess": {"crop_foreground": False, "intensity": [{"preset": "ct", "window": [-250, 250]}]},
        "sampling": {"mode": "3d", "patch_size": [64, 64, 32]},
        "model": {"name": "unet", "filters": [8, 16, 32], "norm": "instance"},
        "infer": {"max_memory": max_memory, "overlap": 0.5, "batch_size": 2},
    })
    meta = ModelMeta(1, 3, 3, "3d", [64, 64, 32], 2, 0, {1: "liver", 2: "other"}, ["CT"], 4)
    return Predictor(_net(3, seed=3), cfg, meta, "cpu"), [read_image(data / "imagesTr" / "liver_001_0000.nii.gz")]


def test_capped_predictor_matches_unbounded_on_the_embedded_ct():
    free, images = _ct_predictor(None)
    capped, _ = _ct_predictor("64MB")
    mask, probs = free.predict_images(images)
    mask_c, probs_c = capped.predict_images(images)
    assert probs_c is None and mask_c.array.shape == mask.array.shape == images[0].array.shape
    assert np.allclose(mask_c.affine, images[0].affine)
    assert len(np.unique(mask.array)) == 3
    p = torch.from_numpy(probs.array)
    n, hard = _disagreements_are_ties(p, torch.from_numpy(mask.array), torch.from_numpy(mask_c.array), 1e-5)
    assert hard == 0, f"{n} voxels differ, {hard} of them not ties"


_PEAK = r"""
import json, sys, torch
from delineo.infer.memory import peak_rss_bytes, reset_peak_rss, rss_bytes
from delineo.infer.sliding import sliding_window, sliding_window_labels
torch.set_num_threads(1)
torch.manual_seed(0)
net = torch.nn.Conv3d(1, 14, 1).eval()
fn = torch.no_grad()(lambda b: torch.softmax(net(b), 1))
x = torch.randn(1, 32, 64, 480)
fn(torch.randn(4, 1, 32, 32, 32))  # first-call set-up of the kernels is not what is measured
reset_peak_rss()
base = rss_bytes()
if sys.argv[1] == "capped":
    out = sliding_window_labels(fn, x, (32, 32, 32), lambda p: p.argmax(0), 0.5, 4, 1,
                                max_bytes=int(sys.argv[2]), n_out=14)
else:
    out = sliding_window(fn, x, (32, 32, 32), 0.5, 4, 1).argmax(0)
print(json.dumps({"base": base, "peak": peak_rss_bytes(), "sum": int(out.sum())}))
"""


def _peak(*args: str) -> dict:
    r = subprocess.run([sys.executable, "-c", _PEAK, *args], capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_peak_memory_stays_under_the_cap():
    cap = parse_size("80MB")
    free, capped = _peak("free"), _peak("capped", str(cap))
    assert free["sum"] == capped["sum"]  # same labels (a 1x1 convolution has no ties to speak of)
    grow_free, grow_capped = free["peak"] - free["base"], capped["peak"] - capped["base"]
    volume = 32 * 64 * 480 * 4
    assert grow_free > 14 * volume  # 14 float32 probability maps plus the weights
    assert grow_capped < 0.5 * grow_free and grow_capped < cap


def test_parse_size():
    assert parse_size("2GB") == 2 * 1024**3 and parse_size("512 MiB") == 512 * 1024**2 and parse_size(1000) == 1000
    with pytest.raises(ValueError):
        parse_size("lots")
