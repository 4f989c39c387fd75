"""Open the experiment database (SQLite file or PostgreSQL URL), bring its schema up to date,
and apply the idempotent write operations that training and ``delineo runs import`` emit.

Writes are *operations* (a name and a JSON-able payload, see :data:`OPS`) rather than ORM
objects, so that a writer that cannot reach the database can keep them in memory or in a
journal file and apply them later, in order, as often as needed: each one is an upsert on a
natural key (session uid, epoch, path), so applying it twice changes nothing.
"""

from __future__ import annotations

import logging
import math
import os
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Optional

from sqlalchemy import Connection, Engine, create_engine, event, inspect, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

from delineo.errors import DelineoError
from delineo.track import schema as S

log = logging.getLogger(__name__)
logging.getLogger("alembic").setLevel(logging.WARNING)  # its INFO lines say nothing a user needs

DEFAULT_FILE = "delineo.db"
OFF = ("off", "none", "no", "false", "0")
_PG_LOCK = 74_180_014  # advisory lock id held while the schema is created or upgraded


class StoreError(DelineoError):
    """The database URL is invalid, the server refuses, or the schema cannot be brought up to date."""


def resolve_url(db: Optional[str], runs_root: Optional[Path] = None) -> Optional[str]:
    """The database URL from ``--db`` / ``DELINEO_DB`` / the default ``RUNS/delineo.db``; None when off.

    A plain path means a SQLite file; ``postgresql://`` and ``postgres://`` URLs use psycopg 3.
    """
    value = db if db is not None else os.environ.get("DELINEO_DB")
    if value is None or value == "":
        return f"sqlite:///{(Path(runs_root or 'runs') / DEFAULT_FILE).resolve()}"
    if value.strip().lower() in OFF:
        return None
    if value.startswith("postgres://"):
        value = "postgresql://" + value[len("postgres://"):]
    if value.startswith("postgresql://"):
        return "postgresql+psycopg://" + value[len("postgresql://"):]
    if "://" in value:
        return value
    return f"sqlite:///{Path(value).expanduser().resolve()}"


def shown(url: str) -> str:
    """The URL with its password hidden, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def make_engine(url: str) -> Engine:
    """An engine with SQLite set up for several writers: WAL, a busy timeout, BEGIN IMMEDIATE.

    WAL lets readers (``delineo runs``) work while training writes and keeps the file intact
    after a ``kill -9``; BEGIN IMMEDIATE takes the write lock when a transaction starts, so two
    writers queue on the busy timeout instead of failing on a read-to-write lock upgrade.
    """
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StoreError(f"{url}: not a database URL (expected a file path, sqlite:///FILE or postgresql://...).") from None
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise StoreError(f"{shown(url)}: unsupported database '{backend}'; use a SQLite file or PostgreSQL.")
    if backend == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            folder = Path(parsed.database).parent
            if not folder.is_dir():
                folder.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 10})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record) -> None:
            dbapi_conn.isolation_level = None  # transactions are begun by _begin below
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    try:
        return create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": 5})
    except NoSuchModuleError:
        raise StoreError(f"{shown(url)}: the PostgreSQL driver is missing; pip install 'delineo[db]'.") from None
    except ModuleNotFoundError:
        raise StoreError(f"{shown(url)}: the PostgreSQL driver is missing; pip install 'delineo[db]'.") from None


def _alembic_config(conn: Connection):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    cfg.attributes["connection"] = conn
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(Path(__file__).parent / "migrations")).get_current_head()


def migrate(conn: Connection, revision: str = "head") -> None:
    """Run the Alembic revisions up to ``revision`` on ``conn`` (used for upgrades and in tests)."""
    from alembic import command

    command.upgrade(_alembic_config(conn), revision)


def ensure_schema(engine: Engine, url: str) -> None:
    """Create the schema in a new database, upgrade an older one, refuse a newer or foreign one."""
    from alembic.migration import MigrationContext
    from alembic.script import ScriptDirectory

    script = ScriptDirectory(str(Path(__file__).parent / "migrations"))
    head = script.get_current_head()
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK})
        ctx = MigrationContext.configure(conn)
        current = ctx.get_current_revision()
        if current == head:
            return
        if current is None:
            ours = set(S.Base.metadata.tables) & set(inspect(conn).get_table_names())
            if ours:
                raise StoreError(f"{shown(url)}: holds tables named like Delineo's ({', '.join(sorted(ours))}) but no "
                                 "schema version; point --db at a new database.")
            S.Base.metadata.create_all(conn)
            ctx.stamp(script, head)
            log.info("%s: experiment database created (schema %s)", shown(url), head)
            return
        try:
            script.get_revision(current)
        except Exception:
            raise StoreError(f"{shown(url)}: made by a newer Delineo (schema {current}, this one knows up to {head}); "
                             "upgrade Delineo to use it.") from None
        log.info("%s: upgrading the experiment database from schema %s to %s", shown(url), current, head)
        migrate(conn, "head")


class Store:
    """An open, up-to-date experiment database."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        try:
            ensure_schema(self.engine, url)
        except DBAPIError as exc:
            self.engine.dispose()
            raise StoreError(f"{shown(url)}: cannot open the experiment database ({_first_line(exc)}).") from None
        except BaseException:
            self.engine.dispose()
            raise

    def apply(self, ops: list[dict[str, Any]]) -> None:
        """Apply operations in one transaction (all or none)."""
        with self.engine.begin() as conn:
            for o in ops:
                apply_op(conn, o)

    def prepare(self, ops: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Fill in the sha256 and size of files to hash, reading each file once: kept epoch
        checkpoints (``skip_known``) already recorded with a checksum are dropped, so a resume
        or a second import of a run with many large checkpoints does not read them again."""
        known: dict[str, set[str]] = {}
        out = []
        for o in ops:
            if o.get("skip_known"):
                if o["uid"] not in known:
                    t = S.Checkpoint.__table__
                    with self.engine.connect() as conn:
                        known[o["uid"]] = set(conn.execute(
                            select(t.c.path).join(S.Session.__table__, S.Session.__table__.c.id == t.c.session_id)
                            .where(S.Session.__table__.c.uid == o["uid"], t.c.sha256.is_not(None))).scalars())
                if o["path"] in known[o["uid"]]:
                    continue
            if o.get("hash") and o.get("sha256") is None and Path(o["path"]).is_file():
                from delineo.track.writer import sha256_file

                o["size"] = os.path.getsize(o["path"])
                o["sha256"] = sha256_file(Path(o["path"]))
            out.append(o)
        return out

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_store(db: Optional[str] = None, runs_root: Optional[Path] = None) -> Store:
    """The store for ``--db`` / ``DELINEO_DB`` / ``RUNS/delineo.db``; an error when tracking is off."""
    url = resolve_url(db, runs_root)
    if url is None:
        raise StoreError("the experiment database is off (DELINEO_DB=off); pass --db FILE_OR_URL.")
    return Store(url)


def _first_line(exc: BaseException) -> str:
    return str(getattr(exc, "orig", exc) or exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


# ---------------------------------------------------------------------------- write operations
Op = Callable[[Connection, dict[str, Any]], None]
OPS: dict[str, Op] = {}


def operation(name: str) -> Callable[[Op], Op]:
    def deco(fn: Op) -> Op:
        OPS[name] = fn
        return fn

    return deco


def apply_op(conn: Connection, o: dict[str, Any]) -> None:
    fn = OPS.get(o.get("op", ""))
    if fn is None:
        raise StoreError(f"unknown experiment database operation {o.get('op')!r}")
    fn(conn, o)


def _insert(conn: Connection, table):
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(table)


def _upsert(conn: Connection, table, rows: list[dict[str, Any]], keys: list[str], update_cols: list[str]) -> None:
    if not rows:
        return
    ins = _insert(conn, table).values(rows)
    if update_cols:
        stmt = ins.on_conflict_do_update(index_elements=keys, set_={c: ins.excluded[c] for c in update_cols})
    else:
        stmt = ins.on_conflict_do_nothing(index_elements=keys)
    conn.execute(stmt)


def _when(o: dict[str, Any]) -> datetime:
    at = o.get("at")
    return datetime.fromisoformat(at) if at else S.utcnow()


def number(value: Any) -> Optional[float]:
    """A finite float, or None (NaN and infinities are stored as NULL on both back-ends)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def session_id(conn: Connection, uid: str) -> int:
    sid = conn.execute(select(S.Session.id).where(S.Session.uid == uid)).scalar()
    if sid is None:
        raise StoreError(f"no session {uid} in the experiment database")
    return int(sid)


def experiment_id(conn: Connection, name: str, config: Optional[dict] = None, config_hash: Optional[str] = None,
                  description: Optional[str] = None, at: Optional[datetime] = None) -> int:
    """The id of experiment ``name``, created (race-free) when new."""
    t = S.Experiment.__table__
    _upsert(conn, t, [{"name": name, "config": config, "config_hash": config_hash, "description": description,
                       "created": at or S.utcnow()}], ["name"], [])
    if description is not None:
        conn.execute(update(t).where(t.c.name == name).values(description=description))
    if config is not None:  # an experiment first created without a config (by hand) gets the first one seen
        conn.execute(update(t).where(t.c.name == name, t.c.config.is_(None)).values(config=config,
                                                                                     config_hash=config_hash))
    return int(conn.execute(select(t.c.id).where(t.c.name == name)).scalar_one())


@operation("experiment")
def _op_experiment(conn: Connection, o: dict[str, Any]) -> None:
    experiment_id(conn, o["name"], o.get("config"), o.get("config_hash"), o.get("description"), _when(o))


@operation("session")
def _op_session(conn: Connection, o: dict[str, Any]) -> None:
    at = _when(o)
    eid = experiment_id(conn, o["experiment"], o.get("config"), o.get("config_hash"), at=at)
    fields = {k: o.get(k) for k in ("fold", "run_dir", "host", "git_commit", "seed", "versions", "config",
                                    "config_hash")}
    row = {"uid": o["uid"], "experiment_id": eid, "status": o.get("status") or "imported", "created": at,
           "modified": at, "current_epoch": int(o.get("current_epoch", 0)), **fields}
    # an import (no status) leaves a known session's status alone; a training sets it
    _upsert(conn, S.Session.__table__, [row], ["uid"],
            ["modified", *(["status"] if o.get("status") else []), *[k for k, v in fields.items() if v is not None]])


def _touch(conn: Connection, sid: int, at: datetime, epoch: Optional[int] = None, status: Optional[str] = None) -> None:
    t = S.Session.__table__
    values: dict[str, Any] = {"modified": at}
    if status:
        values["status"] = status
    stmt = update(t).where(t.c.id == sid)
    if epoch is not None:
        from sqlalchemy import case

        values["current_epoch"] = case((t.c.current_epoch < epoch, epoch), else_=t.c.current_epoch)
    conn.execute(stmt.values(**values))


@operation("epoch")
def _op_epoch(conn: Connection, o: dict[str, Any]) -> None:
    sid, at, epoch = session_id(conn, o["uid"]), _when(o), int(o["epoch"])
    rows = [{"session_id": sid, "epoch": epoch, "name": str(k), "value": number(v), "logged": at}
            for k, v in o["metrics"].items()]
    _upsert(conn, S.EpochMetric.__table__, rows, ["session_id", "epoch", "name"], ["value", "logged"])
    _touch(conn, sid, at, epoch)


@operation("checkpoint")
def _op_checkpoint(conn: Connection, o: dict[str, Any]) -> None:
    sid, at = session_id(conn, o["uid"]), _when(o)
    _upsert(conn, S.Checkpoint.__table__, [{"session_id": sid, "epoch": int(o["epoch"]), "kind": o.get("kind", "epoch"),
                                            "path": o["path"], "sha256": o.get("sha256"), "size": o.get("size"),
                                            "created": at}],
            ["session_id", "path"], ["epoch", "kind", "sha256", "size", "created"])


@operation("prediction")
def _op_prediction(conn: Connection, o: dict[str, Any]) -> None:
    sid, at = session_id(conn, o["uid"]), _when(o)
    _upsert(conn, S.Prediction.__table__, [{"session_id": sid, "epoch": int(o["epoch"]),
                                            "kind": o.get("kind", "snapshot"), "path": o["path"],
                                            "n_files": o.get("n_files"), "created": at}],
            ["session_id", "path"], ["epoch", "kind", "n_files", "created"])


@operation("status")
def _op_status(conn: Connection, o: dict[str, Any]) -> None:
    _touch(conn, session_id(conn, o["uid"]), _when(o), status=o["status"])


@operation("evaluation")
def _op_evaluation(conn: Connection, o: dict[str, Any]) -> None:
    sid = session_id(conn, o["uid"])
    rows = [{"session_id": sid, "case_id": str(c), "label": str(lab), "metric": str(m), "value": number(v)}
            for c, lab, m, v in o["rows"]]
    for i in range(0, len(rows), 500):
        _upsert(conn, S.Evaluation.__table__, rows[i:i + 500], ["session_id", "case_id", "label", "metric"], ["value"])


@operation("artefact")
def _op_artefact(conn: Connection, o: dict[str, Any]) -> None:
    sid = session_id(conn, o["uid"]) if o.get("uid") else None
    eid = experiment_id(conn, o["experiment"]) if o.get("experiment") else None
    _upsert(conn, S.Artefact.__table__, [{"session_id": sid, "experiment_id": eid, "kind": o["kind"],
                                          "path": o["path"], "sha256": o.get("sha256"), "size": o.get("size"),
                                          "created": _when(o)}],
            ["path"], ["session_id", "experiment_id", "kind", "sha256", "size", "created"])


def create_experiment(store: Store, name: str, config: Optional[dict[str, Any]] = None,
                      description: Optional[str] = None) -> int:
    """Register an experiment before any run (or set its description); returns its id."""
    from delineo.track.folders import config_hash

    with store.engine.begin() as conn:
        return experiment_id(conn, name, config, config_hash(config) if config else None, description)
