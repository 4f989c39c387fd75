"""Reading the experiment database: sessions, learning curves, the best run, per-epoch
statistics across the sessions (folds) of one experiment. Plain dataclasses and dicts out, so
the CLI, a notebook and the viewer format them as they like.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import numpy as np
from sqlalchemy import Connection, delete, func, select

from delineo.errors import DelineoError
from delineo.track import schema as S
from delineo.track.folders import folder_uid


@dataclass
class SessionInfo:
    id: int
    uid: str
    experiment: str
    fold: Optional[int]
    status: str
    current_epoch: int
    created: datetime
    modified: datetime
    run_dir: Optional[str]
    host: Optional[str] = None
    git_commit: Optional[str] = None
    seed: Optional[int] = None
    config_hash: Optional[str] = None
    versions: dict[str, Any] = field(default_factory=dict)


Curves = dict[str, dict[int, float]]  # metric -> epoch -> value

# Direction of a metric from its name: overlap and classification scores up, losses and
# distances down. Checked in order; the first match wins.
_DIRECTIONS: list[tuple[str, str]] = [
    (r"loss|error|hd95|hausdorff|assd|asd|distance|seconds|time|fp$|fn$|false", "min"),
    (r"dice|iou|jaccard|f1|fbeta|acc|precision|recall|sensitivity|specificity|auc|score|tp$", "max"),
]


def direction_of(metric: str) -> str:
    """``max`` for Dice-like scores, ``min`` for losses and distances; an error when unclear."""
    for pattern, d in _DIRECTIONS:
        if re.search(pattern, metric.lower()):
            return d
    raise DelineoError(f"metric '{metric}': cannot tell whether higher or lower is better; pass --max or --min.")


def _info(s: S.Session, name: str) -> SessionInfo:
    return SessionInfo(s.id, s.uid, name, s.fold, s.status, s.current_epoch, s.created, s.modified, s.run_dir, s.host,
                       s.git_commit, s.seed, s.config_hash, s.versions or {})


def sessions(conn: Connection, experiment: Optional[str] = None, status: Optional[str] = None,
             fold: Optional[int] = None, ids: Optional[list[int]] = None) -> list[SessionInfo]:
    q = select(S.Session, S.Experiment.name).join(S.Experiment).order_by(S.Session.id)
    if experiment:
        q = q.where(S.Experiment.name == experiment)
    if status:
        q = q.where(S.Session.status == status)
    if fold is not None:
        q = q.where(S.Session.fold == fold)
    if ids is not None:
        q = q.where(S.Session.id.in_(ids))
    from sqlalchemy.orm import Session as OrmSession

    with OrmSession(bind=conn) as orm:
        return [_info(s, name) for s, name in orm.execute(q).all()]


def find_session(conn: Connection, ref: str) -> SessionInfo:
    """A session by number, by (a prefix of) its uid, or by its run folder."""
    found: list[SessionInfo] = []
    if str(ref).isdigit():
        found = sessions(conn, ids=[int(ref)])
    if not found and Path(ref).is_dir():
        uid = folder_uid(Path(ref))
        run_dir = str(Path(ref).resolve())
        found = [s for s in sessions(conn) if s.uid == uid] or [s for s in sessions(conn) if s.run_dir == run_dir][-1:]
    if not found and len(str(ref)) >= 6:
        found = [s for s in sessions(conn) if s.uid.startswith(str(ref))]
    if len(found) != 1:
        raise DelineoError(f"run '{ref}': {'no' if not found else 'more than one'} such run in the experiment "
                           "database (give the number shown by `delineo runs list`).")
    return found[0]


def curves(conn: Connection, session_id: int, metrics: Optional[list[str]] = None) -> Curves:
    q = select(S.EpochMetric.name, S.EpochMetric.epoch, S.EpochMetric.value).where(
        S.EpochMetric.session_id == session_id).order_by(S.EpochMetric.epoch)
    if metrics:
        q = q.where(S.EpochMetric.name.in_(metrics))
    out: Curves = {}
    for name, epoch, value in conn.execute(q):
        if value is not None:
            out.setdefault(name, {})[int(epoch)] = float(value)
    return out


def metric_names(conn: Connection, session_ids: Optional[list[int]] = None) -> list[str]:
    q = select(S.EpochMetric.name).distinct().order_by(S.EpochMetric.name)
    if session_ids is not None:
        q = q.where(S.EpochMetric.session_id.in_(session_ids))
    return [r[0] for r in conn.execute(q)]


def best_epoch(curve: dict[int, float], direction: str) -> Optional[tuple[int, float]]:
    """(epoch, value) of the best value; the earliest epoch on ties."""
    if not curve:
        return None
    pick = max if direction == "max" else min
    value = pick(curve.values())
    return min(e for e, v in curve.items() if v == value), value


def best_run(conn: Connection, metric: str, direction: Optional[str] = None, **filters: Any
             ) -> Optional[tuple[SessionInfo, int, float]]:
    """The session (and epoch) with the best value of ``metric`` among the filtered sessions."""
    direction = direction or direction_of(metric)
    found: list[tuple[SessionInfo, int, float]] = []
    for s in sessions(conn, **filters):
        b = best_epoch(curves(conn, s.id, [metric]).get(metric, {}), direction)
        if b is not None:
            found.append((s, b[0], b[1]))
    if not found:
        return None
    return (max if direction == "max" else min)(found, key=lambda t: t[2])


def experiment_stats(conn: Connection, experiment: str, metrics: Optional[list[str]] = None
                     ) -> tuple[list[SessionInfo], dict[str, dict[int, tuple[float, float, int]]]]:
    """Per metric and epoch, the mean, sample standard deviation and count across the sessions
    (folds) of ``experiment``."""
    runs = sessions(conn, experiment=experiment)
    if not runs:
        raise DelineoError(f"experiment '{experiment}': no runs in the experiment database.")
    values: dict[str, dict[int, list[float]]] = {}
    for s in runs:
        for name, curve in curves(conn, s.id, metrics).items():
            for e, v in curve.items():
                values.setdefault(name, {}).setdefault(e, []).append(v)
    stats = {name: {e: (float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, len(v))
                    for e, v in sorted(per.items())} for name, per in values.items()}
    return runs, stats


def counts(conn: Connection, session_id: int) -> dict[str, int]:
    out = {}
    for label, table in (("epochs", S.EpochMetric), ("checkpoints", S.Checkpoint), ("predictions", S.Prediction),
                         ("evaluation rows", S.Evaluation), ("artefacts", S.Artefact)):
        col = func.count(func.distinct(table.epoch)) if table is S.EpochMetric else func.count()
        out[label] = int(conn.execute(select(col).select_from(table).where(table.session_id == session_id)).scalar())
    return out


def files(conn: Connection, session_id: int) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for label, table in (("checkpoints", S.Checkpoint), ("predictions", S.Prediction), ("artefacts", S.Artefact)):
        t = table.__table__
        rows = conn.execute(select(t).where(t.c.session_id == session_id).order_by(t.c.id)).mappings().all()
        out[label] = [dict(r) for r in rows]
    return out


def evaluation_means(conn: Connection, session_id: int) -> dict[tuple[str, str], tuple[float, int]]:
    q = (select(S.Evaluation.label, S.Evaluation.metric, func.avg(S.Evaluation.value), func.count(S.Evaluation.value))
         .where(S.Evaluation.session_id == session_id).group_by(S.Evaluation.label, S.Evaluation.metric))
    return {(lab, m): (float(v) if v is not None else math.nan, int(n)) for lab, m, v, n in conn.execute(q)}


def delete_session(conn: Connection, session_id: int) -> Optional[str]:
    """Delete a session's rows; an experiment left without sessions goes too. Returns the run
    folder, which the caller removes (only when asked, and only after the commit)."""
    s = conn.execute(select(S.Session.experiment_id, S.Session.run_dir).where(S.Session.id == session_id)).first()
    if s is None:
        raise DelineoError(f"run {session_id}: not in the experiment database.")
    for table in (S.EpochMetric, S.Checkpoint, S.Prediction, S.Evaluation, S.Artefact):
        conn.execute(delete(table).where(table.session_id == session_id))
    conn.execute(delete(S.Session).where(S.Session.id == session_id))
    left = conn.execute(select(func.count()).select_from(S.Session).where(
        S.Session.experiment_id == s.experiment_id)).scalar()
    if not left:
        conn.execute(delete(S.Artefact).where(S.Artefact.experiment_id == s.experiment_id))
        conn.execute(delete(S.Experiment).where(S.Experiment.id == s.experiment_id))
    return s.run_dir
