"""Training faults (soak, ``make soak``): ``kill -9`` at many random moments (start-up, data
loading, forward/backward, checkpoint writes, validation, evaluation and report writing), each
followed by ``--resume``; no file is ever corrupt and the final weights equal an uninterrupted
run's bit for bit. And a ``torchrun`` job whose worker is killed stops cleanly with its last
checkpoint intact."""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from .conftest import phantom_experiment, write_msd

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
KILLS = int(os.environ.get("DELINEO_SOAK_KILLS", "20"))


def _cmd(exp: Path, runs: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "delineo.cli", "train", str(exp), "--runs", str(runs), "-q", *extra]


def _check_intact(run: Path) -> None:
    """Whatever a kill left must be complete: checkpoints load safely, CSV/JSON files parse."""
    for name in ("last.pt", "best.pt"):
        p = run / "checkpoints" / name
        if p.exists():
            ckpt = torch.load(p, weights_only=True)
            assert "model_state" in ckpt and "state" in ckpt, p
    for p in run.rglob("*.csv"):
        if not p.name.startswith("."):
            with open(p, newline="") as fh:
                rows = list(csv.reader(fh))
            assert rows and len({len(r) for r in rows}) == 1, p
    for p in run.rglob("*.json"):
        if not p.name.startswith("."):
            json.loads(p.read_text())


@pytest.mark.soak
@pytest.mark.timeout(7200)
def test_kill_9_at_random_moments_then_resume_is_bit_identical(tmp_path: Path):
    data = write_msd(tmp_path / "data", n=8)
    exp = phantom_experiment(data, epochs=4, iterations_per_epoch=12)
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(exp))
    t0 = time.perf_counter()
    ref = subprocess.run(_cmd(tmp_path / "exp.yaml", tmp_path / "ref"), env=ENV, capture_output=True, text=True,
                         timeout=900)
    duration = time.perf_counter() - t0
    assert ref.returncode == 0, ref.stderr
    rng = random.Random(12)
    runs = tmp_path / "cut"
    run = runs / "phantom" / "fold_0"
    epochs = exp["train"]["epochs"]
    kills, finished_early, chains = [], 0, 0

    def finish_chain() -> None:
        """Resume the chain to the end: intact files, the reference's weights, a report; then start over."""
        nonlocal chains
        final = subprocess.run(_cmd(tmp_path / "exp.yaml", runs, "--resume"), env=ENV, capture_output=True,
                               text=True, timeout=900)
        assert final.returncode == 0, final.stderr
        _check_intact(run)
        _assert_same_weights(tmp_path / "ref/phantom/fold_0", run)
        assert (run / "report.html").is_file() and (run / "metrics" / "summary.json").is_file()
        rows = (run / "log.csv").read_text().splitlines()
        assert len(rows) == epochs + 1, rows
        chains += 1
        shutil.rmtree(runs)

    while len(kills) < KILLS:
        proc = subprocess.Popen(_cmd(tmp_path / "exp.yaml", runs, "--resume"), env=ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        at = rng.uniform(0.2, duration)
        try:
            proc.wait(timeout=at)
            finished_early += 1  # finished before the kill: check this chain, then start over
            assert proc.returncode == 0, proc.stderr.read()
            _assert_same_weights(tmp_path / "ref/phantom/fold_0", run)
            shutil.rmtree(runs)
            continue
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        epoch = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["state"]["epoch"] \
            if (run / "checkpoints" / "last.pt").exists() else 0
        kills.append((round(at, 2), epoch))
        _check_intact(run)
        print(f"kill {len(kills)}: after {at:.1f} s, last.pt at epoch {epoch}, files intact", flush=True)
        if epoch >= epochs:  # training was over: the kill hit evaluation or report writing; a new chain
            finish_chain()   # starts, so later kills land in start-up and training again
    if run.exists():
        finish_chain()
    stages = {"start-up or first epoch (no last.pt)": sum(e == 0 for _, e in kills),
              "training/validation": sum(0 < e < epochs for _, e in kills),
              "evaluation/report": sum(e >= epochs for _, e in kills)}
    print(f"\nkill -9 soak: {len(kills)} kills survived (time s, epoch in last.pt): {kills}; by stage {stages}; "
          f"{chains} chain(s) resumed to the end and {finished_early} finished before a kill, each bit-identical "
          f"to the reference; reference run {duration:.1f} s")
    assert len({e for _, e in kills}) >= 2, "kills should land at several stages"


def _assert_same_weights(ref: Path, run: Path) -> None:
    a = torch.load(ref / "checkpoints" / "last.pt", weights_only=True)["model_state"]
    b = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model_state"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.soak
@pytest.mark.timeout(1800)
def test_torchrun_worker_killed_stops_cleanly_with_checkpoint_intact(tmp_path: Path):
    data = write_msd(tmp_path / "data", n=8)
    exp = phantom_experiment(data, epochs=200, iterations_per_epoch=10)
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(exp))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(_free_port()),
           "-m", "delineo.cli", "train", str(tmp_path / "exp.yaml"), "--runs", str(tmp_path / "runs"), "-q",
           "--no-evaluate"]
    proc = subprocess.Popen(cmd, env={**ENV, "DELINEO_DDP_BACKEND": "gloo"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    last = tmp_path / "runs/phantom/fold_0/checkpoints/last.pt"
    deadline = time.time() + 300
    while time.time() < deadline and not (last.exists() and
                                          torch.load(last, weights_only=True)["state"]["epoch"] >= 2):
        time.sleep(0.5)
    assert last.exists(), "no checkpoint before the kill"
    workers = _children(proc.pid)
    assert len(workers) == 2, workers
    before = torch.load(last, weights_only=True)["state"]["epoch"]
    os.kill(workers[-1], signal.SIGKILL)  # one worker dies, the agent and the other stay
    t_kill = time.time()
    try:
        out, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    stop_s = time.time() - t_kill
    assert proc.returncode != 0, out[-2000:]
    assert not any(Path(f"/proc/{pid}").exists() and _state(pid) != "Z" for pid in workers), "a worker outlived the job"
    ckpt = torch.load(last, weights_only=True)  # intact and safe to load
    assert ckpt["state"]["epoch"] >= before
    _check_intact(last.parents[1])
    # and the run resumes from it in one process
    res = subprocess.run(_cmd(tmp_path / "exp.yaml", tmp_path / "runs", "--resume", "--no-evaluate", "--set",
                              f"train.epochs={ckpt['state']['epoch'] + 1}"), env=ENV, capture_output=True, text=True,
                         timeout=600)
    print(f"\ntorchrun: worker killed at epoch {before}, job stopped in {stop_s:.1f} s (exit {proc.returncode}); "
          f"resume: exit {res.returncode}")
    assert res.returncode == 0, res.stderr
    assert torch.load(last, weights_only=True)["state"]["epoch"] == ckpt["state"]["epoch"] + 1


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return sorted(out)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"
