"""Faults while writing: a prediction over a folder killed half-way leaves only complete outputs
and ``--skip-existing`` finishes the rest; a full disk (a real 2 MB tmpfs mounted by the test,
or RLIMIT_FSIZE where mounting is not allowed) while writing a prediction or a checkpoint gives
one sentence, leaves no partial file and keeps the previous checkpoint intact."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from .conftest import phantom_case, phantom_experiment, write_msd

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "delineo.cli", *args], capture_output=True, text=True, env=ENV,
                          timeout=300, **kw)


def cli_here(*args: str) -> subprocess.CompletedProcess:
    """The same command in this process (no interpreter start-up)."""
    import contextlib
    import io

    from delineo.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def one_sentence(res: subprocess.CompletedProcess, *needles: str) -> str:
    assert res.returncode == 2, res.stdout + res.stderr
    lines = [l for l in res.stderr.strip().splitlines() if "error:" in l]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faults")
    data = write_msd(root / "data", n=6)
    exp = phantom_experiment(data, epochs=1, iterations_per_epoch=2)
    (root / "exp.yaml").write_text(yaml.safe_dump(exp))
    res = cli_here("train", str(root / "exp.yaml"), "--runs", str(root / "runs"), "-q", "--no-evaluate")
    assert res.returncode == 0, res.stderr
    return root


def _visible(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


@pytest.mark.soak
def test_folder_prediction_killed_half_way_then_skip_existing(trained: Path, tmp_path: Path):
    model = trained / "runs/phantom/fold_0"
    cases = tmp_path / "cases"
    cases.mkdir()
    rng = np.random.default_rng(3)
    n = 40
    for i in range(n):
        image, _ = phantom_case(rng, shape=(48, 56, 40))
        nib.save(nib.Nifti1Image(image, np.diag([1.0, 1.0, 1.5, 1.0])), cases / f"c{i:03d}.nii.gz")
    ref = cli("predict", str(model), str(cases), str(tmp_path / "ref"), "--probabilities", "-q")
    assert ref.returncode == 0, ref.stderr
    out = tmp_path / "out"
    for attempt in range(3):  # the kill must land while cases remain
        shutil.rmtree(out, ignore_errors=True)
        proc = subprocess.Popen([sys.executable, "-m", "delineo.cli", "predict", str(model), str(cases), str(out),
                                 "--probabilities", "-q"], env=ENV, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline and not (out.is_dir() and len(_visible(out)) >= 6 + 2 * attempt):
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done = [p for p in _visible(out) if not p.name.endswith("_probabilities.nii.gz")]
        if len(done) < n:
            break
    assert 1 <= len(done) < n, f"the kill landed after {len(done)} of {n} cases"
    # every visible file is complete and identical to the uninterrupted run's; every mask has its probabilities
    for p in _visible(out):
        a, b = nib.load(p), nib.load(tmp_path / "ref" / p.name)
        assert np.array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj)), p.name
    for m in done:
        assert (out / m.name.replace(".nii.gz", "_probabilities.nii.gz")).is_file(), m.name
    res = cli("predict", str(model), str(cases), str(out), "--probabilities", "--skip-existing", "-q")
    assert res.returncode == 0, res.stderr
    assert len(res.stdout.split()) == n - len(done)  # only the rest was predicted
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in (tmp_path / "ref").iterdir())
    for p in _visible(out):
        assert np.array_equal(np.asarray(nib.load(p).dataobj), np.asarray(nib.load(tmp_path / "ref" / p.name).dataobj))


def test_skip_existing_finishes_only_the_missing_cases(trained: Path, tmp_path: Path):
    """What a killed run leaves (some complete masks, a stale temporary file) is finished by
    --skip-existing: only the missing cases are predicted, with the same result. (The kill -9
    version of this test runs under `make soak`.)"""
    from delineo.cli import main

    model = trained / "runs/phantom/fold_0"
    cases, ref, out = tmp_path / "cases", tmp_path / "ref", tmp_path / "out"
    cases.mkdir()
    rng = np.random.default_rng(3)
    for i in range(6):
        image, _ = phantom_case(rng)
        nib.save(nib.Nifti1Image(image, np.diag([1.0, 1.0, 1.5, 1.0])), cases / f"c{i}.nii.gz")
    assert main(["predict", str(model), str(cases), str(ref), "--probabilities", "-q"]) == 0
    shutil.copytree(ref, out)
    for i in (1, 4):  # as if killed before these were written
        (out / f"c{i}.nii.gz").unlink()
    (out / "c4_probabilities.nii.gz").unlink()
    (out / ".c1.nii.gz.abc123.tmp.nii.gz").write_bytes(b"half a file")
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if not p.name.startswith(".")}
    written = predict = None
    from delineo.infer.run import predict_paths

    written = predict_paths(model, cases, out, probabilities=True, progress=False, skip_existing=True)
    assert sorted(p.name for p in written) == ["c1.nii.gz", "c4.nii.gz"]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in ref.iterdir())  # stale temp removed
    for p in out.iterdir():
        assert np.array_equal(np.asarray(nib.load(p).dataobj), np.asarray(nib.load(ref / p.name).dataobj)), p.name
        if p.name in mtimes and not p.name.startswith(("c1", "c4")):
            assert p.stat().st_mtime_ns == mtimes[p.name], f"{p.name} was rewritten"


def _small_disk(tmp_path: Path, size: str = "2m") -> Path | None:
    """A real small file system: a tmpfs mounted by the test (root only); None where not allowed."""
    mnt = tmp_path / f"disk_{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return None
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True)
    return mnt if res.returncode == 0 else None


@pytest.fixture
def disk(tmp_path: Path):
    mnt = _small_disk(tmp_path)
    if mnt is None:
        pytest.skip("cannot mount a tmpfs here; the RLIMIT_FSIZE test covers a full disk")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _fill(mnt: Path, leave: int) -> None:
    free = shutil.disk_usage(mnt).free
    with open(mnt / "filler.bin", "wb") as fh:
        fh.write(b"\1" * max(free - leave, 0))


def test_disk_full_while_writing_a_prediction(trained: Path, disk: Path, tmp_path: Path):
    model = trained / "runs/phantom/fold_0"
    rng = np.random.default_rng(5)
    image, _ = phantom_case(rng, shape=(96, 96, 64))  # float32 probabilities: about 7 MB, more than the disk
    nib.save(nib.Nifti1Image(image, np.eye(4)), tmp_path / "big.nii.gz")
    res = cli_here("predict", str(model), str(tmp_path / "big.nii.gz"), str(disk / "mask.nii.gz"), "--probabilities")
    one_sentence(res, "no space left", str(disk))
    assert sorted(p.name for p in disk.iterdir()) == []  # no partial output, no temporary file


@pytest.mark.soak
def test_disk_full_while_writing_a_checkpoint_keeps_the_previous(trained: Path, disk: Path):
    shutil.copytree(trained / "runs", disk / "runs")
    last = disk / "runs/phantom/fold_0/checkpoints/last.pt"
    before = last.read_bytes()
    exp = yaml.safe_load((trained / "exp.yaml").read_text())
    exp["train"]["epochs"] = 3
    (disk.parent / "exp3.yaml").write_text(yaml.safe_dump(exp))
    _fill(disk, leave=len(before) // 2)  # room for logs, not for a whole checkpoint
    res = cli("train", str(disk.parent / "exp3.yaml"), "--runs", str(disk / "runs"), "--resume", "-q", "--no-evaluate",
              "--cache", str(disk.parent / "cache"))
    one_sentence(res, "no space left")
    assert last.read_bytes() == before  # the previous checkpoint is intact and loads
    assert torch.load(last, weights_only=True)["state"]["epoch"] == 1
    leftovers = [p.name for p in last.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == [], leftovers
    # with space again, --resume finishes the run
    (disk / "filler.bin").unlink()
    res = cli("train", str(disk.parent / "exp3.yaml"), "--runs", str(disk / "runs"), "--resume", "-q", "--no-evaluate",
              "--cache", str(disk.parent / "cache"))
    assert res.returncode == 0, res.stderr
    assert torch.load(last, weights_only=True)["state"]["epoch"] == 3


def test_file_size_limit_while_writing_a_checkpoint(trained: Path, tmp_path: Path):
    """The same fault without a mount: RLIMIT_FSIZE makes every larger write fail with EFBIG."""
    import resource

    shutil.copytree(trained / "runs", tmp_path / "runs")
    last = tmp_path / "runs/phantom/fold_0/checkpoints/last.pt"
    before = last.read_bytes()
    exp = yaml.safe_load((trained / "exp.yaml").read_text())
    exp["train"]["epochs"] = 2
    (tmp_path / "exp2.yaml").write_text(yaml.safe_dump(exp))

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (len(before) // 2, len(before) // 2))

    # no coverage measurement in this one process: its data file at exit would hit the same limit
    env = {k: v for k, v in ENV.items() if k not in ("COVERAGE_PROCESS_CONFIG", "COVERAGE_PROCESS_START")}
    res = subprocess.run([sys.executable, "-m", "delineo.cli", "train", str(tmp_path / "exp2.yaml"), "--runs",
                          str(tmp_path / "runs"), "--resume", "-q", "--no-evaluate", "--cache",
                          str(trained / "runs/phantom/cache")], capture_output=True, text=True, env=env,
                         timeout=300, preexec_fn=limit)
    one_sentence(res, "no space left")
    assert last.read_bytes() == before
    assert [p.name for p in last.parent.iterdir() if p.name.startswith(".")] == []
