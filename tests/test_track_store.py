"""The experiment database layer: URLs, schema creation and upgrade, idempotent writes,
concurrent writers and a writer that outlives a database outage (SQLite and a real PostgreSQL)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from delineo.track import query as Q
from delineo.track import schema as S
from delineo.track.store import Store, StoreError, make_engine, migrate, resolve_url
from delineo.track.writer import BufferedWriter

from tests.track_pg import db_url, pg_url  # noqa: F401  (fixtures; pg_server comes from conftest)

ROOT = Path(__file__).resolve().parents[1]


def _count(store: Store, table) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar())


def _session(uid="u1", experiment="exp", fold=0, status="running"):
    return {"op": "session", "uid": uid, "experiment": experiment, "config": {"name": experiment}, "fold": fold,
            "status": status}


def _epoch(uid, epoch, n=5):
    return {"op": "epoch", "uid": uid, "epoch": epoch, "metrics": {f"m{i}": epoch + i / 10 for i in range(n)}}


def test_url_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv("DELINEO_DB", raising=False)
    assert resolve_url(None, tmp_path / "runs") == f"sqlite:///{(tmp_path / 'runs' / 'delineo.db').resolve()}"
    assert resolve_url(str(tmp_path / "x.db")) == f"sqlite:///{tmp_path / 'x.db'}"
    assert resolve_url("postgres://u:p@h:5/db") == "postgresql+psycopg://u:p@h:5/db"
    assert resolve_url("postgresql://h/db") == "postgresql+psycopg://h/db"
    assert resolve_url("off") is None
    monkeypatch.setenv("DELINEO_DB", "postgresql://team/db")
    assert resolve_url(None, tmp_path) == "postgresql+psycopg://team/db"
    with pytest.raises(StoreError, match="unsupported database 'mysql'"):
        make_engine("mysql://h/db")


def test_migrations_build_exactly_the_models(db_url):
    """A database built by the Alembic revisions matches the SQLAlchemy models (no drift)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    engine = make_engine(db_url)
    with engine.begin() as conn:
        migrate(conn, "head")
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), S.Base.metadata)
    engine.dispose()
    assert diff == []


def test_database_of_the_first_revision_is_upgraded_with_its_rows(db_url):
    engine = make_engine(db_url)
    with engine.begin() as conn:
        migrate(conn, "0001")
        now = "2026-01-01 10:00:00"
        conn.execute(text("INSERT INTO experiment (id, name, created) VALUES (1, 'old', :t)"), {"t": now})
        conn.execute(text("INSERT INTO session (id, uid, experiment_id, fold, status, created, modified, current_epoch)"
                          " VALUES (1, 'old-uid', 1, 2, 'finished', :t, :t, 2)"), {"t": now})
        for e, v in ((1, 0.5), (2, 0.7)):
            conn.execute(text("INSERT INTO epoch_metric (session_id, epoch, name, value, logged) "
                              "VALUES (1, :e, 'val_dice', :v, :t)"), {"e": e, "v": v, "t": now})
        conn.execute(text("INSERT INTO checkpoint (session_id, epoch, path, sha256, created) "
                          "VALUES (1, 2, '/old/epoch_0002.pt', 'ab', :t)"), {"t": now})
        conn.execute(text("INSERT INTO prediction (session_id, epoch, path, created) VALUES (1, 2, '/old/p', :t)"),
                     {"t": now})
    engine.dispose()
    store = Store(db_url)  # upgrades 0001 -> head
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0002"
        s = Q.find_session(conn, "1")
        assert (s.experiment, s.fold, s.status, s.current_epoch) == ("old", 2, "finished", 2)
        assert Q.curves(conn, 1) == {"val_dice": {1: 0.5, 2: 0.7}}
        files = Q.files(conn, 1)
    assert [(f["kind"], f["epoch"]) for f in files["checkpoints"]] == [("epoch", 2)]
    assert [f["kind"] for f in files["predictions"]] == ["snapshot"]
    store.apply([{"op": "evaluation", "uid": "old-uid", "rows": [["case1", "one", "dice", 0.8]]}])
    assert _count(store, S.Evaluation) == 1
    store.close()
    Store(db_url).close()  # opening an up-to-date database changes nothing


def test_newer_or_foreign_database_is_refused_in_one_sentence(tmp_path, capsys):
    newer = tmp_path / "newer.db"
    Store(f"sqlite:///{newer}").close()
    with sqlite3.connect(newer) as c:
        c.execute("UPDATE alembic_version SET version_num = '0099'")
    with pytest.raises(StoreError, match=r"made by a newer Delineo \(schema 0099"):
        Store(f"sqlite:///{newer}")
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as c:
        c.execute("CREATE TABLE experiment (x INTEGER)")
    with pytest.raises(StoreError, match="no schema version"):
        Store(f"sqlite:///{foreign}")
    from delineo.cli import main

    assert main(["runs", "list", "--db", str(newer)]) == 2
    assert "newer Delineo" in capsys.readouterr().err
    assert main(["runs", "list", "--db", "postgresql://nobody@127.0.0.1:1/none"]) == 2
    err = capsys.readouterr().err
    assert "cannot open the experiment database" in err and "Traceback" not in err


def test_operations_are_idempotent(db_url):
    store = Store(db_url)
    ops = [_session(), *[_epoch("u1", e) for e in range(1, 4)],
           {"op": "checkpoint", "uid": "u1", "epoch": 3, "kind": "last", "path": "/r/last.pt", "sha256": "x"},
           {"op": "status", "uid": "u1", "status": "finished"}]
    store.apply(ops)
    store.apply(ops)  # a retry after a lost acknowledgement
    assert _count(store, S.EpochMetric) == 15 and _count(store, S.Checkpoint) == 1 and _count(store, S.Session) == 1
    with store.engine.connect() as conn:
        s = Q.find_session(conn, "1")
        assert (s.status, s.current_epoch) == ("finished", 3)
    store.close()


def _write_run(url: str, uid: str, n: int) -> None:
    """What one training's tracker does: its own writer (own connections), one epoch at a time."""
    w = BufferedWriter(url)
    w.submit({"op": "session", "uid": uid, "experiment": "shared", "config": {"name": "shared"}, "status": "running"})
    for e in range(1, n + 1):
        w.submit({"op": "epoch", "uid": uid, "epoch": e, "metrics": {f"m{i}": e for i in range(10)}})
        time.sleep(0.002)
    w.submit({"op": "status", "uid": uid, "status": "finished"})
    assert w.close(60) == 0


def _check_shared(url: str, writers: int, n: int) -> None:
    store = Store(url)
    assert _count(store, S.EpochMetric) == writers * n * 10
    assert _count(store, S.Experiment) == 1
    with store.engine.connect() as conn:
        runs = Q.sessions(conn, experiment="shared")
    assert sorted((s.uid, s.status, s.current_epoch) for s in runs) == [(f"w{i}", "finished", n) for i in range(writers)]
    store.close()


@pytest.mark.soak
def test_concurrent_writers_lose_nothing(db_url):
    """Four writers create the schema of a new database and write at the same time."""
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            _write_run(db_url, f"w{i}", 60)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    _check_shared(db_url, 4, 60)


_PROCESS = textwrap.dedent("""
    import sys
    from tests.test_track_store import _write_run
    _write_run(sys.argv[1], sys.argv[2], int(sys.argv[3]))
""")


@pytest.mark.soak
def test_concurrent_writer_processes_lose_nothing(db_url):
    procs = [subprocess.Popen([sys.executable, "-c", _PROCESS, db_url, f"w{i}", "300"], cwd=ROOT) for i in range(6)]
    assert [p.wait(timeout=600) for p in procs] == [0] * 6
    _check_shared(db_url, 6, 300)


def test_writer_rides_out_a_server_outage(pg_server):
    """PostgreSQL stops mid-run: submitting never waits, and the backlog is written once it is back."""
    url = resolve_url(pg_server.new_database())
    w = BufferedWriter(url, max_pause=1.0)
    w.submit(_session("pg1"), *[_epoch("pg1", e) for e in (1, 2, 3)])
    assert w.flush(30)
    pg_server.stop()
    try:
        t0 = time.perf_counter()
        for e in (4, 5, 6):
            w.submit(_epoch("pg1", e))
        assert time.perf_counter() - t0 < 0.05
        time.sleep(1.5)
        assert w.pending == 3 and w.failures >= 1
    finally:
        pg_server.start()
    assert w.flush(30), "backlog not written after the server came back"
    assert w.close(5) == 0
    store = Store(url)
    with store.engine.connect() as conn:
        assert sorted(Q.curves(conn, Q.sessions(conn)[0].id)["m0"]) == [1, 2, 3, 4, 5, 6]
    store.close()


def test_locked_sqlite_is_journalled_then_imported(tmp_path):
    """A database locked for the whole run: nothing blocks, the writes go to a journal, and
    `delineo runs import` writes them later."""
    run_dir = tmp_path / "runs" / "exp" / "fold_0"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("name: exp\ntrain: {seed: 3}\n")
    (run_dir / "checkpoints").mkdir()
    (run_dir / "track.json").write_text('{"session": "locked"}')
    db = tmp_path / "runs" / "delineo.db"
    Store(f"sqlite:///{db}").close()
    lock = sqlite3.connect(db, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    journal = run_dir / "track_pending.jsonl"
    w = BufferedWriter(f"sqlite:///{db}", journal)
    t0 = time.perf_counter()
    w.submit(_session("locked"), *[_epoch("locked", e) for e in range(1, 6)])
    assert time.perf_counter() - t0 < 0.05
    assert w.close(1.0) == 6
    lock.execute("ROLLBACK")
    lock.close()
    assert len(journal.read_text().splitlines()) == 6
    from delineo.cli import main

    assert main(["runs", "import", str(tmp_path / "runs"), "--db", str(db)]) == 0
    assert not journal.exists()
    store = Store(f"sqlite:///{db}")
    with store.engine.connect() as conn:
        (s,) = Q.sessions(conn)
        assert (s.uid, s.status, s.seed, s.run_dir) == ("locked", "running", 3, str(run_dir.resolve()))
        assert sorted(Q.curves(conn, s.id)["m0"]) == [1, 2, 3, 4, 5]
    store.close()
