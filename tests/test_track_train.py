"""Training and the experiment database together: the database goes away mid-run (PostgreSQL
stopped, SQLite locked) and nothing is lost or slowed; kill -9 of a training mid-write leaves
an intact database that --resume completes; two trainings write at once; the overhead per
epoch; and the `delineo runs` workflow end to end."""

from __future__ import annotations

import csv
import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import yaml

from delineo.cli import main
from delineo.config import config_from_dict
from delineo.track import query as Q
from delineo.track.store import Store, resolve_url
from delineo.train.loop import Trainer, train
from tests.conftest import phantom_experiment, write_msd
from tests.track_pg import db_url, pg_url  # noqa: F401  (fixtures; pg_server comes from conftest)

ROOT = Path(__file__).resolve().parents[1]


def _raw(data: Path, name: str = "phantom", **train_opts) -> dict:
    raw = phantom_experiment(data, **{"iterations_per_epoch": 1, **train_opts})
    raw["name"] = name
    raw["data"]["folds"] = 4
    return raw


def _rows(run_dir: Path) -> int:
    try:
        with open(run_dir / "log.csv", newline="") as fh:
            return len(list(csv.DictReader(fh)))
    except FileNotFoundError:
        return 0


def _wait_rows(run_dir: Path, n: int, timeout: float = 300) -> None:
    t0 = time.time()
    while _rows(run_dir) < n:
        if time.time() - t0 > timeout:
            raise TimeoutError(f"{run_dir}: fewer than {n} epochs after {timeout} s")
        time.sleep(0.02)


def _session(url: str, run_dir: Path) -> tuple[Q.SessionInfo, dict]:
    store = Store(resolve_url(url))
    with store.engine.connect() as conn:
        s = Q.find_session(conn, str(run_dir))
        curves = Q.curves(conn, s.id)
    store.close()
    return s, curves


class _Outage:
    """Takes the database away (``down``) and gives it back (``up``): a stopped PostgreSQL
    server, or a SQLite file held under an exclusive lock by another connection."""

    def __init__(self, url: str, pg_server=None) -> None:
        self.url, self.pg, self.lock = url, pg_server, None

    def down(self) -> None:
        if self.pg is not None:
            self.pg.stop()
        else:
            self.lock = sqlite3.connect(self.url.removeprefix("sqlite:///"), isolation_level=None)
            self.lock.execute("BEGIN EXCLUSIVE")

    def up(self) -> None:
        if self.pg is not None:
            self.pg.start()
        else:
            self.lock.execute("ROLLBACK")
            self.lock.close()


@pytest.mark.parametrize("backend", [pytest.param("sqlite", marks=pytest.mark.soak), "postgresql"])
def test_database_outage_mid_training_loses_nothing_and_blocks_no_epoch(backend, tmp_path, monkeypatch, request):
    pg = request.getfixturevalue("pg_server") if backend == "postgresql" else None
    url = pg.new_database() if pg else f"sqlite:///{tmp_path / 'runs' / 'delineo.db'}"
    monkeypatch.setenv("DELINEO_DB", url)
    Store(resolve_url(url)).close()
    cfg = config_from_dict(_raw(write_msd(tmp_path / "phantom", n=8), epochs=10, iterations_per_epoch=2))
    run_dir = tmp_path / "runs" / "phantom" / "fold_0"
    outage = _Outage(url, pg)
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(run=train(cfg, tmp_path / "runs", 0, progress=False)))
    thread.start()
    try:
        _wait_rows(run_dir, 2)
        outage.down()
        _wait_rows(run_dir, 5)
    finally:
        outage.up()
    thread.join(300)
    assert result.get("run") == run_dir
    s, curves = _session(url, run_dir)
    assert (s.status, s.current_epoch) == ("finished", 10)
    assert sorted(curves["train_loss"]) == list(range(1, 11))
    assert not (run_dir / "track_pending.jsonl").exists()
    with open(run_dir / "log.csv", newline="") as fh:
        seconds = [float(r["seconds"]) for r in csv.DictReader(fh)]
    # epochs 3-5 ran while the database was away: no slower than the others by a database timeout
    assert max(seconds[2:5]) < max(seconds[:2] + seconds[5:]) + 3.0, seconds


def test_a_bad_database_url_never_stops_training(tmp_path, caplog):
    """An unusable database (here an unsupported one) costs the training nothing: the hook
    returns at once and the writes wait in the run folder's journal."""
    from delineo.track.tracker import start_tracker
    from delineo.track.writer import read_journal

    run_dir = tmp_path / "runs" / "exp" / "fold_0"
    run_dir.mkdir(parents=True)
    tracker = start_tracker(run_dir, {"name": "exp"}, 0, False, tmp_path / "runs", db="mysql://nowhere/db")
    t0 = time.perf_counter()
    for e in range(1, 4):
        tracker.epoch({"epoch": e - 1, "train_loss": 1.0 / e}, e)
    assert time.perf_counter() - t0 < 0.05
    tracker.close("finished", timeout=0.5)
    ops = read_journal(run_dir / "track_pending.jsonl")
    assert [o["op"] for o in ops] == ["session", "epoch", "epoch", "epoch", "status"]
    assert "unsupported database 'mysql'" in caplog.text


_KILLED_TRAINING = textwrap.dedent("""
    import sys, yaml
    from delineo.config import config_from_dict
    from delineo.train.loop import train
    train(config_from_dict(yaml.safe_load(open(sys.argv[1]))), sys.argv[2], 0, progress=False)
""")


@pytest.mark.soak
def test_kill_9_mid_write_leaves_an_intact_database_that_resume_completes(tmp_path, monkeypatch):
    """SQLite in WAL mode: a training killed while its writer thread writes leaves a database
    that passes integrity_check and holds whole transactions only; --resume fills the gaps."""
    runs = tmp_path / "runs"
    db = runs / "delineo.db"
    raw = _raw(write_msd(tmp_path / "phantom", n=8), epochs=40, checkpoint_every=1)
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("DELINEO_DB", str(db))  # for the killed process and the resume in this one
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_TRAINING, str(tmp_path / "exp.yaml"), str(runs)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_dir = runs / "phantom" / "fold_0"
    try:
        _wait_rows(run_dir, 4)
        time.sleep(0.15)  # somewhere inside an epoch and its background writes
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    done = _rows(run_dir)
    with sqlite3.connect(db) as c:
        assert c.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        per_epoch = dict(c.execute("SELECT epoch, COUNT(*) FROM epoch_metric GROUP BY epoch").fetchall())
        (status,) = c.execute("SELECT status FROM session").fetchone()
    assert status == "running"
    assert sorted(per_epoch) == list(range(1, len(per_epoch) + 1)) and len(per_epoch) <= done + 1
    assert len(set(per_epoch.values())) <= 2  # whole epochs only ('best' is logged on some epochs)
    train(config_from_dict(raw | {"train": {**raw["train"], "epochs": done + 2}}), runs, 0, resume=True,
          progress=False)
    s, curves = _session(str(db), run_dir)
    assert (s.status, s.current_epoch) == ("finished", done + 2)
    assert sorted(curves["train_loss"]) == list(range(1, done + 3))
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT COUNT(*) FROM session").fetchone() == (1,)
        kept = [r[0] for r in c.execute("SELECT epoch FROM checkpoint WHERE kind = 'epoch' ORDER BY epoch")]
    assert kept == list(range(1, done + 3))


def test_two_trainings_at_once_lose_nothing(db_url, tmp_path, monkeypatch):
    monkeypatch.setenv("DELINEO_DB", db_url)
    data = write_msd(tmp_path / "phantom", n=8)
    cfgs = [config_from_dict(_raw(data, name=f"twin{i}", epochs=6, checkpoint_every=2)) for i in range(2)]
    errors: list[BaseException] = []

    def run(cfg) -> None:
        try:
            train(cfg, tmp_path / "runs", 0, progress=False)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(c,)) for c in cfgs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors
    for i in range(2):
        run_dir = tmp_path / "runs" / f"twin{i}" / "fold_0"
        s, curves = _session(db_url, run_dir)
        assert (s.experiment, s.status, s.current_epoch) == (f"twin{i}", "finished", 6)
        with open(run_dir / "log.csv", newline="") as fh:
            logged = list(csv.DictReader(fh))
        for name in ("train_loss", "lr", "val_dice"):  # every value of log.csv is in the database
            assert [curves[name][e] for e in range(1, 7)] == pytest.approx([float(r[name]) for r in logged], rel=2e-5)


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.soak)])
def test_overhead_per_epoch(backend, tmp_path, monkeypatch, capsys, request):
    """What the database costs an epoch: the training thread only queues (well under a
    millisecond's worth of work per epoch); the writes happen on the background thread."""
    db_url = request.getfixturevalue("pg_url") if backend == "postgresql" else str(tmp_path / "runs" / "delineo.db")
    monkeypatch.setenv("DELINEO_DB", db_url)
    cfg = config_from_dict(_raw(write_msd(tmp_path / "phantom", n=8), epochs=10, checkpoint_every=1,
                                snapshot_every=1))
    trainer = Trainer(cfg, tmp_path / "runs", 0, progress=False)
    trainer.run()
    tracker = trainer.tracker
    per_epoch = tracker.seconds / tracker.epochs
    background = tracker.writer.write_seconds / tracker.epochs
    with capsys.disabled():
        print(f"\nexperiment database overhead: {1000 * per_epoch:.2f} ms per epoch in the training loop, "
              f"{1000 * background:.1f} ms per epoch written in the background ({backend}, 1 checkpoint + "
              "1 snapshot + 12 metrics per epoch)")
    assert tracker.epochs == 10 and per_epoch < 0.02


def test_runs_workflow(tmp_path, capsys, monkeypatch):
    """train --db, then list / show / best / compare / summary / export / delete --files / import."""
    monkeypatch.delenv("DELINEO_DB", raising=False)  # `train --db` sets it for the process; restored after
    data = write_msd(tmp_path / "phantom", n=8)
    runs, db = tmp_path / "runs", tmp_path / "team.db"
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump(_raw(data, epochs=3)))
    base = ["--runs", str(runs), "--db", str(db)]
    assert main(["runs", "create", str(exp), "--description", "ellipsoids", *base]) == 0
    with Store(resolve_url(str(db))) as store, store.engine.connect() as conn:
        from sqlalchemy import text

        assert conn.execute(text("SELECT name, description FROM experiment")).all() == [("phantom", "ellipsoids")]
    assert main(["-q", "train", str(exp), "--fold", "0", *base]) == 0
    assert main(["-q", "train", str(exp), "--fold", "1", "--no-evaluate", *base, "--set", "train.epochs=4"]) == 0
    capsys.readouterr()

    assert main(["runs", "list", *base, "--fold", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and out[1].split()[:5] == ["2", "phantom", "1", "finished", "4"]

    assert main(["runs", "show", str(runs / "phantom" / "fold_0"), *base]) == 0
    out = capsys.readouterr().out
    assert "run 1 " in out and "best epoch per metric" in out and "evaluation (mean over cases)" in out
    assert "report" in out and "last.pt" in out

    log0 = list(csv.DictReader(open(runs / "phantom" / "fold_0" / "log.csv")))
    log1 = list(csv.DictReader(open(runs / "phantom" / "fold_1" / "log.csv")))
    best_dice = max(float(r["val_dice"]) for r in log0 + log1)
    assert main(["runs", "best", *base]) == 0
    assert f"val_dice {best_dice:.6g} (max)" in capsys.readouterr().out
    assert main(["runs", "best", "--metric", "train_loss", *base]) == 0
    assert "(min)" in capsys.readouterr().out
    assert main(["runs", "best", "--metric", "mystery", *base]) == 2
    assert "pass --max or --min" in capsys.readouterr().err

    png = tmp_path / "cmp.png"
    assert main(["runs", "compare", "1", "2", "--out", str(png), *base]) == 0
    out = capsys.readouterr().out
    assert "best val_dice" in out and png.stat().st_size > 5000
    assert main(["runs", "summary", "phantom", "--out", str(tmp_path / "summary"), *base]) == 0
    assert "best epoch per metric" in capsys.readouterr().out
    summary = list(csv.DictReader(open(tmp_path / "summary" / "summary.csv")))
    first = [r for r in summary if r["metric"] == "train_loss" and r["epoch"] == "1"][0]
    assert first["n"] == "2" and float(first["std"]) >= 0 and (tmp_path / "summary" / "summary.png").is_file()

    assert main(["runs", "export", "--out", str(tmp_path / "epochs.csv"), *base]) == 0
    exported = list(csv.DictReader(open(tmp_path / "epochs.csv")))
    assert len(exported) == 7 and {r["run"] for r in exported} == {"1", "2"}
    assert main(["runs", "export", "--what", "evaluations", "--out", str(tmp_path / "ev.csv"), *base]) == 0
    assert any(r["metric"] == "dice" for r in csv.DictReader(open(tmp_path / "ev.csv")))

    # a fresh database filled from the folders: the same runs, and importing twice adds nothing
    fresh = ["--runs", str(runs), "--db", str(tmp_path / "fresh.db")]
    for _ in range(2):
        assert main(["runs", "import", str(runs), *fresh]) == 0
    capsys.readouterr()
    assert main(["runs", "export", "--out", str(tmp_path / "again.csv"), *fresh]) == 0
    again = list(csv.DictReader(open(tmp_path / "again.csv")))
    assert len(again) == 7
    assert [float(r["train_loss"]) for r in again] == pytest.approx([float(r["train_loss"]) for r in exported],
                                                                     rel=1e-5)  # log.csv keeps 6 digits

    assert main(["runs", "list", "--metric", "val_f1", *base]) == 0  # no classifier here
    assert "no runs in the experiment database that match" in capsys.readouterr().out
    monkeypatch.delenv("DELINEO_DB", raising=False)
    assert main(["runs", "list", "--runs", str(tmp_path / "nowhere")]) == 2
    assert "no experiment database here yet" in capsys.readouterr().err
    assert not (tmp_path / "nowhere").exists()

    monkeypatch.setenv("DELINEO_DB", str(db))  # a later `delineo evaluate` of a run folder records its scores
    assert main(["-q", "evaluate", str(runs / "phantom" / "fold_1")]) == 0
    capsys.readouterr()
    assert main(["runs", "show", "2", *base]) == 0
    assert "evaluation (mean over cases)" in capsys.readouterr().out

    model = tmp_path / "model.delineo"
    model.write_bytes(b"stand-in model file")
    assert main(["runs", "attach", str(model), "--run", "1", *base]) == 0
    assert "recorded as delineo, sha256 " + hashlib.sha256(b"stand-in model file").hexdigest() in capsys.readouterr().out
    assert main(["runs", "show", "1", *base]) == 0
    assert "model.delineo" in capsys.readouterr().out

    assert main(["runs", "delete", "2", "--files", *base]) == 0
    assert not (runs / "phantom" / "fold_1").exists()
    capsys.readouterr()
    assert main(["runs", "list", *base]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


@pytest.mark.soak
def test_torchrun_records_one_session_from_rank_0(tmp_path):
    """Two processes under torchrun: only rank 0 writes, so one session with each epoch once, and
    one TensorBoard event file."""
    import socket

    data = write_msd(tmp_path / "data", n=8)
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(phantom_experiment(data, epochs=3, iterations_per_epoch=2)))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    db = tmp_path / "ddp.db"
    res = subprocess.run([str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node=2", f"--master_port={port}",
                          "-m", "delineo.cli", "train", str(tmp_path / "exp.yaml"), "--runs", str(tmp_path / "runs"),
                          "--db", str(db), "--no-evaluate", "-q", "--mirror", "tensorboard"],
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=500)
    assert res.returncode == 0, res.stderr[-2000:]
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT status, current_epoch FROM session").fetchall() == [("finished", 3)]
        assert c.execute("SELECT epoch, COUNT(*) FROM epoch_metric WHERE name = 'train_loss' GROUP BY epoch"
                         ).fetchall() == [(1, 1), (2, 1), (3, 1)]
    # the TensorBoard mirror too: one writer (one event file), each epoch once
    events = list((tmp_path / "runs" / "phantom" / "fold_0" / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1, events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[0]))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train_loss")] == [1, 2, 3]
