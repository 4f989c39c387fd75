"""Mirrors of the experiment database: a real training with TensorBoard and MLflow switched on,
read back with each tool's own reader (TensorBoard's EventAccumulator, MlflowClient) and
compared with log.csv; --resume continues the same MLflow run; an MLflow server that is not
there costs one warning and nothing else; a missing package names the extra to install."""

from __future__ import annotations

import csv
import importlib.util
import json
import logging
import socket
import sys
import time
from pathlib import Path

import pytest
import yaml

from delineo.cli import main
from delineo.config import config_from_dict
from delineo.errors import ConfigError
from delineo.track.mirrors import EXTRA
from delineo.track.store import Store, resolve_url
from delineo.train.loop import Trainer, train
from tests.conftest import phantom_experiment, write_msd

# the 'mirrors' extra is part of the 'test' extra; without it only the round trips are skipped
needs_mirrors = pytest.mark.skipif(not all(importlib.util.find_spec(m) for m in ("tensorboard", "mlflow")),
                                   reason="pip install 'delineo[mirrors]'")


def _raw(data: Path, epochs: int, **track) -> dict:
    raw = phantom_experiment(data, epochs=epochs, iterations_per_epoch=1)
    raw["data"]["folds"] = 4
    raw["track"] = track
    return raw


def _log(run_dir: Path) -> list[dict[str, float]]:
    with open(run_dir / "log.csv", newline="") as fh:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(fh)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tensorboard_scalars(folder: Path) -> tuple[dict[str, dict[int, float]], object]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}, acc


def _database_epochs(db: Path, run_dir: Path) -> tuple[object, dict[str, dict[int, float]]]:
    from delineo.track import query as Q

    store = Store(resolve_url(str(db)))
    with store.engine.connect() as conn:
        s = Q.find_session(conn, str(run_dir))
        curves = Q.curves(conn, s.id)
    store.close()
    return s, curves


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory):
    """Two epochs with both mirrors, then --resume to three, then the evaluation: what each mirror
    holds, and the per-epoch overhead of each. MLflow writes to a folder store here (its default SQLite store
    spends 5 to 15 s creating its tables: see the soak test below)."""
    tmp = tmp_path_factory.mktemp("mirrors")
    runs, db = tmp / "runs", tmp / "runs" / "delineo.db"
    mp = pytest.MonkeyPatch()
    mp.setenv("DELINEO_DB", str(db))
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    store = (tmp / "mlruns").as_uri()
    raw = _raw(write_msd(tmp / "phantom", n=8), epochs=2, mirrors=["tensorboard", "mlflow"], mlflow_uri=store)
    t0 = time.perf_counter()
    first = Trainer(config_from_dict(raw), runs, 0, progress=False)
    first.run()
    first_seconds = time.perf_counter() - t0
    raw["train"]["epochs"] = 3
    trainer = Trainer(config_from_dict(raw), runs, 0, resume=True, progress=False)
    trainer.run()
    from delineo.evaluate.run import evaluate_run
    from delineo.track.tracker import record_evaluation

    evaluate_run(trainer.run_dir, progress=False)  # what `delineo train` does next
    record_evaluation(trainer.run_dir, runs)
    mp.undo()
    return {"runs": runs, "db": db, "run_dir": runs / "phantom" / "fold_0", "trackers": [first.tracker, trainer.tracker],
            "first_seconds": first_seconds, "mlflow_uri": store}


@needs_mirrors
def test_tensorboard_holds_log_csv_per_epoch_and_the_config(mirrored):
    run_dir = mirrored["run_dir"]
    logged = _log(run_dir)
    assert len(logged) == 3
    scalars, acc = _tensorboard_scalars(run_dir / "tensorboard")
    for name in ("train_loss", "lr", "val_dice", "seconds"):
        # step = epochs done (log.csv's epoch + 1); each epoch once although the run was resumed
        assert sorted(scalars[name]) == [1, 2, 3], name
        assert [scalars[name][int(r["epoch"]) + 1] for r in logged] == pytest.approx([r[name] for r in logged],
                                                                                      rel=2e-5), name
    from tensorboard.plugins.hparams import plugin_data_pb2

    hp = acc.PluginTagToContent("hparams")
    start = next(plugin_data_pb2.HParamsPluginData.FromString(c) for c in hp.values()
                 if plugin_data_pb2.HParamsPluginData.FromString(c).HasField("session_start_info"))
    values = start.session_start_info.hparams
    assert values["model.name"].string_value == "unet" and values["train.epochs"].string_value in ("2", "3")
    texts = {e.step: e.tensor_proto.string_val[0].decode() for e in acc.Tensors("files/text_summary")}
    assert f"delineo.checkpoint.best: {run_dir / 'checkpoints' / 'best.pt'}" in texts[3]
    assert f"delineo.report: {run_dir / 'report.html'}" in texts[3]
    summary = json.loads((run_dir / "metrics" / "summary.json").read_text())
    assert scalars["eval.mean_dice"] == pytest.approx({3: summary["mean_dice"]}, rel=1e-6)


def _mlflow_run(uri: str, experiment: str = "phantom"):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    found = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(found) == 1  # one session, one MLflow run (--resume continues it)
    return client, found[0]


def _same_history(client, run, run_dir: Path) -> None:
    logged = _log(run_dir)
    for name in ("train_loss", "lr", "val_dice", "seconds"):
        history = client.get_metric_history(run.info.run_id, name)
        assert sorted(m.step for m in history) == list(range(1, len(logged) + 1)), name
        by_step = {m.step: m.value for m in history}
        assert [by_step[int(r["epoch"]) + 1] for r in logged] == pytest.approx([r[name] for r in logged],
                                                                                rel=2e-5), name  # log.csv: 6 digits


@needs_mirrors
def test_mlflow_holds_log_csv_per_epoch_params_and_tags(mirrored):
    run_dir, runs = mirrored["run_dir"], mirrored["runs"]
    client, run = _mlflow_run(mirrored["mlflow_uri"])
    _same_history(client, run, run_dir)
    params = run.data.params
    assert params["model.name"] == "unet" and params["sampling.patch_size"] == "[24, 28]"
    assert params["train.epochs"] == "2"  # MLflow params never change; the database has the resumed config
    assert params["track.mirrors"] == '["tensorboard", "mlflow"]'
    assert run.info.status == "FINISHED" and run.info.run_name == "phantom/fold_0"
    tags = run.data.tags
    assert tags["delineo.checkpoint.last"] == str(run_dir / "checkpoints" / "last.pt")
    assert tags["delineo.status"] == "finished" and Path(tags["delineo.log"]).is_file()
    assert tags["delineo.report"] == str(run_dir / "report.html")
    summary = json.loads((run_dir / "metrics" / "summary.json").read_text())
    (dice,) = client.get_metric_history(run.info.run_id, "eval.mean_dice")
    assert (dice.step, dice.value) == (3, pytest.approx(summary["mean_dice"], rel=1e-12))
    label, stats = next(iter(summary["labels"].items()))
    assert run.data.metrics[f"eval.{label}.dice"] == pytest.approx(stats["dice"]["mean"], rel=1e-12)
    s, _ = _database_epochs(mirrored["db"], run_dir)
    assert tags["delineo.session"] == s.uid
    assert not (runs / "mlflow.db").exists()  # track.mlflow_uri chose the store


@pytest.mark.soak
@needs_mirrors
def test_mlflow_default_store_is_sqlite_beside_the_runs(tmp_path, monkeypatch):
    """`delineo train --mirror mlflow` with nothing else set: runs/mlflow.db, artefact root in the
    runs folder (none in the working folder), the same history as log.csv. 13 to 26 s on 2 busy
    cores (soak), most of it MLflow creating its tables."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump(_raw(write_msd(tmp_path / "phantom", n=8), epochs=2)))
    assert main(["-q", "train", str(exp), "--runs", "runs", "--no-evaluate", "--mirror", "mlflow"]) == 0
    run_dir = (tmp_path / "runs" / "phantom" / "fold_0").resolve()
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["track"]["mirrors"] == ["mlflow"]
    client, run = _mlflow_run(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    _same_history(client, run, run_dir)
    assert run.info.artifact_uri.startswith((tmp_path / "runs" / "mlflow-artifacts").resolve().as_uri())
    assert not (tmp_path / "mlruns").exists()


@needs_mirrors
def test_mirror_overhead_per_epoch(mirrored, capsys):
    """What each mirror costs an epoch: the training thread only queues; the writes (measured on
    the mirror's thread) happen in the background."""
    trackers = mirrored["trackers"]
    lines = []
    for name in ("tensorboard", "mlflow"):
        threads = [t for tr in trackers for part in tr.parts if hasattr(part, "threads") for t in part.threads
                   if t.cls.name == name]
        epochs = sum(t.epochs for t in threads)
        assert epochs == 3 and sum(t.delivered_epochs for t in threads) == 3
        loop_ms = 1000 * sum(t.submit_seconds for t in threads) / epochs
        background_ms = 1000 * sum(t.epoch_seconds for t in threads) / epochs
        lines.append(f"{name} {loop_ms:.3f} ms in the training loop, {background_ms:.1f} ms in the background")
        assert loop_ms < 20  # as the database's own hook (tests/test_track_train.py); 0.02 to 3 ms measured
    with capsys.disabled():
        print("\nmirror overhead per epoch: " + "; ".join(lines))


@needs_mirrors
def test_an_unreachable_mlflow_server_costs_one_warning_and_nothing_else(tmp_path, monkeypatch, caplog):
    runs, db = tmp_path / "runs", tmp_path / "runs" / "delineo.db"
    monkeypatch.setenv("DELINEO_DB", str(db))
    url = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    cfg = config_from_dict(_raw(write_msd(tmp_path / "phantom", n=8), epochs=3, mirrors=["mlflow"], mlflow_uri=url))
    caplog.set_level(logging.INFO, logger="delineo")
    t0 = time.perf_counter()
    run_dir = train(cfg, runs, 0, progress=False)
    took = time.perf_counter() - t0
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"mlflow mirror {url} cannot write (") and "training goes on" in warnings[0]
    assert len(_log(run_dir)) == 3
    s, curves = _database_epochs(db, run_dir)
    assert (s.status, s.current_epoch) == ("finished", 3) and sorted(curves["train_loss"]) == [1, 2, 3]
    assert took < 120  # no MLflow retry ladder in the way (the end waits 2 s for a failing mirror)


def test_a_missing_package_names_the_extra(tmp_path, monkeypatch, caplog):
    """The package cannot be imported (sys.modules[name] = None is how Python marks a module that
    must not import): one warning sentence naming the extra, and the database still records."""
    from delineo.track.tracker import start_tracker

    monkeypatch.setitem(sys.modules, "mlflow", None)
    run_dir = tmp_path / "runs" / "exp" / "fold_0"
    run_dir.mkdir(parents=True)
    config = {"name": "exp", "track": {"mirrors": ["mlflow"]}}
    tracker = start_tracker(run_dir, config, 0, False, tmp_path / "runs", db=str(tmp_path / "runs" / "d.db"))
    tracker.epoch({"epoch": 0, "train_loss": 0.5}, 1)
    tracker.close("finished")
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [f"mlflow mirror off for this run: the 'mlflow' package is not installed; install it with {EXTRA}"]
    s, curves = _database_epochs(tmp_path / "runs" / "d.db", run_dir)
    assert curves["train_loss"] == {1: 0.5}


def test_an_unknown_mirror_is_refused_in_one_sentence(tmp_path, capsys):
    data = write_msd(tmp_path / "phantom", n=4)
    with pytest.raises(ConfigError, match=r"track\.mirrors: .*unknown mirror 'tensorbord' \(did you mean "
                                          r"'tensorboard'\?\); known: mlflow, tensorboard"):
        config_from_dict(_raw(data, epochs=1, mirrors=["tensorbord"]))
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump(_raw(data, epochs=1)))
    with pytest.raises(SystemExit) as exc:
        main(["train", str(exp), "--mirror", "mlfow"])
    assert exc.value.code == 2 and "invalid choice: 'mlfow'" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


@needs_mirrors
def test_mirrors_work_with_the_database_off(tmp_path):
    """DELINEO_DB=off turns the database off, not the mirrors: the scalars still arrive."""
    from delineo.track.tracker import start_tracker

    run_dir = tmp_path / "runs" / "exp" / "fold_0"
    run_dir.mkdir(parents=True)
    tracker = start_tracker(run_dir, {"name": "exp", "track": {"mirrors": ["tensorboard"]}}, 0, False,
                            tmp_path / "runs", db="off")
    for e in (1, 2):
        tracker.epoch({"epoch": e - 1, "train_loss": 1.0 / e}, e)
    tracker.close("finished")
    scalars, _ = _tensorboard_scalars(run_dir / "tensorboard")
    assert scalars["train_loss"] == {1: 1.0, 2: 0.5}
    assert not (tmp_path / "runs" / "delineo.db").exists()
