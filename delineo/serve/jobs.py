"""Queued jobs with bounded concurrency: model runs and explanations never overload the machine.

At most ``workers`` jobs run at once (threads: PyTorch releases the GIL, and the web server
keeps answering while a job runs); more wait in the queue in an explicit ``queued`` state with
their place in line, and past ``max_queued`` waiting jobs a new one is refused (HTTP 503, "busy")
instead of piling up memory. Every state change is written to the workspace and announced to
listeners (the server-sent event streams), so progress is live and a restarted server knows
which jobs were cut short.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from delineo.errors import DelineoError
from delineo.serve.store import Workspace, new_id, now

log = logging.getLogger(__name__)

Work = Callable[[Callable[[float, str], None]], dict[str, Any]]


class Busy(RuntimeError):
    """The queue is full (HTTP 503 with Retry-After)."""


class JobQueue:
    def __init__(self, ws: Workspace, workers: int = 1, max_queued: int = 16) -> None:
        self.ws, self.workers, self.max_queued = ws, max(1, int(workers)), max(0, int(max_queued))
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="delineo-job")
        self._jobs: dict[str, dict[str, Any]] = {}
        self._waiting: deque[str] = deque()
        self._cond = threading.Condition()
        self._version = 0
        self._io = threading.Lock()  # job records are written outside _cond: an fsync never stalls a reader
        self._written: dict[str, int] = {}
        for job in ws.load_jobs():  # jobs cut short by a stop or crash stay visible, marked
            if job.get("state") in ("queued", "running"):
                job.update(state="interrupted", message="the server stopped before this job finished; run it again",
                           finished=now())
                ws.save_job(job)
            self._jobs[job["id"]] = job

    # ------------------------------------------------------------------ submit and run
    def submit(self, kind: str, study: str, params: dict[str, Any], work: Work) -> dict[str, Any]:
        with self._cond:
            if len(self._waiting) >= self.max_queued + self._free_slots():
                raise Busy(f"busy: {len(self._waiting)} jobs are already waiting; try again in a minute.")
            job = {"id": new_id(), "kind": kind, "study": study, "params": params, "state": "queued",
                   "progress": 0.0, "message": "queued", "submitted": now(), "result": None}
            self._jobs[job["id"]] = job
            self._waiting.append(job["id"])
            snap = self._changed(job)
        self._persist(snap)
        self._pool.submit(self._run, job["id"], work)
        return self.public(job)

    def _free_slots(self) -> int:
        running = sum(1 for j in self._jobs.values() if j["state"] == "running")
        return max(0, self.workers - running)

    def _run(self, jid: str, work: Work) -> None:
        with self._cond:
            job = self._jobs[jid]
            self._waiting.remove(jid)
            job.update(state="running", message="starting", started=now())
            snap = self._changed(job)
        self._persist(snap)
        t0 = time.perf_counter()

        def progress(fraction: float, message: str) -> None:
            with self._cond:
                job.update(progress=round(float(fraction), 3), message=message)
                self._changed(job, persist=False)

        try:
            result = work(progress)
            with self._cond:
                job.update(state="done", progress=1.0, message="done", result=result, finished=now(),
                           seconds=round(time.perf_counter() - t0, 3))
                snap = self._changed(job)
            self._persist(snap)
        except Exception as exc:  # the job fails, the server does not
            if not isinstance(exc, (DelineoError, LookupError, ValueError)):
                log.error("job %s failed:\n%s", jid, traceback.format_exc())
            with self._cond:
                job.update(state="failed", message=str(exc) or type(exc).__name__, finished=now(),
                           seconds=round(time.perf_counter() - t0, 3))
                snap = self._changed(job)
            self._persist(snap)

    def _changed(self, job: dict[str, Any], persist: bool = True) -> tuple[int, dict[str, Any]] | None:
        """Record a change (caller holds the condition) and wake the event streams; returns the
        snapshot to write with :meth:`_persist` once the condition is released."""
        self._version += 1
        self._cond.notify_all()
        return (self._version, dict(job)) if persist else None

    def _persist(self, snap: tuple[int, dict[str, Any]] | None) -> None:
        """Write a job record (newest state wins even when two writers race)."""
        if snap is None:
            return
        version, job = snap
        with self._io:
            if self._written.get(job["id"], -1) < version:
                self.ws.save_job(job)
                self._written[job["id"]] = version

    # ------------------------------------------------------------------ read
    def public(self, job: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in job.items()}
        if job["state"] == "queued":
            ahead = list(self._waiting).index(job["id"]) if job["id"] in self._waiting else 0
            running = sum(1 for j in self._jobs.values() if j["state"] == "running")
            out["queue_position"] = ahead + 1
            out["message"] = (f"busy, queued: {ahead} job(s) ahead, {running} running" if running >= self.workers
                              else "queued")
        return out

    def get(self, jid: str) -> dict[str, Any]:
        with self._cond:
            job = self._jobs.get(jid)
            if job is None:
                raise LookupError(f"job '{str(jid)[:40]}' does not exist.")
            return self.public(job)

    def list(self, study: str | None = None) -> list[dict[str, Any]]:
        with self._cond:
            jobs = [self.public(j) for j in self._jobs.values() if study is None or j["study"] == study]
        return sorted(jobs, key=lambda j: j["submitted"], reverse=True)

    def counts(self) -> dict[str, int]:
        with self._cond:
            out: dict[str, int] = {}
            for j in self._jobs.values():
                out[j["state"]] = out.get(j["state"], 0) + 1
            return out

    def wait_change(self, version: int, timeout: float) -> int:
        """Block (in a worker thread) until a job changes after ``version``; the new version."""
        with self._cond:
            self._cond.wait_for(lambda: self._version != version, timeout)
            return self._version

    @property
    def version(self) -> int:
        return self._version

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
