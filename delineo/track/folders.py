"""What a run folder already says, as database operations: the import of existing runs, and
the catch-up of a resumed run whose last writes died with its process (``kill -9``).

Reads only plain files (``config.yaml``, ``cases.json``, ``log.csv``, ``checkpoints/``,
``predictions/``, ``metrics/cases.csv``, ``report.html``, ``track.json``); never unpickles or
loads a checkpoint. Epochs become 1-based: ``log.csv``'s epoch 0 is the database's epoch 1, and
the snapshot folder ``predictions/epoch_0009`` is the prediction of epoch 10.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import re
import uuid
from pathlib import Path
from typing import Any, Iterator, Optional

import yaml

from delineo.errors import InputError

log = logging.getLogger(__name__)

SESSION_FILE = "track.json"
JOURNAL_FILE = "track_pending.jsonl"
_EPOCH_DIR = re.compile(r"^epoch_(\d+)(\.pt)?$")


def config_hash(config: dict[str, Any]) -> str:
    """sha256 of the resolved config as canonical JSON (same config, same hash, on any machine)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def folder_uid(run_dir: Path) -> str:
    """The session id of a run folder: from ``track.json``, or derived from its absolute path, so
    that importing the same folder twice (or resuming a run trained before tracking) finds one
    session, not two."""
    f = Path(run_dir) / SESSION_FILE
    if f.is_file():
        try:
            return str(json.loads(f.read_text())["session"])
        except (ValueError, KeyError, TypeError):
            log.warning("%s: unreadable, using the folder's own session id", f)
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "delineo-run:" + str(Path(run_dir).resolve())))


def is_run_dir(path: Path) -> bool:
    return (path / "config.yaml").is_file() and ((path / "log.csv").is_file() or (path / "checkpoints").is_dir())


def find_run_dirs(root: Path) -> Iterator[Path]:
    """Run folders under ``root`` (or ``root`` itself), in a stable order."""
    root = Path(root)
    if not root.exists():
        raise InputError(f"{root}: folder not found.")
    if is_run_dir(root):
        yield root
        return
    for cfg in sorted(root.rglob("config.yaml")):
        if is_run_dir(cfg.parent) and "cache" not in cfg.parent.relative_to(root).parts:
            yield cfg.parent


def read_log(run_dir: Path) -> list[dict[str, Any]]:
    """``log.csv`` as rows of numbers (cells that are not numbers are left out)."""
    path = Path(run_dir) / "log.csv"
    if not path.is_file():
        return []
    rows = []
    with open(path, newline="") as fh:
        for raw in csv.DictReader(fh):
            row: dict[str, Any] = {}
            for k, v in raw.items():
                try:
                    row[k] = float(v) if v not in (None, "") else None
                except ValueError:
                    continue
            if row.get("epoch") is not None:
                rows.append(row)
    return rows


def epoch_ops(uid: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One ``epoch`` operation per log row (0-based ``epoch`` column -> 1-based epoch)."""
    return [{"op": "epoch", "uid": uid, "epoch": int(r["epoch"]) + 1,
             "metrics": {k: v for k, v in r.items() if k != "epoch" and v is not None}} for r in rows]


def file_ops(uid: str, run_dir: Path, rows: Optional[list[dict[str, Any]]] = None) -> list[dict[str, Any]]:
    """Checkpoints and prediction folders on disk (sha256 filled in by the writer)."""
    run_dir = Path(run_dir).resolve()
    rows = read_log(run_dir) if rows is None else rows
    done = int(rows[-1]["epoch"]) + 1 if rows else 0
    best_rows = [r for r in rows if r.get("best")]
    best = int(best_rows[-1]["epoch"]) + 1 if best_rows else done
    ops: list[dict[str, Any]] = []
    ckpts = run_dir / "checkpoints"
    if ckpts.is_dir():
        for f in sorted(ckpts.glob("*.pt")):
            m = _EPOCH_DIR.match(f.name)
            kind, epoch = ("epoch", int(m.group(1))) if m else (f.stem, best if f.stem == "best" else done)
            ops.append({"op": "checkpoint", "uid": uid, "epoch": epoch, "kind": kind, "path": str(f),
                        "sha256": None, "hash": True, "skip_known": kind == "epoch"})  # kept files never change
    preds = run_dir / "predictions"
    if preds.is_dir():
        for d in sorted(p for p in preds.iterdir() if p.is_dir() and not p.name.startswith(".")):
            m = _EPOCH_DIR.match(d.name)
            if m:
                ops.append(prediction_op(uid, d, int(m.group(1)) + 1, "snapshot"))
            elif d.name == "best":
                ops.append(prediction_op(uid, d, best, "best"))
    return ops


def prediction_op(uid: str, folder: Path, epoch: int, kind: str) -> dict[str, Any]:
    n = sum(1 for p in folder.iterdir() if p.is_file()) if folder.is_dir() else None
    return {"op": "prediction", "uid": uid, "epoch": epoch, "kind": kind, "path": str(folder), "n_files": n}


def evaluation_ops(uid: str, run_dir: Path) -> list[dict[str, Any]]:
    """``metrics/cases.csv`` as evaluation rows, ``report.html`` and ``summary.json`` as artefacts."""
    run_dir = Path(run_dir).resolve()
    ops: list[dict[str, Any]] = []
    cases = run_dir / "metrics" / "cases.csv"
    if cases.is_file():
        rows = []
        with open(cases, newline="") as fh:
            for raw in csv.DictReader(fh):
                for metric, value in raw.items():
                    if metric in ("case", "label") or value in (None, ""):
                        continue
                    try:
                        rows.append((raw["case"], raw["label"], metric, float(value)))
                    except ValueError:
                        continue
        ops.append({"op": "evaluation", "uid": uid, "rows": rows})
    for rel, kind in (("report.html", "report"), ("metrics/summary.json", "metrics")):
        if (run_dir / rel).is_file():
            ops.append({"op": "artefact", "uid": uid, "kind": kind, "path": str(run_dir / rel), "sha256": None,
                        "hash": True})
    return ops


def session_op(uid: str, run_dir: Path, config: dict[str, Any], fold: Optional[int],
               status: Optional[str] = None, **extra: Any) -> dict[str, Any]:
    o = {"op": "session", "uid": uid, "experiment": config.get("name", Path(run_dir).parent.name),
         "config": config, "config_hash": config_hash(config), "fold": fold,
         "run_dir": str(Path(run_dir).resolve()), "seed": (config.get("train") or {}).get("seed"), **extra}
    if status:
        o["status"] = status
    return o


def folder_fold(run_dir: Path) -> Optional[int]:
    cases = Path(run_dir) / "cases.json"
    if cases.is_file():
        try:
            fold = json.loads(cases.read_text()).get("fold")
            return None if fold is None else int(fold)
        except (ValueError, TypeError, AttributeError):
            pass
    m = re.match(r"^fold_(\d+)$", Path(run_dir).name)
    return int(m.group(1)) if m else None


def import_ops(run_dir: Path) -> tuple[str, list[dict[str, Any]]]:
    """Every operation that puts one run folder into the database: its session, log rows,
    checkpoints, predictions, scores and any journal a training left behind."""
    run_dir = Path(run_dir).resolve()
    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    except yaml.YAMLError as exc:
        raise InputError(f"{run_dir / 'config.yaml'}: not valid YAML ({exc.__class__.__name__}).") from None
    if not isinstance(config, dict):
        raise InputError(f"{run_dir / 'config.yaml'}: not an experiment (expected a mapping).")
    uid = folder_uid(run_dir)
    from delineo.track.writer import read_journal

    rows = read_log(run_dir)
    ops = read_journal(run_dir / JOURNAL_FILE)
    ops.append(session_op(uid, run_dir, config, folder_fold(run_dir)))
    ops += epoch_ops(uid, rows) + file_ops(uid, run_dir, rows) + evaluation_ops(uid, run_dir)
    return uid, ops
