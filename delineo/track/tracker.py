"""The training hook: what the training loop tells the experiment database, and nothing more.

The loop makes three calls (``start_tracker`` after setup, ``epoch`` after each epoch's files
are written, ``close`` at the end) on rank 0 only. None of them raises and none waits for the
database: they turn files and log rows into operations for a :class:`BufferedWriter`. The
tracker looks at the run folder rather than into the trainer, so the loop's internals can
change without touching this module: a checkpoint or snapshot is recorded when its file exists.
"""

from __future__ import annotations

import json
import logging
import platform
import socket
import subprocess
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional, Protocol

from delineo.track import folders as F

log = logging.getLogger(__name__)


class TrainingTracker(Protocol):
    def epoch(self, row: dict[str, Any], epoch: int) -> None: ...

    def close(self, status: str = "finished") -> None: ...


class NullTracker:
    """Tracking off (``DELINEO_DB=off``), not rank 0, or the database layer could not start."""

    def epoch(self, row: dict[str, Any], epoch: int) -> None:
        pass

    def close(self, status: str = "finished") -> None:
        pass


def _now() -> str:
    return datetime.now(timezone.utc).replace(tzinfo=None).isoformat()


def _versions() -> dict[str, str]:
    import numpy
    import sqlalchemy
    import torch

    import delineo

    return {"python": platform.python_version(), "delineo": getattr(delineo, "__version__", "?"),
            "torch": torch.__version__, "numpy": numpy.__version__, "sqlalchemy": sqlalchemy.__version__,
            "platform": platform.platform()}


def git_commit() -> Optional[str]:
    """The commit of the Delineo source that runs (None for an installed wheel)."""
    source = Path(__file__).resolve().parents[2]
    if not (source / ".git").exists():  # an installed copy: a repository above it is someone else's
        return None
    try:
        out = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"],
                             capture_output=True, text=True, timeout=3)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


class Tracker:
    """Records one session (one run folder) through a background writer."""

    def __init__(self, writer, uid: str, run_dir: Path) -> None:
        self.writer, self.uid, self.run_dir = writer, uid, Path(run_dir).resolve()
        self.seconds = 0.0  # time spent in the training thread, for the overhead figure
        self.epochs = 0
        self._best_mtime: Optional[int] = None

    def epoch(self, row: dict[str, Any], epoch: int) -> None:
        """Epoch ``epoch`` (1-based) is done and its files are written: log its row and files."""
        t0 = time.perf_counter()
        try:
            self.writer.submit(*self._epoch_ops(row, epoch))
            self.epochs += 1
        except Exception as exc:  # tracking never stops training
            log.warning("experiment database: epoch %d not recorded (%s)", epoch, exc)
        self.seconds += time.perf_counter() - t0

    def _epoch_ops(self, row: dict[str, Any], epoch: int) -> list[dict[str, Any]]:
        at = _now()
        ops: list[dict[str, Any]] = [{"op": "epoch", "uid": self.uid, "epoch": epoch, "at": at,
                                      "metrics": {k: v for k, v in row.items() if k != "epoch"}}]
        ckpts = self.run_dir / "checkpoints"
        files = [(ckpts / f"epoch_{epoch:04d}.pt", "epoch"), (ckpts / "last.pt", "last")]
        best = ckpts / "best.pt"
        if best.is_file() and best.stat().st_mtime_ns != self._best_mtime:
            self._best_mtime = best.stat().st_mtime_ns
            files.append((best, "best"))
        for path, kind in files:
            if path.is_file():
                ops.append({"op": "checkpoint", "uid": self.uid, "epoch": epoch, "kind": kind, "path": str(path),
                            "sha256": None, "hash": True, "at": at})
        preds = self.run_dir / "predictions"
        snapshot = preds / f"epoch_{int(row.get('epoch', epoch - 1)):04d}"
        if snapshot.is_dir():
            ops.append({**F.prediction_op(self.uid, snapshot, epoch, "snapshot"), "at": at})
        if row.get("best") and (preds / "best").is_dir():
            ops.append({**F.prediction_op(self.uid, preds / "best", epoch, "best"), "at": at})
        return ops

    def close(self, status: str = "finished", timeout: float = 5.0) -> None:
        """Mark the session and write what is pending (journalled if the database stays away)."""
        try:
            self.writer.submit({"op": "status", "uid": self.uid, "status": status, "at": _now()})
            self.writer.close(timeout)
            if self.epochs:
                log.info("experiment database: %d epoch(s) recorded; %.2f ms per epoch in the training loop, "
                         "%.1f ms per epoch written in the background", self.epochs,
                         1000 * self.seconds / self.epochs, 1000 * self.writer.write_seconds / self.epochs)
        except Exception as exc:
            log.warning("experiment database: session end not recorded (%s)", exc)


class Trackers:
    """Several trackers as one (the database's and the mirrors): each call goes to every part."""

    def __init__(self, *parts: TrainingTracker) -> None:
        self.parts = parts

    def epoch(self, row: dict[str, Any], epoch: int) -> None:
        for part in self.parts:
            part.epoch(row, epoch)

    def close(self, status: str = "finished") -> None:
        for part in self.parts:
            part.close(status)


def start_tracker(run_dir: Path, config: dict[str, Any], fold: Optional[int], resume: bool,
                  runs_root: Path, db: Optional[str] = None) -> TrainingTracker:
    """A tracker for a training starting (or resuming) in ``run_dir``: the experiment database's,
    plus the mirrors that the experiment's ``track.mirrors`` names; never raises.

    A new run gets a new session id, kept in ``run_dir/track.json``; ``--resume`` continues
    that session and first re-sends what the folder already holds (epochs, checkpoints,
    predictions) and any journal of writes that never reached the database, so that writes
    lost to a ``kill -9`` are recovered.
    """
    database = _start_database(run_dir, config, fold, resume, runs_root, db)
    names = list(((config.get("track") or {}).get("mirrors")) or [])
    if not names:
        return database
    try:
        from delineo.track.mirrors import MirrorContext, start_mirrors

        run_dir = Path(run_dir).resolve()
        uid = database.uid if isinstance(database, Tracker) else F.folder_uid(run_dir)
        ctx = MirrorContext(run_dir=run_dir, runs_root=Path(runs_root).resolve(),
                            experiment=str(config.get("name") or run_dir.parent.name), fold=fold, uid=uid,
                            resume=resume, start_epoch=len(F.read_log(run_dir)) if resume else 0,
                            options=dict(config.get("track") or {}))
        mirrors = start_mirrors(names, ctx, config)
    except Exception as exc:
        log.warning("mirrors off for this run (%s)", exc)
        return database
    return Trackers(database, mirrors) if mirrors is not None else database


def _start_database(run_dir: Path, config: dict[str, Any], fold: Optional[int], resume: bool,
                    runs_root: Path, db: Optional[str]) -> TrainingTracker:
    try:
        from delineo.track.store import resolve_url
        from delineo.track.writer import BufferedWriter, read_journal

        url = resolve_url(db, runs_root)
        if url is None:
            return NullTracker()
        run_dir = Path(run_dir).resolve()
        session_file = run_dir / F.SESSION_FILE
        uid = F.folder_uid(run_dir) if resume else str(uuid.uuid4())
        if not resume or not session_file.is_file():
            from delineo.io.atomic import write_text_atomic

            write_text_atomic(session_file, json.dumps({"session": uid}) + "\n")
        journal = run_dir / F.JOURNAL_FILE
        writer = BufferedWriter(url, journal)
        old = read_journal(journal)  # writes an earlier process could not deliver (they name their own session)
        ops = old + [F.session_op(uid, run_dir, config, fold, status="running", at=_now(), host=socket.gethostname(),
                                  git_commit=git_commit(), versions=_versions())]
        if resume:
            rows = F.read_log(run_dir)
            ops += F.epoch_ops(uid, rows) + F.file_ops(uid, run_dir, rows)
        if old:
            ops.append({"op": "_drop_journal", "path": str(journal)})
        writer.submit(*ops)
        log.debug("experiment database %s: session %s", url, uid)
        return Tracker(writer, uid, run_dir)
    except Exception as exc:
        log.warning("experiment database off for this run (%s)", exc)
        return NullTracker()



def record_evaluation(run_dir: Path, runs_root: Path, db: Optional[str] = None, timeout: float = 5.0) -> None:
    """Record ``metrics/cases.csv``, the report and the summary of an evaluated run in the
    database, and the summary in the run's mirrors (``track.mirrors`` of its config.yaml); never raises."""
    _evaluation_to_database(run_dir, runs_root, db, timeout)
    _evaluation_to_mirrors(run_dir, runs_root)


def _evaluation_to_mirrors(run_dir: Path, runs_root: Path) -> None:
    try:
        import yaml

        run_dir = Path(run_dir).resolve()
        if not F.is_run_dir(run_dir) or not (run_dir / "metrics" / "summary.json").is_file():
            return
        config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
        names = list(((config.get("track") or {}).get("mirrors")) or []) if isinstance(config, dict) else []
        if not names:
            return
        from delineo.track.mirrors import MirrorContext, mirror_evaluation

        epochs = len(F.read_log(run_dir))
        ctx = MirrorContext(run_dir=run_dir, runs_root=Path(runs_root).resolve(),
                            experiment=str(config.get("name") or run_dir.parent.name), fold=F.folder_fold(run_dir),
                            uid=F.folder_uid(run_dir), resume=True, start_epoch=epochs,
                            options=dict(config.get("track") or {}))
        mirror_evaluation(names, ctx, json.loads((run_dir / "metrics" / "summary.json").read_text()))
    except Exception as exc:
        log.warning("mirrors: evaluation of %s not mirrored (%s)", run_dir, exc)


def _evaluation_to_database(run_dir: Path, runs_root: Path, db: Optional[str], timeout: float) -> None:
    try:
        from delineo.track.store import resolve_url
        from delineo.track.writer import BufferedWriter

        url = resolve_url(db, runs_root)
        if url is None:
            return
        run_dir = Path(run_dir).resolve()
        if not F.is_run_dir(run_dir):
            return
        uid, ops = F.import_ops(run_dir)  # the session too, for a run trained with the database off
        writer = BufferedWriter(url, run_dir / F.JOURNAL_FILE if not (run_dir / F.JOURNAL_FILE).exists() else None)
        writer.submit(*[o for o in ops if o["op"] == "session"], *F.evaluation_ops(uid, run_dir))
        writer.close(timeout)
    except Exception as exc:
        log.warning("experiment database: evaluation of %s not recorded (%s)", run_dir, exc)
