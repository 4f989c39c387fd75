"""Prediction over many cases: sharded across two CPU processes with torchrun, prefetching,
atomic masks written once, reruns that skip finished cases, and a summary with failures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from delineo.config import config_from_dict
from delineo.infer.run import predict_paths
from delineo.infer.shard import predict_many, read_case_list
from delineo.train.loop import train

from .conftest import phantom_experiment, write_msd

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("shard")
    data = write_msd(root / "data", n=8)
    cfg = config_from_dict(phantom_experiment(data, epochs=2, iterations_per_epoch=4))
    run = train(cfg, root / "runs", fold=0, progress=False)
    cases = root / "cases"
    cases.mkdir()
    for p in sorted((data / "imagesTr").iterdir())[:6]:
        (cases / p.name.replace("_0000", "")).write_bytes(p.read_bytes())
    (cases / "broken.nii.gz").write_bytes(b"not a nifti file at all")
    return run, cases


def _same_as_plain(run: Path, cases: Path, out: Path, tmp: Path) -> None:
    good = sorted(p for p in cases.iterdir() if p.name != "broken.nii.gz")
    ref = tmp / "ref"
    ref.mkdir()
    for p in good[:2]:  # plain prediction of two cases as the reference
        predict_paths(run, p, ref / p.name, device="cpu", progress=False)
        a = nib.load(ref / p.name).get_fdata()
        b = nib.load(out / p.name).get_fdata()
        assert np.array_equal(a, b) and a.sum() > 0


def test_torchrun_two_processes_then_rerun_skips(setup, tmp_path: Path):
    run, cases = setup
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "delineo.cli", "-q", "predict", str(run), str(cases), str(out), "--device", "cpu"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert r.returncode == 1, r.stderr[-2000:]  # one case failed
    summary = json.loads((out / "predict_summary.json").read_text())
    assert summary["processes"] == 2 and summary["cases"] == 7 and summary["predicted"] == 6
    assert len(summary["failed"]) == 1 and "broken.nii.gz" in summary["failed"][0]["reason"]
    ranks = [json.loads((out / ".predict_summary" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert sorted(p["cases"] for p in ranks) == [3, 4]  # every case went to exactly one process
    masks = sorted(p.name for p in out.glob("*.nii.gz"))
    assert masks == sorted(p.name for p in cases.iterdir() if p.name != "broken.nii.gz")
    assert not list(out.glob(".*.tmp*"))  # nothing half-written left behind
    _same_as_plain(run, cases, out, tmp_path)
    stamp = {p.name: p.stat().st_mtime_ns for p in out.glob("*.nii.gz")}
    again = predict_many(run, cases, out, device="cpu", progress=False)  # a plain rerun: finished cases skipped
    assert (again.skipped, again.predicted, len(again.failed)) == (6, 0, 1)
    assert stamp == {p.name: p.stat().st_mtime_ns for p in out.glob("*.nii.gz")}


def test_case_list_with_prefetch(setup, tmp_path: Path):
    run, cases = setup
    names = sorted(p.name for p in cases.iterdir() if p.name != "broken.nii.gz")[:3]
    lst = tmp_path / "cases.csv"
    lst.write_text("image\n" + "\n".join(str(cases / n) for n in names) + "\n")
    assert [p.name for p in read_case_list(lst)] == names
    out = tmp_path / "out"
    s = predict_many(run, lst, out, device="cpu", prefetch=2, progress=False)
    assert (s.cases, s.predicted, s.skipped, s.failed) == (3, 3, 0, [])
    assert 0 < s.network_seconds <= s.seconds and s.read_seconds > 0
    assert sorted(p.name for p in out.glob("*.nii.gz")) == names
    _same_as_plain(run, cases, out, tmp_path)


def test_predict_paths_under_a_memory_cap_and_bf16(setup, tmp_path: Path):
    from delineo.train.loop import dice

    run, cases = setup
    src = sorted(p for p in cases.iterdir() if p.name != "broken.nii.gz")[0]
    plain = predict_paths(run, src, tmp_path / "plain.nii.gz", device="cpu", progress=False)[0]
    capped = predict_paths(run, src, tmp_path / "capped.nii.gz", device="cpu", progress=False, max_memory="64MB",
                           probabilities=True)[0]
    a, b = nib.load(plain).get_fdata(), nib.load(capped).get_fdata()
    assert a.sum() > 0 and np.array_equal(a, b)  # 2D slice-wise: labels batch by batch, same result
    assert not (tmp_path / "capped_probabilities.nii.gz").exists()  # not kept under a cap (a warning says so)
    bf = predict_paths(run, src, tmp_path / "bf16.nii.gz", device="cpu", progress=False, precision="bf16")[0]
    c = nib.load(bf).get_fdata()
    assert all(dice(a == v, c == v) >= 0.98 for v in (1, 2))
