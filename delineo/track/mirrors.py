"""Mirrors: the same per-epoch metrics, resolved config and final file paths, copied to other
trackers (TensorBoard, MLflow) for people whose tools read those.

The experiment database stays the complete record; a mirror is a convenience and must never cost
the training anything. So each mirror runs on its own daemon thread behind a queue (one mirror's
hung server cannot hold up another): the training loop only appends to the queue. The heavy
packages (MLflow, TensorBoard) are imported on that thread, the first write opens the run, and a
write that fails is retried with a growing pause (0.5 s to 30 s) until the training ends. A mirror
says so once, in one warning sentence, when its package is missing or it cannot write; at the end
the training waits a bounded time for what is queued (up to 2 minutes while the mirror delivers,
2 seconds while it is failing) and goes on.

Mirrors are looked up by name in a registry (:func:`register_mirror`); the built-in ones live in
:mod:`delineo.track.mirror_backends`. This module imports nothing heavy, so that
:mod:`delineo.config` can check mirror names when an experiment file is loaded.
"""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
import json
import logging
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional

log = logging.getLogger(__name__)

#: how to get the packages every built-in mirror needs
EXTRA = "pip install 'delineo[mirrors]'"

_MIRRORS: dict[str, type["Mirror"]] = {}


@dataclass(frozen=True)
class MirrorContext:
    """What a mirror needs to know about the session it copies."""

    run_dir: Path
    runs_root: Path
    experiment: str
    fold: Optional[int]
    uid: str  # the experiment database's session id (kept in track.json; --resume keeps it)
    resume: bool
    start_epoch: int  # epochs already done (a resumed run continues after them)
    options: dict[str, Any] = field(default_factory=dict)  # the experiment's ``track`` section


class Mirror(ABC):
    """One tracker that receives a copy. Subclasses set ``name`` and ``module`` (the package whose
    absence turns the mirror off) and implement the four calls, which run on the mirror's own
    thread in this order: ``__init__`` (open or continue the run), ``params`` once, ``epoch``
    for every epoch, ``finish`` once."""

    name: ClassVar[str]
    module: ClassVar[str]

    def __init__(self, ctx: MirrorContext) -> None:
        self.ctx = ctx

    @classmethod
    def where(cls, ctx: MirrorContext) -> str:
        """Where the copy of session ``ctx`` goes, for messages (known before the mirror opens)."""
        return ""

    @abstractmethod
    def params(self, flat: dict[str, str]) -> None:
        """One backend's write; see the registry."""

    @abstractmethod
    def epoch(self, epoch: int, metrics: dict[str, float], wall: float) -> None:
        """One backend's write; see the registry."""

    @abstractmethod
    def evaluation(self, metrics: dict[str, float], step: int, tags: dict[str, str]) -> None:
        """The evaluation summary after training (``eval.*`` metrics at the last epoch) and the
        report's path; the run's status is left as the training set it."""

    @abstractmethod
    def finish(self, status: Optional[str], tags: dict[str, str]) -> None:
        """The end of the session (status None: an evaluation that leaves the status alone)."""


def register_mirror(cls: type[Mirror]) -> type[Mirror]:
    """Class decorator: make a mirror selectable by its ``name`` (``track.mirrors``, ``--mirror``)."""
    if cls.name in _MIRRORS and _MIRRORS[cls.name] is not cls:
        raise ValueError(f"mirror '{cls.name}' is already registered")
    _MIRRORS[cls.name] = cls
    return cls


def registry() -> dict[str, type[Mirror]]:
    import delineo.track.mirror_backends  # noqa: F401  (registers the built-in mirrors)

    return dict(_MIRRORS)


def mirror_names() -> list[str]:
    return sorted(registry())


def check_names(names: list[str]) -> list[str]:
    """The mirror names, lower-cased and without repeats; ValueError naming an unknown one."""
    from delineo.registry import closest

    known = registry()
    out: list[str] = []
    for raw in names:
        name = str(raw).strip().lower()
        if name not in known:
            raise ValueError(f"unknown mirror '{raw}'{closest(name, known)}; known: {', '.join(sorted(known))}")
        if name not in out:
            out.append(name)
    return out


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """The resolved config as ``section.key: text`` pairs (lists as JSON), the form both MLflow
    params and TensorBoard hyper-parameters take; list items of sections are numbered
    (``preprocess.intensity.0.preset``)."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, path + "."))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for i, item in enumerate(value):
                flat.update(flatten(item, f"{path}.{i}."))
        else:
            flat[path] = value if isinstance(value, str) else json.dumps(value)
    return flat


def final_tags(ctx: MirrorContext, status: Optional[str]) -> dict[str, str]:
    """The session's identity and the files it ended with (those that exist), as tags."""
    run = ctx.run_dir
    tags = {"delineo.run_dir": str(run), "delineo.session": ctx.uid}
    if status is not None:
        tags["delineo.status"] = status
    for key, rel in (("delineo.checkpoint.best", "checkpoints/best.pt"), ("delineo.checkpoint.last", "checkpoints/last.pt"),
                     ("delineo.config", "config.yaml"), ("delineo.log", "log.csv"), ("delineo.report", "report.html"),
                     ("delineo.metrics", "metrics/summary.json")):
        if (run / rel).is_file():
            tags[key] = str(run / rel)
    return tags


def summary_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """An evaluation summary (metrics/summary.json) as flat metrics: ``eval.mean_dice`` and the
    mean of every metric per label, ``eval.<label>.<metric>``; undefined values are left out."""
    out: dict[str, float] = {}
    if isinstance(summary.get("mean_dice"), (int, float)):
        out["eval.mean_dice"] = float(summary["mean_dice"])
    for label, metrics in (summary.get("labels") or {}).items():
        for metric, stats in (metrics or {}).items():
            mean = stats.get("mean") if isinstance(stats, dict) else None
            if isinstance(mean, (int, float)) and not isinstance(mean, bool):
                out[f"eval.{label}.{metric}"] = float(mean)
    return out


class _MirrorThread:
    """Delivers one mirror's operations in order on a daemon thread; see the module docstring."""

    def __init__(self, cls: type[Mirror], ctx: MirrorContext, first: tuple[str, ...]) -> None:
        self.cls, self.ctx = cls, ctx
        self._queue: deque[tuple[Any, ...]] = deque([first])
        self._cv = threading.Condition()
        self._busy = self._stopped = False
        self.failures = 0
        self.failing = False
        self.warned = False
        self.epochs = 0
        self.submit_seconds = 0.0  # spent in the training thread
        self.epoch_seconds = 0.0  # spent on this thread delivering epochs
        self.delivered_epochs = 0
        self._thread = threading.Thread(target=self._run, name=f"delineo-mirror-{cls.name}", daemon=True)
        self._thread.start()

    def submit(self, op: tuple[Any, ...]) -> None:
        t0 = time.perf_counter()
        with self._cv:
            self._queue.append(op)
            self._cv.notify_all()
        self.submit_seconds += time.perf_counter() - t0

    def warn(self, text: str) -> None:
        (log.warning if not self.warned else log.info)(text)
        self.warned = True

    def _run(self) -> None:
        mirror: Optional[Mirror] = None
        pause = 0.5
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._queue or self._stopped)
                if self._stopped:
                    return
                op = self._queue[0]
                self._busy = True
            t0 = time.perf_counter()
            try:
                if mirror is None:
                    mirror = self.cls(self.ctx)
                getattr(mirror, op[0])(*op[1:])
            except ImportError as exc:  # installed but broken: retrying cannot help
                self.warn(f"{self.cls.name} mirror off for this run: its package does not import ({exc}); "
                           f"reinstall it with {EXTRA}")
                with self._cv:
                    self._queue.clear()
                    self._busy, self._stopped = False, True
                    self._cv.notify_all()
                return
            except Exception as exc:  # unreachable server, full disk, ...: keep the operation, retry
                self.failures += 1
                self.failing = True
                where = self.cls.where(self.ctx)
                self.warn(f"{self.cls.name} mirror{' ' + where if where else ''} cannot write ({_reason(exc)}); "
                           "training goes on and the mirror retries in the background")
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()
                    self._cv.wait_for(lambda: self._stopped, timeout=pause)
                pause = min(pause * 2, 30.0)
                continue
            if op[0] == "epoch":
                self.epoch_seconds += time.perf_counter() - t0
                self.delivered_epochs += 1
            if self.failing:
                log.info("%s mirror writes again: backlog delivered", self.cls.name)
            self.failing, pause = False, 0.5
            with self._cv:
                if self._queue and self._queue[0] is op:
                    self._queue.popleft()
                self._busy = False
                self._cv.notify_all()

    def close(self, op: tuple[Any, ...], healthy_wait: float, failing_wait: float) -> int:
        """Queue the last operation, wait for delivery (longer while the mirror delivers than while
        it fails), stop the thread; returns how many operations were not delivered."""
        self.submit(op)
        t0 = time.monotonic()
        with self._cv:
            while self._queue and not self._stopped:
                limit = failing_wait if self.failing else healthy_wait
                left = t0 + limit - time.monotonic()
                if left <= 0:
                    break
                self._cv.wait(min(left, 0.2))
            undelivered = len(self._queue)
            self._queue.clear()
            self._stopped = True
            self._cv.notify_all()
        return undelivered


class Mirrors:
    """The mirrors of one training session; a tracker the training loop calls like the database's."""

    def __init__(self, threads: list[_MirrorThread]) -> None:
        self.threads = threads

    def epoch(self, row: dict[str, Any], epoch: int) -> None:
        """Epoch ``epoch`` (1-based) is done: queue its numeric values for every mirror."""
        metrics = {k: float(v) for k, v in row.items()
                   if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        wall = time.time()
        for t in self.threads:
            t.epochs += 1
            t.submit(("epoch", epoch, metrics, wall))

    def close(self, status: Optional[str] = "finished", healthy_wait: float = 120.0,
              failing_wait: float = 2.0) -> None:
        """Send the final tags and wait (bounded) for each mirror; never raises."""
        for t in self.threads:
            try:
                self._close_one(t, status, healthy_wait, failing_wait)
            except Exception as exc:
                log.warning("%s mirror: not closed (%s)", t.cls.name, exc)

    @staticmethod
    def _close_one(t: _MirrorThread, status: Optional[str], healthy_wait: float, failing_wait: float) -> None:
        waited = time.perf_counter()
        lost = t.close(("finish", status, final_tags(t.ctx, status)), healthy_wait, failing_wait)
        waited = time.perf_counter() - waited
        if lost:
            t.warn(f"{t.cls.name} mirror: {lost} write(s) not delivered (the experiment database and "
                   "log.csv have everything)")
        elif t.epochs:
            log.info("%s mirror: %d epoch(s); %.3f ms per epoch in the training loop, %.1f ms per epoch "
                     "written in the background; %.1f s waited at the end", t.cls.name, t.epochs,
                     1000 * t.submit_seconds / t.epochs, 1000 * t.epoch_seconds / max(t.delivered_epochs, 1),
                     waited)


def start_mirrors(names: list[str], ctx: MirrorContext, config: dict[str, Any]) -> Optional[Mirrors]:
    """Start the named mirrors for a training (None if none starts). A name whose package is not
    installed gets one warning naming the extra; nothing here raises or waits."""
    return _start(names, ctx, ("params", flatten(config)))


def mirror_evaluation(names: list[str], ctx: MirrorContext, summary: dict[str, Any]) -> None:
    """Send an evaluated run's summary to the mirrors of its training (the same MLflow run, found
    by session id; the same TensorBoard folder) and wait for them, bounded as at a training's end."""
    mirrors = _start(names, ctx, ("evaluation", summary_metrics(summary), ctx.start_epoch, final_tags(ctx, None)))
    if mirrors is not None:
        mirrors.close(None)


def _start(names: list[str], ctx: MirrorContext, first: tuple[Any, ...]) -> Optional[Mirrors]:
    threads = []
    known = registry()
    for name in names:
        cls = known.get(name)
        if cls is None:
            log.warning("unknown mirror '%s' ignored; known: %s", name, ", ".join(sorted(known)))
            continue
        if not _installed(cls.module):
            log.warning("%s mirror off for this run: the '%s' package is not installed; install it with %s",
                        name, cls.module, EXTRA)
            continue
        threads.append(_MirrorThread(cls, ctx, first))
    return Mirrors(threads) if threads else None


def _reason(exc: BaseException) -> str:
    """The gist of an error for a one-sentence warning: the operating system's reason when a
    client library wraps one (``[Errno 111] Connection refused``), else its first line, cut short."""
    text = str(exc).strip()
    errno = re.search(r"\[Errno -?\d+\] [^'\")\]]+", text)
    if errno:
        return errno.group(0).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    return first if len(first) <= 200 else first[:197] + "..."


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False

