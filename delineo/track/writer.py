"""A background writer: training hands it operations and goes on; it writes them when it can.

Why a thread and a queue rather than writing in the loop: a database on another machine can be
slow, down or locked by another writer, and none of that may cost an epoch. ``submit`` only
appends to an in-memory queue; the thread applies everything queued in one transaction,
retries with a growing pause (0.5 s to 30 s) while the database is unreachable, and writes the
backlog as soon as it answers again. ``close`` waits a bounded time, then writes whatever is
still unwritten to a journal file (JSON lines) that the next tracker of the same run, or
``delineo runs import``, replays. Operations are idempotent upserts, so a replay after a
commit whose acknowledgement was lost does no harm.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Optional

log = logging.getLogger(__name__)

_BATCH = 500
_DROP_JOURNAL = "_drop_journal"  # internal: delete a replayed journal once its operations are committed


def sha256_file(path: Path, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            h.update(chunk)
    return h.hexdigest()


def read_journal(path: Path) -> list[dict[str, Any]]:
    """Operations left in a journal (a torn last line from a crash is skipped)."""
    ops = []
    if not path.is_file():
        return ops
    for line in path.read_text().splitlines():
        try:
            ops.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("%s: skipped an incomplete line", path)
    return ops


class BufferedWriter:
    """Applies operations to the database at ``url`` on a daemon thread; never blocks the caller."""

    def __init__(self, url: str, journal: Optional[Path] = None, max_pause: float = 30.0) -> None:
        self.url, self.journal, self.max_pause = url, journal, max_pause
        self._pending: deque[dict[str, Any]] = deque()
        self._cv = threading.Condition()
        self._busy = False
        self._closing = False
        self._stopped = False
        self._store = None
        self.written = 0
        self.write_seconds = 0.0
        self.failures = 0
        self._thread = threading.Thread(target=self._run, name="delineo-track", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ caller side
    def submit(self, *ops: dict[str, Any]) -> None:
        with self._cv:
            self._pending.extend(ops)
            self._cv.notify_all()

    @property
    def pending(self) -> int:
        with self._cv:
            return len([o for o in self._pending if o.get("op") != _DROP_JOURNAL])

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything submitted is written (True) or ``timeout`` seconds pass (False)."""
        with self._cv:
            self._cv.notify_all()
            return self._cv.wait_for(lambda: not self._pending and not self._busy, timeout)

    def close(self, timeout: float = 5.0) -> int:
        """Write what can be written within ``timeout``; journal the rest. Returns the journalled count."""
        with self._cv:
            self._closing = True
            self._cv.notify_all()
            self._cv.wait_for(lambda: not self._pending and not self._busy, timeout)
            self._stopped = True
            left = [o for o in self._pending if o.get("op") != _DROP_JOURNAL]
            self._pending.clear()
            self._cv.notify_all()
        if left and self.journal is not None:
            from delineo.io.atomic import write_text_atomic

            write_text_atomic(self.journal, "".join(json.dumps(o) + "\n" for o in left))
            log.warning("experiment database %s unreachable: %d write(s) kept in %s, written by the next "
                        "--resume or `delineo runs import`", self._shown(), len(left), self.journal)
        elif left:
            log.warning("experiment database %s unreachable: %d write(s) lost", self._shown(), len(left))
        self._thread.join(timeout=1.0)
        if self._store is not None and not self._thread.is_alive():
            self._store.close()
        return len(left)

    # ------------------------------------------------------------------ thread side
    def _shown(self) -> str:
        from delineo.track.store import shown

        return shown(self.url)

    def _run(self) -> None:
        pause = 0.5
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._pending or self._stopped)
                if self._stopped:
                    return
                batch = [self._pending[i] for i in range(min(len(self._pending), _BATCH))]
                self._busy = True
            try:
                self._write(batch)
            except Exception as exc:  # any failure: keep the batch, pause, retry
                self.failures += 1
                (log.warning if self.failures == 1 else log.debug)(
                    "experiment database %s: write failed (%s); training goes on, retrying", self._shown(),
                    str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
                if self._store is not None and _is_permanent(exc):
                    batch = self._write_one_by_one(batch)
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()
                    if not batch:
                        continue
                    self._cv.wait_for(lambda: self._stopped or self._closing, timeout=pause)
                    pause = 0.1 if self._closing else min(pause * 2, self.max_pause)
                continue
            with self._cv:
                if self._stopped:  # closed meanwhile: the batch was journalled too (a replay is harmless)
                    self._busy = False
                    self._cv.notify_all()
                    return
                for _ in batch:
                    self._pending.popleft()
                self._busy = False
                self._cv.notify_all()
            if self.failures and pause > 0.5:
                log.info("experiment database %s reachable again: backlog written", self._shown())
            pause = 0.5

    def _write(self, batch: list[dict[str, Any]]) -> None:
        from delineo.track.store import Store

        if self._store is None:
            self._store = Store(self.url)
        todo = self._store.prepare([o for o in batch if o.get("op") != _DROP_JOURNAL])
        t0 = time.perf_counter()
        self._store.apply(todo)
        self.write_seconds += time.perf_counter() - t0
        self.written += len(batch)
        for o in batch:
            if o.get("op") == _DROP_JOURNAL:
                Path(o["path"]).unlink(missing_ok=True)

    def _write_one_by_one(self, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """After a non-connection error, write what can be written and drop (loudly) what cannot;
        returns the batch to retry (empty when only bad operations were in it)."""
        assert self._store is not None
        for o in batch:
            try:
                if o.get("op") != _DROP_JOURNAL:
                    self._store.apply([o])
            except Exception as exc:
                if not _is_permanent(exc):
                    return batch[batch.index(o):]
                log.error("experiment database: dropped operation %s: %s", o.get("op"), exc)
            with self._cv:
                if self._stopped:
                    return []
                self._pending.popleft()
        return []


def _is_permanent(exc: BaseException) -> bool:
    """An error that retrying will not cure (a bad operation), as opposed to an unreachable,
    restarting or locked database."""
    from sqlalchemy.exc import DBAPIError, IntegrityError

    from delineo.track.store import StoreError

    if isinstance(exc, IntegrityError):
        return True
    if isinstance(exc, DBAPIError):
        return False
    if isinstance(exc, StoreError):
        return "no session" in str(exc)
    return not isinstance(exc, OSError)
