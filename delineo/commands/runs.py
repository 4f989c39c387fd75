"""``delineo runs``: create, list, show, compare, rank, export, delete and import experiment runs.

The database is ``--db`` (a SQLite file or a ``postgresql://`` URL), else ``DELINEO_DB``, else
``RUNS/delineo.db`` (``--runs``, default ``runs``): the same one ``delineo train`` writes to.
Each action is a function in :data:`ACTIONS`, so adding one is a new function, not a branch.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
from pathlib import Path
from typing import Any, Callable, Optional

from delineo.commands import verb
from delineo.errors import DelineoError

ACTIONS: dict[str, Callable[[argparse.Namespace], int]] = {}
DEFAULT_METRICS = ["val_dice", "train_loss"]


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", default=None, help="SQLite file or postgresql:// URL (default: DELINEO_DB or RUNS/delineo.db)")
    p.add_argument("--runs", type=Path, default=Path("runs"), help="runs root whose delineo.db is the default database")


def _filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--experiment", "-e", default=None, help="only runs of this experiment")
    p.add_argument("--status", default=None, help="only runs with this status (running, finished, failed, ...)")
    p.add_argument("--fold", type=int, default=None, help="only runs of this fold")


def _args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = sub.add_parser("create", help="register an experiment file (validated) with a description, before any run")
    a.add_argument("experiment", type=Path, help="experiment file (YAML or JSON)")
    a.add_argument("--description", default=None, help="what the experiment is for")
    a.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    _common(a)
    a = sub.add_parser("list", help="one line per run")
    _filters(a)
    a.add_argument("--metric", default=None, help="only runs that logged this metric, with its best value "
                                                 "(default: show val_dice, no filter)")
    _common(a)
    a = sub.add_parser("show", help="a run's details, epochs, files and scores")
    a.add_argument("run", help="run number, uid or run folder")
    a.add_argument("--metric", action="append", default=None, help="metrics in the epoch table (default: all)")
    _common(a)
    a = sub.add_parser("compare", help="runs side by side, and their learning curves overlaid (PNG)")
    a.add_argument("run", nargs="+", help="run numbers, uids or folders")
    a.add_argument("--metric", action="append", default=None, help=f"metrics to compare (default {DEFAULT_METRICS})")
    a.add_argument("--out", type=Path, default=Path("runs_compare.png"), help="curves figure (default runs_compare.png)")
    _common(a)
    a = sub.add_parser("best", help="the run and epoch with the best value of a metric")
    a.add_argument("--metric", default="val_dice", help="metric to rank by (default val_dice)")
    d = a.add_mutually_exclusive_group()
    d.add_argument("--max", dest="direction", action="store_const", const="max", help="higher is better")
    d.add_argument("--min", dest="direction", action="store_const", const="min", help="lower is better")
    _filters(a)
    _common(a)
    a = sub.add_parser("summary", help="per-epoch mean and std across an experiment's runs (folds), plotted")
    a.add_argument("experiment", help="experiment name")
    a.add_argument("--metric", action="append", default=None, help="metrics (default: all)")
    a.add_argument("--out", type=Path, default=None, help="folder for summary.csv and summary.png "
                                                          "(default runs/<experiment>/db_summary)")
    _common(a)
    a = sub.add_parser("export", help="write epochs, runs or evaluation scores as CSV")
    a.add_argument("--what", choices=["epochs", "runs", "evaluations"], default="epochs")
    a.add_argument("--out", type=Path, default=None, help="CSV file (default: standard output)")
    _filters(a)
    _common(a)
    a = sub.add_parser("delete", help="remove runs from the database (and their folders with --files)")
    a.add_argument("run", nargs="+", help="run numbers, uids or folders")
    a.add_argument("--files", action="store_true", help="also delete the run folders from disk")
    _common(a)
    a = sub.add_parser("attach", help="record a file (a .delineo model, a report) with its sha256")
    a.add_argument("file", type=Path)
    a.add_argument("--run", default=None, help="the run it belongs to (number, uid or folder)")
    a.add_argument("--experiment", "-e", default=None, help="or the experiment it belongs to")
    a.add_argument("--kind", default=None, help="what it is (default: from the suffix: delineo, report, file)")
    _common(a)
    a = sub.add_parser("import", help="fill the database from existing run folders")
    a.add_argument("folder", type=Path, nargs="?", default=None, help="runs root or run folder (default: --runs)")
    _common(a)


def action(name: str):
    def deco(fn):
        ACTIONS[name] = fn
        return fn

    return deco


@verb("runs", "list, compare and manage runs in the experiment database", _args)
def cmd_runs(args: argparse.Namespace) -> int:
    return ACTIONS[args.action](args)


def _store(args: argparse.Namespace):
    """The database; reading actions refuse to create an empty SQLite file where none is."""
    from sqlalchemy.engine import make_url

    from delineo.track.store import open_store, resolve_url

    url = resolve_url(args.db, args.runs)
    if url and url.startswith("sqlite:") and args.action not in ("import", "create"):
        path = make_url(url).database
        if path and path != ":memory:" and not Path(path).is_file():
            raise DelineoError(f"{path}: no experiment database here yet; train a run, `delineo runs import` "
                               "run folders, or pass --db.")
    return open_store(args.db, args.runs)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    if hasattr(v, "strftime"):
        return v.strftime("%Y-%m-%d %H:%M")
    return str(v)


def table(header: list[str], rows: list[list[Any]]) -> str:
    cells = [header] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)


def _filter_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {"experiment": args.experiment, "status": args.status, "fold": args.fold}


@action("create")
def _create(args: argparse.Namespace) -> int:
    from delineo.config import load_config
    from delineo.track.store import create_experiment

    cfg = load_config(args.experiment, args.overrides)
    with _store(args) as store:
        eid = create_experiment(store, cfg.name, cfg.to_dict(), args.description)
    print(f"experiment {eid}: {cfg.name}" + (f" ({args.description})" if args.description else ""))
    return 0


@action("list")
def _list(args: argparse.Namespace) -> int:
    from delineo.track import query as Q

    metric = args.metric or "val_dice"
    with _store(args) as store, store.engine.connect() as conn:
        found = Q.sessions(conn, **_filter_kwargs(args))
        rows = []
        for s in found:
            curve = Q.curves(conn, s.id, [metric]).get(metric, {})
            if args.metric and not curve:
                continue
            try:
                b = Q.best_epoch(curve, Q.direction_of(metric))
            except DelineoError:
                b = None
            rows.append([s.id, s.experiment, s.fold, s.status, s.current_epoch, b[1] if b else None,
                         b[0] if b else None, s.modified, s.run_dir])
    if not rows:
        filtered = any(_filter_kwargs(args).values()) or args.metric
        print("no runs in the experiment database" + (" that match" if filtered else ""))
        return 0
    print(table(["run", "experiment", "fold", "status", "epoch", f"best {metric}", "at", "modified", "folder"],
                rows))
    return 0


@action("show")
def _show(args: argparse.Namespace) -> int:
    from delineo.track import query as Q

    with _store(args) as store, store.engine.connect() as conn:
        s = Q.find_session(conn, args.run)
        curves = Q.curves(conn, s.id, args.metric)
        files = Q.files(conn, s.id)
        scores = Q.evaluation_means(conn, s.id)
    print(f"run {s.id} ({s.uid}): experiment {s.experiment}, fold {_fmt(s.fold)}, {s.status}, epoch {s.current_epoch}")
    print(f"  folder {s.run_dir}\n  created {_fmt(s.created)}, modified {_fmt(s.modified)}, host {_fmt(s.host)}, "
          f"seed {_fmt(s.seed)}, git {_fmt(s.git_commit)}, config {(s.config_hash or '-')[:12]}")
    if s.versions:
        print("  versions " + ", ".join(f"{k} {v}" for k, v in s.versions.items() if k != "platform"))
    names = sorted(curves)
    epochs = sorted({e for c in curves.values() for e in c})
    if epochs:
        print("\n" + table(["epoch", *names], [[e, *[curves[n].get(e) for n in names]] for e in epochs]))
        best = []
        for n in names:
            try:
                d = Q.direction_of(n)
            except DelineoError:
                continue
            b = Q.best_epoch(curves[n], d)
            best.append([n, d, b[0], b[1]])
        print("\nbest epoch per metric\n" + table(["metric", "direction", "epoch", "value"], best))
    for kind in ("checkpoints", "predictions", "artefacts"):
        if files[kind]:
            rows = sorted(files[kind], key=lambda f: (f.get("epoch") or 0, f["path"]))
            last = "files" if kind == "predictions" else "sha256"
            print(f"\n{kind}\n" + table(["epoch", "kind", "path", last],
                                        [[f.get("epoch"), f.get("kind"), f["path"], f.get("n_files") if kind ==
                                          "predictions" else (f.get("sha256") or "-")[:12]] for f in rows]))
    if scores:
        print("\nevaluation (mean over cases)\n" + table(["label", "metric", "mean", "n"],
                                                         [[lab, m, v, n] for (lab, m), (v, n) in sorted(scores.items())]))
    return 0


@action("compare")
def _compare(args: argparse.Namespace) -> int:
    from delineo.track import query as Q
    from delineo.track.plots import plot_overlaid

    metrics = args.metric or DEFAULT_METRICS
    with _store(args) as store, store.engine.connect() as conn:
        runs = [Q.find_session(conn, r) for r in args.run]
        curves = {s.id: Q.curves(conn, s.id, metrics) for s in runs}
    labels = {s.id: f"{s.id} {s.experiment} f{_fmt(s.fold)}" for s in runs}
    header = ["", *[labels[s.id] for s in runs]]
    rows: list[list[Any]] = [["status", *[s.status for s in runs]], ["epochs", *[s.current_epoch for s in runs]],
                             ["config", *[(s.config_hash or "-")[:12] for s in runs]]]
    for m in metrics:
        try:
            d = Q.direction_of(m)
        except DelineoError:
            d = None
        bests = [Q.best_epoch(curves[s.id].get(m, {}), d) if d else None for s in runs]
        rows.append([f"best {m}", *[b[1] if b else None for b in bests]])
        rows.append(["  at epoch", *[b[0] if b else None for b in bests]])
        rows.append([f"last {m}", *[(lambda c: c[max(c)] if c else None)(curves[s.id].get(m, {})) for s in runs]])
    print(table(header, rows))
    out = plot_overlaid({labels[s.id]: curves[s.id] for s in runs}, metrics, args.out)
    print(f"learning curves: {out}")
    return 0


@action("best")
def _best(args: argparse.Namespace) -> int:
    from delineo.track import query as Q

    direction = args.direction or Q.direction_of(args.metric)
    with _store(args) as store, store.engine.connect() as conn:
        found = Q.best_run(conn, args.metric, direction, **_filter_kwargs(args))
    if found is None:
        raise DelineoError(f"no run has logged '{args.metric}'" +
                           (" among the runs that match" if any(_filter_kwargs(args).values()) else "") + ".")
    s, epoch, value = found
    print(f"run {s.id}: {s.experiment} fold {_fmt(s.fold)}, {args.metric} {value:.6g} ({direction}) at epoch {epoch}, "
          f"{s.status}; folder {s.run_dir}")
    if s.status != "finished" and s.run_dir:
        print(f"continue it with: delineo train {Path(s.run_dir) / 'config.yaml'} --fold {_fmt(s.fold)} --resume "
              f"--set train.epochs=N")
    return 0


@action("summary")
def _summary(args: argparse.Namespace) -> int:
    from delineo.track import query as Q
    from delineo.track.plots import plot_stats

    with _store(args) as store, store.engine.connect() as conn:
        runs, stats = Q.experiment_stats(conn, args.experiment, args.metric)
    out = args.out or args.runs / args.experiment / "db_summary"
    names = sorted(stats)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["metric", "epoch", "mean", "std", "n"])
    best = []
    for n in names:
        for e, (m, sd, k) in stats[n].items():
            w.writerow([n, e, f"{m:.6g}", f"{sd:.6g}", k])
        try:
            d = Q.direction_of(n)
        except DelineoError:
            continue
        b = Q.best_epoch({e: v[0] for e, v in stats[n].items()}, d)
        best.append([n, d, b[0], b[1], stats[n][b[0]][1], stats[n][b[0]][2]])
    from delineo.io.atomic import write_text_atomic

    Path(out).mkdir(parents=True, exist_ok=True)
    write_text_atomic(Path(out) / "summary.csv", buf.getvalue())
    plot = plot_stats(stats, [n for n in DEFAULT_METRICS if n in stats] if not args.metric else
                      [n for n in args.metric if n in stats], args.experiment, Path(out) / "summary.png") \
        if stats else None
    print(f"{args.experiment}: {len(runs)} run(s) (folds {', '.join(_fmt(s.fold) for s in runs)})")
    print("best epoch per metric (of the mean across runs)\n" +
          table(["metric", "direction", "epoch", "mean", "std", "n"], best))
    print(f"per-epoch mean and std: {Path(out) / 'summary.csv'}" + (f"; plot {plot}" if plot else ""))
    return 0


@action("export")
def _export(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from delineo.track import query as Q
    from delineo.track import schema as S

    with _store(args) as store, store.engine.connect() as conn:
        runs = Q.sessions(conn, **_filter_kwargs(args))
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        base = ["run", "experiment", "fold", "status"]
        if args.what == "epochs":
            per = {s.id: Q.curves(conn, s.id) for s in runs}
            names = sorted({n for c in per.values() for n in c})
            w.writerow([*base, "epoch", *names])
            for s in runs:
                for e in sorted({e for c in per[s.id].values() for e in c}):
                    w.writerow([s.id, s.experiment, _cell(s.fold), s.status, e, *[_cell(per[s.id].get(n, {}).get(e))
                                                                                  for n in names]])
        elif args.what == "runs":
            w.writerow([*base, "current_epoch", "created", "modified", "host", "git_commit", "seed", "config_hash",
                        "run_dir"])
            for s in runs:
                w.writerow([s.id, s.experiment, _cell(s.fold), s.status, s.current_epoch, s.created.isoformat(),
                            s.modified.isoformat(), _cell(s.host), _cell(s.git_commit), _cell(s.seed),
                            _cell(s.config_hash), _cell(s.run_dir)])
        else:
            w.writerow([*base, "case", "label", "metric", "value"])
            for s in runs:
                q = select(S.Evaluation.case_id, S.Evaluation.label, S.Evaluation.metric, S.Evaluation.value).where(
                    S.Evaluation.session_id == s.id).order_by(S.Evaluation.id)
                for c, lab, m, v in conn.execute(q):
                    w.writerow([s.id, s.experiment, _cell(s.fold), s.status, c, lab, m, _cell(v)])
    if args.out is None:
        print(buf.getvalue(), end="")
    else:
        from delineo.io.atomic import write_text_atomic

        write_text_atomic(args.out, buf.getvalue())
        print(f"{args.out}: {len(runs)} run(s), {args.what}")
    return 0


def _cell(v: Any) -> str:
    if v is None:
        return ""
    return f"{v:.8g}" if isinstance(v, float) else str(v)


@action("delete")
def _delete(args: argparse.Namespace) -> int:
    import shutil

    from delineo.track import query as Q

    with _store(args) as store:
        with store.engine.connect() as conn:
            runs = [Q.find_session(conn, r) for r in args.run]
        folders: list[Optional[str]] = []
        with store.engine.begin() as conn:
            for s in runs:
                folders.append(Q.delete_session(conn, s.id))
    for s, folder in zip(runs, folders):
        removed = ""
        if args.files and folder and Path(folder).is_dir():
            shutil.rmtree(folder)
            removed = f"; folder {folder} removed"
        print(f"run {s.id} ({s.experiment} fold {_fmt(s.fold)}) deleted from the database{removed}")
    return 0


@action("attach")
def _attach(args: argparse.Namespace) -> int:
    from delineo.track import query as Q

    path = args.file.resolve()
    if not path.is_file():
        raise DelineoError(f"{args.file}: file not found.")
    if bool(args.run) == bool(args.experiment):
        raise DelineoError("runs attach: give either --run or --experiment.")
    kind = args.kind or {".delineo": "delineo", ".html": "report"}.get(path.suffix.lower(), "file")
    with _store(args) as store:
        uid = None
        if args.run:
            with store.engine.connect() as conn:
                uid = Q.find_session(conn, args.run).uid
        (op,) = store.prepare([{"op": "artefact", "uid": uid, "experiment": args.experiment, "kind": kind,
                                "path": str(path), "sha256": None, "hash": True}])
        store.apply([op])
    print(f"{path}: recorded as {kind}, sha256 {op['sha256']}")
    return 0


@action("import")
def _import(args: argparse.Namespace) -> int:
    from delineo.track.folders import JOURNAL_FILE, find_run_dirs, import_ops
    from delineo.track.store import shown

    root = args.folder or args.runs
    n = 0
    with _store(args) as store:
        for run_dir in find_run_dirs(root):
            uid, ops = import_ops(run_dir)
            store.apply(store.prepare([o for o in ops if not o.get("op", "").startswith("_")]))
            (run_dir / JOURNAL_FILE).unlink(missing_ok=True)
            epochs = len([o for o in ops if o["op"] == "epoch"])
            print(f"{run_dir}: {epochs} epoch(s), {len([o for o in ops if o['op'] == 'checkpoint'])} checkpoint(s), "
                  f"{len([o for o in ops if o['op'] == 'prediction'])} prediction folder(s)")
            n += 1
    if not n:
        raise DelineoError(f"{root}: no run folders (a folder with config.yaml and log.csv or checkpoints/).")
    print(f"{n} run folder(s) imported into {shown(store.url)}")
    return 0
