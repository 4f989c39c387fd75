"""The seven scenarios of the original framework's experiment database, on real trainings, on
SQLite and on a real PostgreSQL server: create an experiment; run 1 epoch; run 10; continue 5
more (current epoch 15); a new session saving every epoch (10 checkpoints, 10 prediction
snapshots); saving every 2 epochs (records at 2, 4, 6, 8, 10); a second experiment with
different metrics. Epochs are one iteration each, so the whole story trains in seconds."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from delineo.config import config_from_dict
from delineo.track import query as Q
from delineo.track import schema as S
from delineo.track.folders import config_hash
from delineo.track.store import Store, create_experiment
from delineo.track.writer import sha256_file
from delineo.train.loop import train
from tests.conftest import phantom_experiment, write_msd
from tests.track_pg import db_url, pg_url  # noqa: F401  (fixtures; pg_server comes from conftest)


def _cfg(data: Path, name: str = "phantom", **train_opts):
    raw = phantom_experiment(data, iterations_per_epoch=1, **train_opts)
    raw["name"] = name
    raw["data"]["folds"] = 4
    return config_from_dict(raw)


def _session(store: Store, run_dir: Path) -> Q.SessionInfo:
    with store.engine.connect() as conn:
        return Q.find_session(conn, str(run_dir))


def _epochs(store: Store, s: Q.SessionInfo, metric: str = "train_loss") -> list[int]:
    with store.engine.connect() as conn:
        return sorted(Q.curves(conn, s.id, [metric]).get(metric, {}))


def _files(store: Store, s: Q.SessionInfo, kind: str) -> dict[str, list[dict]]:
    with store.engine.connect() as conn:
        f = Q.files(conn, s.id)
    return {"checkpoints": [c for c in f["checkpoints"] if c["kind"] == kind],
            "predictions": [p for p in f["predictions"] if p["kind"] == kind]}


def test_the_seven_scenarios(db_url, tmp_path, monkeypatch):
    monkeypatch.setenv("DELINEO_DB", db_url)
    data = write_msd(tmp_path / "phantom", n=8)
    runs = tmp_path / "runs"
    store = Store(db_url)

    # 1. create an experiment
    cfg = _cfg(data, epochs=1)
    eid = create_experiment(store, "phantom", cfg.to_dict(), "phantom ellipsoids, 2D U-Net")
    with store.engine.connect() as conn:
        exp = conn.execute(select(S.Experiment).where(S.Experiment.id == eid)).one()
    assert (exp.name, exp.description, exp.config_hash) == ("phantom", "phantom ellipsoids, 2D U-Net",
                                                            config_hash(cfg.to_dict()))

    # 2. run 1 epoch
    a = _session(store, train(cfg, runs, 0, progress=False))
    assert (a.experiment, a.fold, a.status, a.current_epoch) == ("phantom", 0, "finished", 1)
    assert _epochs(store, a) == [1] and a.config_hash == exp.config_hash and a.host and a.versions["torch"]

    # 3. run 10
    run_b = train(_cfg(data, epochs=10, val_every=20), runs, 1, progress=False)  # validates the last epoch only
    b = _session(store, run_b)
    assert (b.status, b.current_epoch, _epochs(store, b)) == ("finished", 10, list(range(1, 11)))

    # 4. continue 5 more: the same session, current epoch 15
    train(_cfg(data, epochs=15, val_every=20), runs, 1, resume=True, progress=False)
    b2 = _session(store, run_b)
    assert b2.id == b.id and (b2.status, b2.current_epoch) == ("finished", 15)
    assert _epochs(store, b2) == list(range(1, 16)) and _epochs(store, b2, "val_dice") == [10, 15]
    with store.engine.connect() as conn:
        assert len(Q.sessions(conn, experiment="phantom")) == 2

    # 5. a new session saving every epoch: 10 checkpoints and 10 prediction snapshots
    run_c = train(_cfg(data, epochs=10, checkpoint_every=1, snapshot_every=1), runs, 2, progress=False)
    c = _session(store, run_c)
    kept = _files(store, c, "epoch")["checkpoints"]
    snaps = _files(store, c, "snapshot")["predictions"]
    assert sorted(k["epoch"] for k in kept) == list(range(1, 11))
    assert sorted(p["epoch"] for p in snaps) == list(range(1, 11))
    for k in kept:  # each record names a real file with its checksum
        assert Path(k["path"]).name == f"epoch_{k['epoch']:04d}.pt" and k["sha256"] == sha256_file(Path(k["path"]))
    for p in snaps:  # snapshot folders keep log.csv's 0-based names: epoch N is folder epoch_{N-1}
        assert Path(p["path"]).name == f"epoch_{p['epoch'] - 1:04d}" and p["n_files"] == 2

    # 6. saving every 2 epochs: records at 2, 4, 6, 8, 10
    run_d = train(_cfg(data, epochs=10, checkpoint_every=2, snapshot_every=2), runs, 3, progress=False)
    d = _session(store, run_d)
    assert sorted(k["epoch"] for k in _files(store, d, "epoch")["checkpoints"]) == [2, 4, 6, 8, 10]
    assert sorted(p["epoch"] for p in _files(store, d, "snapshot")["predictions"]) == [2, 4, 6, 8, 10]
    assert sorted(p.name for p in (run_d / "checkpoints").glob("epoch_*.pt")) == [
        f"epoch_{e:04d}.pt" for e in (2, 4, 6, 8, 10)]

    # 7. a second experiment with different metrics (a classifier: F1 and accuracy, no Dice)
    cls = phantom_experiment(data, iterations_per_epoch=1, epochs=2, task="classification",
                             optimizer={"name": "adam", "lr": 1e-3})
    cls.update(name="phantom_cls", model={"name": "classifier", "backbone": "resnet18", "out_channels": 1},
               loss={"name": "soft_f1"})
    cls["data"]["folds"] = 4
    e2 = _session(store, train(config_from_dict(cls), runs, 0, progress=False))
    with store.engine.connect() as conn:
        names = set(Q.metric_names(conn, [e2.id]))
        assert {"val_f1", "val_accuracy", "val_balanced_accuracy"} <= names and "val_dice" not in names
        assert "val_f1" not in Q.metric_names(conn, [a.id, b.id, c.id, d.id])
        best_cls = Q.best_run(conn, "val_f1", experiment="phantom_cls")
        assert best_cls is not None and best_cls[0].id == e2.id
        assert Q.best_run(conn, "val_dice", experiment="phantom_cls") is None
        best = Q.best_run(conn, "val_dice", experiment="phantom")
        assert best is not None and best[0].id in {a.id, b.id, c.id, d.id}
        # across the sessions of one experiment: per-epoch mean/std; 4 sessions reached epoch 1, one epoch 15
        runs_of, stats = Q.experiment_stats(conn, "phantom")
        assert len(runs_of) == 4 and stats["train_loss"][1][2] == 4 and stats["train_loss"][15][2] == 1
        assert stats["val_dice"][10][2] == 3 and stats["val_dice"][10][1] >= 0  # sessions b, c, d validated epoch 10
        assert [e.name for e in conn.execute(select(S.Experiment).order_by(S.Experiment.id))] == [
            "phantom", "phantom_cls"]
    store.close()
