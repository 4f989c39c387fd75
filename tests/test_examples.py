"""The published set-ups in examples/: each file validates, its default data (an embedded sample)
loads, and each trains (shrunk with --set) on that data with a falling training loss: liver on the
embedded CTs, head-and-neck on the deoxys-layout HDF5 stand-in, the others on the hippocampus
sample. Also: classifier training, positive-only sampling and ``delineo lr-find``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from delineo.cli import main
from delineo.config import DataConfig, load_config
from delineo.data.cache import CachedCase
from delineo.data.sources import load_dataset
from delineo.errors import ConfigError
from delineo.sampling.patches import PatchSampler
from delineo.train.classify import class_targets, classification_metrics
from delineo.train.loop import train

from delineo.io.files import read_image

from .conftest import SAMPLE

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
FILES = ["headneck_petct", "wmh", "pneumothorax_unet", "pneumothorax_classifier", "brain_tumour", "liver"]

#: every run: 8 sample cases in 4 folds (6 train, 2 validation), 4 epochs of 5 small batches,
#: validation only after the last epoch, one thread, CPU
QUICK = ["data.max_cases=8", "data.folds=4", "train.epochs=4", "train.iterations_per_epoch=5",
         "train.val_every=100", "train.num_threads=1", "train.device=cpu", "sampling.patch_size=[32,32]",
         "sampling.batch_size=4", "train.early_stopping_patience=null", "infer.batch_size=64"]

SHRINK = {
    "headneck_petct": ["model.filters=[8,16,32]", "train.optimizer.lr=0.003"],
    "wmh": ["model.filters=[8,16,32]", "train.optimizer.lr=0.003"],
    "pneumothorax_unet": ["model.backbone=resnet18", "model.decoder_channels=[32,16,16,8,8]",
                          "train.optimizer.lr=0.003"],
    "pneumothorax_classifier": ["model.backbone=resnet18", "train.optimizer.lr=0.003", "sampling.batch_size=8"],
    "brain_tumour": ["model.filters=[8,16,32]", "train.optimizer.lr=0.01"],
    "liver": ["model.backbone=resnet18", "model.channels=32", "train.optimizer.lr=0.01", "data.folds=3",
              "sampling.patch_size=[64,64]"],
}


@pytest.mark.parametrize("name", FILES + ["hippocampus"])
def test_example_loads_and_validates(name: str):
    cfg = load_config(EXAMPLES / f"{name}.yaml")
    text = (EXAMPLES / f"{name}.yaml").read_text()
    assert text.startswith("#"), "each example starts with a header comment"
    assert cfg.name == name


@pytest.mark.parametrize("name", FILES)
def test_example_runs_as_is_on_embedded_data(name: str):
    """`delineo train examples/NAME.yaml` needs no --set: its default data ships with Delineo."""
    cfg = load_config(EXAMPLES / f"{name}.yaml")
    source = Path(cfg.data.source.path)
    assert source.is_relative_to(ROOT / "delineo" / "sample_data"), source
    ds = load_dataset(cfg.data)
    assert len({c.patient for c in ds.cases}) >= cfg.data.folds
    channels = {"headneck_petct": 2}.get(name, 1)
    assert len(ds.channels) == channels and len(cfg.preprocess.intensity) in (1, channels)


def test_embedded_ct_liver_sample_is_on_its_grid():
    """Each CT's liver mask lies on liver tissue (median 40..140 HU) and not on air or bone."""
    root = ROOT / "delineo" / "sample_data" / "ct_liver"
    assert "Apache-2.0" in (root / "LICENSE.txt").read_text() and "BSD-3-Clause" in (root / "LICENSE.txt").read_text()
    for n in (1, 2, 3):
        ct = read_image(root / "imagesTr" / f"liver_{n:03d}_0000.nii.gz")
        mask = read_image(root / "labelsTr" / f"liver_{n:03d}.nii.gz")
        assert ct.same_grid(mask)
        inside = np.asarray(ct.array)[np.asarray(mask.array) == 1]
        assert inside.size > 10_000
        assert 40 <= np.median(inside) <= 140, (n, np.median(inside))
        assert np.percentile(inside, 5) > -100 and np.percentile(inside, 95) < 250


def test_examples_match_the_published_setups():
    hn = load_config(EXAMPLES / "headneck_petct.yaml")
    assert (hn.model["name"], hn.model["out_channels"], hn.data.source.type) == ("deoxys_unet", 1, "hdf5")
    assert (hn.sampling.mode, hn.sampling.axis, len(hn.preprocess.intensity)) == ("2d", 2, 2)
    assert (hn.train.optimizer, hn.loss["name"]) == ({"name": "adam", "lr": 1e-4}, "dice")
    wmh = load_config(EXAMPLES / "wmh.yaml")
    assert (wmh.model["name"], wmh.model["attention"], wmh.sampling.mode, wmh.sampling.context) == ("unet256", True, "2.5d", 1)
    assert wmh.loss == {"name": "focal_tversky", "fn_weight": 0.85, "fp_weight": 0.15, "gamma": pytest.approx(4 / 3),
                        "smooth": 2}
    assert wmh.train.schedule == {"name": "plateau", "factor": 0.2, "patience": 5} and wmh.sampling.batch_size == 12
    pu = load_config(EXAMPLES / "pneumothorax_unet.yaml")
    assert (pu.model["backbone"], pu.sampling.positive_only, pu.loss["name"], pu.train.schedule["name"]) == \
        ("resnet34", True, "jaccard", "one_cycle")
    pc = load_config(EXAMPLES / "pneumothorax_classifier.yaml")
    assert (pc.model["name"], pc.model["backbone"], pc.loss["name"], pc.train.optimizer["name"], pc.train.task) == \
        ("classifier", "resnext50_32x4d", "soft_f1", "radam", "classification")
    bt = load_config(EXAMPLES / "brain_tumour.yaml")
    assert bt.model["filters"] == [16, 32, 64, 128, 256] and bt.train.optimizer["lr"] == 2e-3
    assert bt.train.schedule == {"name": "plateau", "factor": 0.5, "patience": 10} and bt.train.early_stopping_patience == 15
    assert bt.augment.affine.p > 0 and bt.augment.flip.p > 0 and bt.augment.affine.scale != (1.0, 1.0)
    lv = load_config(EXAMPLES / "liver.yaml")
    assert (lv.model["name"], lv.model["backbone"], lv.preprocess.intensity[0].window) == ("deeplabv3", "resnet152", (-250, 250))
    assert lv.train.optimizer["lr"] == 0.05 and lv.train.optimizer["momentum"] == 0.9
    assert lv.train.schedule == {"name": "step", "every": 10, "gamma": 0.95}
    for backbone in ("resnext101_32x8d", "densenet201", "inception_v3"):
        assert f"model.backbone={backbone}" in (EXAMPLES / "liver.yaml").read_text()
        load_config(EXAMPLES / "liver.yaml", [f"model.backbone={backbone}"])


def _log(run: Path) -> list[dict[str, str]]:
    with open(run / "log.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Train every example once (shrunk) on its default data; the runs are shared by the tests below."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for name in FILES:
        cfg = load_config(EXAMPLES / f"{name}.yaml", [*QUICK, *SHRINK[name]])
        torch.manual_seed(0)
        out[name] = train(cfg, root, fold=0, progress=False)
    return out


@pytest.mark.parametrize("name", FILES)
def test_example_trains_with_falling_loss(runs: dict[str, Path], name: str):
    rows = _log(runs[name])
    assert len(rows) == 4 and (runs[name] / "checkpoints" / "best.pt").is_file()
    losses = [float(r["train_loss"]) for r in rows]
    assert np.isfinite(losses).all()
    assert np.mean(losses[-2:]) < losses[0], losses


def test_headneck_single_sigmoid_output_on_two_channels(runs: dict[str, Path]):
    from delineo.infer.predictor import load_checkpoint

    ckpt = load_checkpoint(runs["headneck_petct"])
    assert (ckpt["meta"]["in_channels"], ckpt["meta"]["out_channels"]) == (2, 1)
    assert "val_dice" in _log(runs["headneck_petct"])[-1]
    wmh = load_checkpoint(runs["wmh"])["meta"]
    assert (wmh["in_channels"], wmh["mode"], wmh["context"]) == (3, "2.5d", 1)  # 3 slices x 1 channel


def test_classifier_logs_validation_f1_and_keeps_the_best(runs: dict[str, Path]):
    from delineo.evaluate.run import evaluate_run
    from delineo.infer.predictor import load_checkpoint

    run = runs["pneumothorax_classifier"]
    last = _log(run)[-1]
    for key in ("val_f1", "val_balanced_accuracy", "val_accuracy", "val_precision", "val_recall"):
        assert 0.0 <= float(last[key]) <= 1.0, key
    assert "val_dice" not in last and last["best"] == "1"
    ckpt = load_checkpoint(run)
    assert ckpt["state"]["best_metric"] == pytest.approx(float(last["val_f1"]), abs=1e-5)
    assert ckpt["meta"]["out_channels"] == 1
    with open(run / "predictions" / "best" / "slices.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    val = json.loads((run / "cases.json").read_text())["val"]
    assert {r["case"] for r in rows} == set(val)
    assert {r["reference"] for r in rows} == {"0", "1"}  # slices with and without hippocampus
    summary = evaluate_run(run, progress=False)
    assert summary["f1"] == pytest.approx(float(last["val_f1"]), abs=1e-5)
    assert json.loads((run / "metrics" / "summary.json").read_text())["task"] == "classification"


def test_class_targets_and_metrics():
    y = torch.zeros(3, 1, 4, 4, dtype=torch.long)
    y[1, 0, 2, 2] = 1
    y[2, 0, 0, 0], y[2, 0, 1, 1] = 1, 2
    assert class_targets(y, 1).tolist() == [0, 1, 1]
    assert class_targets(y, 2).tolist() == [0, 1, 1]
    assert class_targets(y, 3).tolist() == [0, 1, 2]
    m = classification_metrics(np.array([0, 0, 0, 1, 1]), np.array([0, 0, 1, 1, 0]), 1)
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert (m["precision"], m["recall"], m["f1"]) == pytest.approx((0.5, 0.5, 0.5))
    empty = classification_metrics(np.zeros(4), np.zeros(4), 1)
    assert empty["f1"] == 1.0 and empty["accuracy"] == 1.0


def _case(cid: str, label: np.ndarray) -> CachedCase:
    fg = {int(v): np.argwhere(label == v) for v in np.unique(label) if v}
    image = np.random.default_rng(0).normal(size=(1,) + label.shape).astype(np.float32)
    return CachedCase(cid, image, label, None, fg)  # type: ignore[arg-type]


@pytest.mark.parametrize("mode,patch", [("2d", [8, 8]), ("2.5d", [8, 8]), ("3d", [8, 8, 8])])
def test_positive_only_never_yields_an_empty_mask(mode: str, patch: list[int]):
    label = np.zeros((20, 24, 30), np.uint8)
    label[3:5, 20:22, 7] = 1  # tiny lesion on one slice, near an edge
    label[15, 4, 25:27] = 2
    cases = [_case("empty", np.zeros((20, 24, 30), np.uint8)), _case("lesion", label)]
    sampler = PatchSampler(cases, mode, patch, axis=2, context=1, foreground_fraction=0.0, positive_only=True)
    assert [c.case_id for c in sampler.cases] == ["lesion"]
    rng = np.random.default_rng(0)
    for _ in range(50):
        _, y = sampler.sample(8, rng)
        assert y.reshape(8, -1).max(1).min() > 0
    plain = PatchSampler(cases, mode, patch, axis=2, context=1, foreground_fraction=0.0)
    _, y = plain.sample(32, np.random.default_rng(0))
    assert y.reshape(32, -1).max(1).min() == 0  # without the switch, empty samples are common
    with pytest.raises(ConfigError, match="positive_only"):
        PatchSampler(cases[:1], mode, patch, positive_only=True)


def test_lr_find_cli(tmp_path: Path, capsys, monkeypatch):
    out = tmp_path / "lr.png"
    db = tmp_path / "team.db"  # a shared experiment database: a range test is not a training
    monkeypatch.setenv("DELINEO_DB", str(db))
    rc = main(["lr-find", "-q", str(EXAMPLES / "brain_tumour.yaml"), "--set", f"data.source.path={SAMPLE}",
               *[a for s in QUICK + SHRINK["brain_tumour"] for a in ("--set", s)],
               "--steps", "12", "--start", "1e-5", "--end", "1", "--out", str(out), "--runs", str(tmp_path / "runs")])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert out.is_file() and out.stat().st_size > 1000
    assert "suggested learning rate" in text
    lr = float(text.rsplit("learning rate", 1)[1].split()[0])
    # the suggestion is one of the 12 swept rates 1e-5 * 10^(5k/11), past the 2-step start-up window
    k = 11 * (np.log10(lr) + 5) / 5
    assert abs(k - round(k)) < 0.01 and 2 <= round(k) <= 11, lr
    assert not list((tmp_path / "runs").glob("*/fold_*")), "lr-find writes no run folder"
    if db.exists():  # no session (it would stay 'running' for a deleted temporary folder)
        import sqlite3
        with sqlite3.connect(db) as conn:
            tables = {r[0] for r in conn.execute("select name from sqlite_master where type='table'")}
            if "session" in tables:
                assert conn.execute("select count(*) from session").fetchone()[0] == 0
