"""Training, resuming, prediction geometry and distributed training, on phantoms (fast)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from delineo.config import config_from_dict
from delineo.train.loop import dice
from delineo.infer.predictor import Predictor, load_checkpoint
from delineo.infer.run import predict_paths
from delineo.io import read_image, write_image
from delineo.io.image import Image
from delineo.train.loop import train

from .conftest import phantom_case, phantom_experiment, write_msd

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    e = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "delineo.cli", *args], capture_output=True, text=True, env=e, **kw)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("trained")
    data = write_msd(root / "data", n=10)
    cfg = config_from_dict(phantom_experiment(data, epochs=6, iterations_per_epoch=8))
    return train(cfg, root / "runs", fold=0, progress=False)


def test_run_folder_shape(trained: Path):
    for rel in ("config.yaml", "log.csv", "cases.json", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (trained / rel).is_file(), rel
    rows = (trained / "log.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,train_loss") and len(rows) == 7
    val = json.loads((trained / "cases.json").read_text())["val"]
    assert sorted(p.name for p in (trained / "predictions" / "best").iterdir()) == sorted(f"{c}.nii.gz" for c in val)
    ckpt = load_checkpoint(trained / "checkpoints" / "best.pt")
    assert ckpt["config"]["name"] == "phantom" and ckpt["meta"]["labels"] == {"1": "one", "2": "two"}


def test_learns_the_phantom(trained: Path):
    from delineo.evaluate.run import evaluate_run

    summary = evaluate_run(trained, progress=False)
    assert summary["mean_dice"] > 0.7, summary["mean_dice"]
    assert (trained / "report.html").is_file() and (trained / "metrics" / "cases.csv").is_file()


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd"])
def test_predict_keeps_input_geometry(trained: Path, tmp_path: Path, suffix: str):
    image, label = phantom_case(np.random.default_rng(99))
    # an oblique, flipped orientation the model never saw: output must still match the input grid
    affine = np.array([[0, 0, -1.5, 20], [-1.0, 0, 0, 5], [0, 1.0, 0, -7], [0, 0, 0, 1]])
    src = write_image(Image(image, affine), tmp_path / f"in{suffix}")
    out = predict_paths(trained, src, tmp_path / "out", progress=False)[0]
    assert out.name == f"in{suffix}"
    pred, inp = read_image(out), read_image(src)
    assert pred.array.shape == inp.array.shape
    np.testing.assert_allclose(pred.affine, inp.affine, atol=1e-5)
    fg = (pred.array > 0) == (label > 0)
    assert fg.mean() > 0.9


def test_predict_folder_with_probabilities(trained: Path, tmp_path: Path):
    rng = np.random.default_rng(5)
    for i in range(2):
        image, _ = phantom_case(rng)
        nib.save(nib.Nifti1Image(image, np.eye(4)), tmp_path / f"c{i}.nii.gz")
    written = predict_paths(trained / "checkpoints" / "best.pt", tmp_path, tmp_path / "o", probabilities=True,
                            progress=False)
    assert [p.name for p in written] == ["c0.nii.gz", "c1.nii.gz"]
    probs = read_image(tmp_path / "o" / "c0_probabilities.nii.gz", allow_4d=True)
    assert probs.array.shape == (3, 24, 28, 20)
    np.testing.assert_allclose(probs.array.sum(0), 1.0, atol=1e-4)


def test_predict_one_case_is_fast(trained: Path, tmp_path: Path):
    image, _ = phantom_case(np.random.default_rng(3))
    nib.save(nib.Nifti1Image(image, np.eye(4)), tmp_path / "a.nii.gz")
    predictor = Predictor.from_checkpoint(trained)
    t0 = time.perf_counter()
    mask, _ = predictor.predict_images([read_image(tmp_path / "a.nii.gz")])
    write_image(mask, tmp_path / "m.nii.gz")
    assert time.perf_counter() - t0 < 1.0


def weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["model_state"]


def test_kill_9_mid_epoch_then_resume_gives_identical_weights(tmp_path: Path):
    data = write_msd(tmp_path / "data", n=8)
    exp = phantom_experiment(data, epochs=4, iterations_per_epoch=30)
    exp["sampling"]["batch_size"] = 16
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(exp))
    ref = cli("train", str(tmp_path / "exp.yaml"), "--runs", str(tmp_path / "ref"), "-q", "--no-evaluate")
    assert ref.returncode == 0, ref.stderr
    proc = subprocess.Popen([sys.executable, "-m", "delineo.cli", "train", str(tmp_path / "exp.yaml"), "--runs",
                             str(tmp_path / "cut"), "-q", "--no-evaluate"], env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tmp_path / "cut" / "phantom" / "fold_0" / "checkpoints" / "last.pt"
    deadline = time.time() + 120
    while not last.exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # into the next epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    epoch_at_kill = torch.load(last, weights_only=True)["state"]["epoch"]
    assert 1 <= epoch_at_kill < 4, "the kill should land mid-run"
    rerun = cli("train", str(tmp_path / "exp.yaml"), "--runs", str(tmp_path / "cut"), "-q")
    assert rerun.returncode == 2 and "--resume" in rerun.stderr  # refuses to overwrite
    resumed = cli("train", str(tmp_path / "exp.yaml"), "--runs", str(tmp_path / "cut"), "--resume", "-q", "--no-evaluate")
    assert resumed.returncode == 0, resumed.stderr
    a = weights(tmp_path / "ref" / "phantom" / "fold_0" / "checkpoints" / "last.pt")
    b = weights(last)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    log = (last.parent.parent / "log.csv").read_text().splitlines()
    assert len(log) == 5
    assert sorted(p.name for p in last.parent.iterdir()) == ["best.pt", "last.pt"]


def test_torchrun_two_cpu_processes(tmp_path: Path):
    data = write_msd(tmp_path / "data", n=8)
    exp = phantom_experiment(data, epochs=2, iterations_per_epoch=3)
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(exp))
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    import socket

    with socket.socket() as s:  # a free port, so parallel runs on one machine do not collide
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    res = subprocess.run([str(torchrun), "--nproc_per_node=2", f"--master_port={port}", "-m", "delineo.cli", "train",
                          str(tmp_path / "exp.yaml"), "--runs", str(tmp_path / "runs"), "-q"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    run = tmp_path / "runs" / "phantom" / "fold_0"
    assert len((run / "log.csv").read_text().splitlines()) == 3
    assert load_checkpoint(run)["state"]["epoch"] == 2
    assert res.stdout.count("mean Dice") == 1  # only rank 0 reports and writes


def test_two_channel_model_predicts_a_folder_of_channel_files(tmp_path: Path):
    data = write_msd(tmp_path / "data", n=6)
    meta = json.loads((data / "dataset.json").read_text())
    meta["modality"] = {"0": "CT", "1": "PET"}
    (data / "dataset.json").write_text(json.dumps(meta))
    for f in sorted((data / "imagesTr").glob("*_0000.nii.gz")):
        img = nib.load(f)
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj) * -1.0, img.affine), str(f).replace("_0000", "_0001"))
    run = train(config_from_dict(phantom_experiment(data, epochs=1, iterations_per_epoch=2)), tmp_path / "runs", 0,
                progress=False)
    new = tmp_path / "new"
    new.mkdir()
    for c in range(2):
        src = data / "imagesTr" / f"ph_000_{c:04d}.nii.gz"
        (new / f"pat_{c:04d}.nii.gz").write_bytes(src.read_bytes())
    written = predict_paths(run, new, tmp_path / "out", progress=False)
    assert [p.name for p in written] == ["pat.nii.gz"]
    assert read_image(written[0]).array.shape == (24, 28, 20)
    (new / "pat_0001.nii.gz").unlink()
    from delineo.errors import InputError

    with pytest.raises(InputError, match="lacks channel file"):
        predict_paths(run, new, tmp_path / "out2", progress=False)


def test_all_folds_give_a_cross_validation_summary(tmp_path: Path):
    data = write_msd(tmp_path / "data", n=6)
    exp = phantom_experiment(data, epochs=2, iterations_per_epoch=4)
    exp["data"]["folds"] = 2
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(exp))
    res = cli("-q", "train", str(tmp_path / "exp.yaml"), "--fold", "all", "--runs", str(tmp_path / "runs"))
    assert res.returncode == 0, res.stderr
    assert "cross-validation mean Dice" in res.stdout
    summary = json.loads((tmp_path / "runs" / "phantom" / "metrics" / "summary.json").read_text())
    assert summary["n_cases"] == 6 and set(summary["folds"]) == {"fold_0", "fold_1"}
    rows = (tmp_path / "runs" / "phantom" / "metrics" / "cases.csv").read_text().splitlines()
    assert len(rows) == 1 + 6 * 2  # every case once, two labels


def test_tta_mirrors_only_trained_axes(trained: Path, tmp_path: Path):
    """The phantom model is trained with flips: mirroring at test time must not
    hurt; a model trained without flips gets no mirroring at all."""
    from delineo.evaluate.metrics import score_case

    image, label = phantom_case(np.random.default_rng(11))
    img = Image(image, np.eye(4))
    scores = {}
    for tta in (False, True):
        p = Predictor.from_checkpoint(trained, tta=tta)
        assert p.tta_axes == [0, 1]  # a 2D model: the in-plane axes
        mask, _ = p.predict_images([img])
        s = score_case(mask.array, label, (1, 1, 1), {1: "one", 2: "two"})
        scores[tta] = np.mean([s[k]["dice"] for k in s])
    assert scores[True] >= scores[False] - 0.03, scores
    p = Predictor.from_checkpoint(trained, tta=True)
    p.cfg.augment.flip.p = 0.0
    assert Predictor(p.model, p.cfg, p.meta, tta=True).tta_axes == []


def test_snapshots_early_stopping_and_time_budget(tmp_path: Path):
    data = write_msd(tmp_path / "data", n=6)
    # snapshots of chosen epochs are kept next to the best predictions
    cfg = config_from_dict(phantom_experiment(data, epochs=3, iterations_per_epoch=2, snapshot_epochs=[0, 2]))
    run = train(cfg, tmp_path / "a", 0, progress=False)
    assert sorted(p.name for p in (run / "predictions").iterdir()) == ["best", "epoch_0000", "epoch_0002"]
    # a learning rate of zero never improves: early stopping ends the run after `patience` validations
    cfg = config_from_dict(phantom_experiment(data, epochs=20, iterations_per_epoch=1, early_stopping_patience=2,
                                              optimizer={"name": "sgd", "lr": 0.0, "momentum": 0.0}))
    run = train(cfg, tmp_path / "b", 0, progress=False)
    assert len((run / "log.csv").read_text().splitlines()) - 1 == 3  # best at epoch 0, then 2 without gain
    # a wall-clock budget stops long before the epoch count
    cfg = config_from_dict(phantom_experiment(data, epochs=10_000, iterations_per_epoch=2, max_minutes=0.05))
    t0 = time.perf_counter()
    run = train(cfg, tmp_path / "c", 0, progress=False)
    assert time.perf_counter() - t0 < 60
    with open(run / "log.csv", newline="") as fh:
        seconds = [float(r["seconds"]) for r in csv.DictReader(fh)]
    # the budget (3 s) ends the run at the first epoch that reaches it, not before and not after
    assert sum(seconds[:-1]) < 0.05 * 60 <= sum(seconds), seconds
    # a budget shorter than one epoch ends that epoch early, then validates and saves as usual
    cfg = config_from_dict(phantom_experiment(data, epochs=3, iterations_per_epoch=100_000, max_minutes=0.03))
    t0 = time.perf_counter()
    run = train(cfg, tmp_path / "d", 0, progress=False)
    assert time.perf_counter() - t0 < 60
    with open(run / "log.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 1 and 1 <= int(rows[0]["iterations"]) < 100_000
    assert "val_dice" in rows[0] and (run / "checkpoints" / "best.pt").is_file()


def test_non_contiguous_label_values_round_trip(tmp_path: Path):
    """Label values {3, 7} train as classes 1, 2 and come back as 3 and 7."""
    data = write_msd(tmp_path / "data", n=6)
    for f in (data / "labelsTr").iterdir():
        lab = nib.load(f)
        arr = np.asarray(lab.dataobj)
        nib.save(nib.Nifti1Image(np.select([arr == 1, arr == 2], [3, 7], 0).astype(np.uint8), lab.affine), f)
    meta = json.loads((data / "dataset.json").read_text())
    meta["labels"] = {"0": "background", "3": "three", "7": "seven"}
    (data / "dataset.json").write_text(json.dumps(meta))
    run = train(config_from_dict(phantom_experiment(data, epochs=4, iterations_per_epoch=8)), tmp_path / "runs", 0,
                progress=False)
    from delineo.evaluate.run import evaluate_run

    summary = evaluate_run(run, progress=False)
    assert set(summary["labels"]) == {"three", "seven"} and summary["mean_dice"] > 0.6
    image, _ = phantom_case(np.random.default_rng(8))
    mask, _ = Predictor.from_checkpoint(run).predict_images([Image(image, np.diag([1, 1, 1.5, 1]))])
    assert set(np.unique(mask.array)) == {0, 3, 7}


def test_one_output_on_two_labels_learns_and_scores_their_union(tmp_path: Path):
    """A sigmoid model on labels {1: one, 2: two} is scored against one | two, as 'one+two'."""
    data = write_msd(tmp_path / "data", n=6)
    exp = phantom_experiment(data, epochs=4, iterations_per_epoch=8)
    exp["model"]["out_channels"] = 1
    run = train(config_from_dict(exp), tmp_path / "runs", 0, progress=False)
    with open(run / "log.csv", newline="") as fh:
        last = list(csv.DictReader(fh))[-1]
    assert "val_dice_one+two" in last and "val_dice_two" not in last
    assert float(last["val_dice"]) > 0.6
    from delineo.evaluate.run import evaluate_run

    summary = evaluate_run(run, progress=False)
    assert list(summary["labels"]) == ["one+two"]
    assert summary["mean_dice"] == pytest.approx(float(last["val_dice"]), abs=0.02)
    image, label = phantom_case(np.random.default_rng(8))
    mask, _ = Predictor.from_checkpoint(run).predict_images([Image(image, np.diag([1, 1, 1.5, 1]))])
    assert set(np.unique(mask.array)) == {0, 1}
    assert dice(np.asarray(mask.array) == 1, label > 0) > 0.6


def test_progress_schedules_step_every_iteration(tmp_path: Path):
    """Cosine over 2 epochs of 10 iterations: the lr of the last step of epoch 0 is the cosine at
    progress 9/20 and that of the last step of epoch 1 at 19/20 (not frozen per epoch)."""
    import math

    data = write_msd(tmp_path / "data", n=6)
    run = train(config_from_dict(phantom_experiment(data, epochs=2, iterations_per_epoch=10,
                                                    schedule={"name": "cosine"})), tmp_path / "runs", 0,
                progress=False)
    with open(run / "log.csv", newline="") as fh:
        lrs = [float(r["lr"]) for r in csv.DictReader(fh)]
    expect = [0.01 * 0.5 * (1 + math.cos(math.pi * p)) for p in (9 / 20, 19 / 20)]
    assert lrs == pytest.approx(expect, rel=1e-6)
