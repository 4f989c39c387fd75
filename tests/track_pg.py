"""A real PostgreSQL server for the experiment-database tests, started by the test run itself.

``initdb`` makes a throw-away cluster in a temporary folder; the server listens on a free
port of 127.0.0.1 and on a unix socket in that folder, with fsync off (the tests check
behaviour, not durability of the test server). PostgreSQL refuses to run as root, so as
root the cluster belongs to the ``postgres`` user (Debian's package creates it) and every
server command runs through ``runuser``. Binaries come from PATH or /usr/lib/postgresql/*/bin
(Debian's ``postgresql`` package, installed by ``.ci/run``).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Optional


def find_pg_bin() -> Optional[Path]:
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).resolve().parent
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(d, "pg_ctl").exists() and Path(d, "initdb").exists():
            return Path(d)
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """One cluster; ``start``/``stop`` may be called repeatedly (the tests take it away mid-run)."""

    def __init__(self) -> None:
        self.bin = find_pg_bin()
        if self.bin is None:
            raise RuntimeError("PostgreSQL binaries (initdb, pg_ctl) not found; install Debian's postgresql package")
        self.root = Path(tempfile.mkdtemp(prefix="delineo-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.user: Optional[str] = None
        if os.geteuid() == 0:
            self.user = "postgres"
            pw = pwd.getpwnam(self.user)
            os.chmod(self.root, 0o700)
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", "delineo", "--auth=trust", "-E", "UTF8", "--no-sync")
        self.databases = 0

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [str(self.bin / tool), *args]
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=120)

    def start(self) -> None:
        opts = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=50")
        out = self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-o", opts, "-w",
                        "-t", "60", "start", check=False)
        if out.returncode != 0:
            log = (self.root / "server.log").read_text() if (self.root / "server.log").exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {out.stderr}\n{log[-2000:]}")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop", check=False)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://delineo@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database; returns its URL."""
        import psycopg

        self.databases += 1
        name = f"t{self.databases}_{int(time.time() * 1000) % 100000}"
        with psycopg.connect(host="127.0.0.1", port=self.port, user="delineo", dbname="postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


# ----------------------------------------------------------------------------- pytest fixtures
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def pg_server():
    """A PostgreSQL server for the whole test session (skipped only where no binaries exist)."""
    if find_pg_bin() is None:
        pytest.skip("PostgreSQL binaries not installed (Debian package postgresql; .ci/run installs it)")
    pytest.importorskip("psycopg")
    server = PostgresServer()
    server.start()
    yield server
    server.destroy()


@pytest.fixture
def pg_url(pg_server) -> str:
    return pg_server.new_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    """The same test on a SQLite file and on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'runs' / 'delineo.db'}"
    return request.getfixturevalue("pg_url")
