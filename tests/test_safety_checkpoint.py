"""Model files travel between groups: a checkpoint whose pickle would run code is refused by
``predict`` and ``train --resume`` with one sentence, and the code does not run; a trusted
legacy (full-pickle) checkpoint works after ``delineo convert-checkpoint``."""

from __future__ import annotations

import builtins
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from .conftest import phantom_experiment, write_msd


def cli(*args: str) -> subprocess.CompletedProcess:
    """``delineo ARGS`` run in this process (no interpreter start-up per call), output captured."""
    import contextlib
    import io

    from delineo.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def one_sentence(res: subprocess.CompletedProcess, *needles: str) -> str:
    assert res.returncode == 2, res.stderr
    lines = [l for l in res.stderr.strip().splitlines() if "error:" in l]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


class Payload:
    """Unpickling this creates the marker file: the stand-in for arbitrary code execution."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ckpt")
    data = write_msd(root / "data", n=6)
    exp = phantom_experiment(data, epochs=1, iterations_per_epoch=2)
    (root / "exp.yaml").write_text(yaml.safe_dump(exp))
    res = cli("train", str(root / "exp.yaml"), "--runs", str(root / "runs"), "-q", "--no-evaluate")
    assert res.returncode == 0, res.stderr
    return root


def _case(run: Path) -> Path:
    return run / "data" / "imagesTr" / "ph_000_0000.nii.gz"


def test_malicious_checkpoint_refused_by_predict(run: Path, tmp_path: Path):
    good = torch.load(run / "runs/phantom/fold_0/checkpoints/best.pt", weights_only=True)
    marker = tmp_path / "PWNED"
    torch.save({**good, "evil": Payload(marker)}, tmp_path / "best.pt")
    out = tmp_path / "mask.nii.gz"
    line = one_sentence(cli("predict", str(tmp_path / "best.pt"), str(_case(run)), str(out)),
                        str(tmp_path / "best.pt"), "refused", "convert-checkpoint")
    assert not marker.exists(), "unpickling ran code from the checkpoint"
    assert not out.exists() and list(tmp_path.glob(".mask*")) == []
    assert line.count(";") == 1  # one sentence with the conversion command after the semicolon


def test_malicious_checkpoint_refused_by_resume(run: Path, tmp_path: Path):
    import shutil

    shutil.copytree(run / "runs", tmp_path / "runs")
    last = tmp_path / "runs/phantom/fold_0/checkpoints/last.pt"
    good = torch.load(last, weights_only=True)
    marker = tmp_path / "PWNED"
    torch.save({**good, "state": Payload(marker)}, last)
    before = last.read_bytes()
    exp = yaml.safe_load((run / "exp.yaml").read_text())
    exp["train"]["epochs"] = 2
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(exp))
    one_sentence(cli("train", str(tmp_path / "exp.yaml"), "--runs", str(tmp_path / "runs"), "--resume", "-q",
                     "--no-evaluate"), str(last), "cannot resume", "refused")
    assert not marker.exists(), "unpickling ran code from the checkpoint"
    assert last.read_bytes() == before  # nothing overwritten


def test_legacy_pickle_checkpoint_converts_then_predicts(run: Path, tmp_path: Path):
    best = run / "runs/phantom/fold_0/checkpoints/best.pt"
    good = torch.load(best, weights_only=True)
    # an old-style checkpoint: numpy arrays and tuples pickled as Python objects
    legacy = {**good, "meta": {**good["meta"], "patch_size": tuple(good["meta"]["patch_size"])},
              "extra": np.arange(3), "numpy_scalar": np.float64(0.5)}
    torch.save(legacy, tmp_path / "old.pt")
    one_sentence(cli("predict", str(tmp_path / "old.pt"), str(_case(run)), str(tmp_path / "x.nii.gz")),
                 "old.pt", "convert-checkpoint")
    conv = cli("convert-checkpoint", str(tmp_path / "old.pt"), str(tmp_path / "new.pt"), "-q")
    assert conv.returncode == 0, conv.stderr
    torch.load(tmp_path / "new.pt", weights_only=True)  # now plain
    a, b = tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"
    assert cli("predict", str(tmp_path / "new.pt"), str(_case(run)), str(a), "-q").returncode == 0
    assert cli("predict", str(best), str(_case(run)), str(b), "-q").returncode == 0
    ma, mb = nib.load(a), nib.load(b)
    assert np.array_equal(np.asarray(ma.dataobj), np.asarray(mb.dataobj))
    assert np.allclose(ma.affine, mb.affine)


def test_garbage_and_truncated_checkpoints(run: Path, tmp_path: Path):
    best = (run / "runs/phantom/fold_0/checkpoints/best.pt").read_bytes()
    (tmp_path / "trunc.pt").write_bytes(best[: len(best) // 2])
    (tmp_path / "junk.pt").write_bytes(os.urandom(4096))
    for name in ("trunc.pt", "junk.pt"):
        one_sentence(cli("predict", str(tmp_path / name), str(_case(run)), str(tmp_path / "o.nii.gz")),
                     name, "not a readable Delineo checkpoint")
    assert not (tmp_path / "o.nii.gz").exists()
