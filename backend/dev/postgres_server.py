"""A throwaway PostgreSQL for tests, chaos scenarios and benchmarks: ``initdb`` and ``pg_ctl`` in
a temporary directory on a free port, trust auth on 127.0.0.1.

Why a real server: the store's PostgreSQL behaviour (transactional DDL, advisory locks, row
locks, deadlocks) is what the callers check or measure, and no stand-in has it. No pytest here:
what cannot start raises ``PostgresUnavailable`` with the reason, and tests turn it into a skip.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

#: Where Debian's postgresql package puts the binaries (not on PATH).
DEBIAN_BINARIES = "/usr/lib/postgresql/*/bin"


class PostgresUnavailable(RuntimeError):
    """PostgreSQL cannot be started here (not installed, no user to run it as, no driver)."""


def find_binaries() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``, or None when PostgreSQL is not installed."""
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(os.path.realpath(initdb)).parent
    for directory in sorted(glob.glob(DEBIAN_BINARIES), reverse=True):
        if (Path(directory) / "initdb").exists() and (Path(directory) / "pg_ctl").exists():
            return Path(directory)
    return None


def unavailable_reason() -> str | None:
    """Why a server cannot be started here, or None when it can (checked without starting one)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install -r requirements.txt)"
    if find_binaries() is None:
        return f"PostgreSQL is not installed (no initdb/pg_ctl on PATH or in {DEBIAN_BINARIES})"
    try:
        _as_server_user()
    except PostgresUnavailable as exc:
        return str(exc)
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _as_server_user() -> tuple[list[str], int | None]:
    """The command prefix and uid that run the server: PostgreSQL refuses to run as root, so root
    runs it as the ``postgres`` user (Debian's package creates it)."""
    if os.geteuid() != 0:
        return [], None
    try:
        uid = pwd.getpwnam("postgres").pw_uid
    except KeyError:
        raise PostgresUnavailable("running as root and there is no postgres user to run PostgreSQL as") from None
    return ["runuser", "-u", "postgres", "--"], uid


@dataclass
class PostgresServer:
    """One server in ``base``; ``launch()`` makes one, ``close()`` stops it and removes ``base``.

    ``stop()``, ``start()`` and ``restart(mode)`` keep the data and the port, so chaos scenarios
    can take the database away under load and bring it back where clients expect it.
    """

    bin_dir: Path
    base: Path
    port: int
    prefix: list[str]

    @property
    def data_dir(self) -> Path:
        return self.base / "data"

    @property
    def log_path(self) -> Path:
        """The server's log (``deadlock detected`` lines and the like end up here)."""
        return self.base / "log"

    @classmethod
    def launch(cls, base: Path | None = None, *, port: int = 0, max_connections: int = 200) -> PostgresServer:
        """initdb a cluster in ``base`` (default: a new temporary directory) and start it.

        Raises:
            PostgresUnavailable: no binaries, no driver, or root without a postgres user.
        """
        reason = unavailable_reason()
        if reason:
            raise PostgresUnavailable(reason)
        bin_dir = find_binaries()
        assert bin_dir is not None  # unavailable_reason() checked it
        prefix, uid = _as_server_user()
        # Not under pytest's temp root by default: that is private to root, and the server may
        # run as postgres.
        base = Path(base) if base is not None else Path(tempfile.mkdtemp(prefix="jobs-postgres-"))
        base.mkdir(parents=True, exist_ok=True)
        if uid is not None:
            os.chown(base, uid, -1)
        server = cls(bin_dir, base, port or free_port(), prefix)
        server._run("initdb", "-D", str(server.data_dir), "-U", "postgres", "-A", "trust", "-E", "UTF8")
        # fsync off: a test database need not survive a power cut, and syncing costs seconds.
        # Written to postgresql.conf, so a restart by pg_ctl (ours or anyone's) keeps them.
        settings = {
            "port": server.port,
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{base}'",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": max_connections,
        }
        conf = "".join(f"{key} = {value}\n" for key, value in settings.items())
        with open(server.data_dir / "postgresql.conf", "a") as file:
            file.write(conf)
        server.start()
        return server

    def _run(self, binary: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([*self.prefix, str(self.bin_dir / binary), *args], capture_output=True, text=True)
        if check and result.returncode != 0:
            raise RuntimeError(f"{binary} {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def start(self) -> None:
        """Start the server (after ``stop()``) and wait until it accepts connections."""
        self._run("pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_path), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: ``fast`` (ends sessions cleanly) or ``immediate`` (as a crash does)."""
        self._run("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "stop", check=False)

    def restart(self, mode: str = "immediate") -> None:
        """Stop (by default as a crash) and start again on the same port with the same data."""
        self.stop(mode)
        self.start()

    def is_running(self) -> bool:
        return self._run("pg_ctl", "-D", str(self.data_dir), "status", check=False).returncode == 0

    def close(self) -> None:
        """Stop the server and remove its directory."""
        self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        """The SQLAlchemy URL (``DATABASE_URL``) of ``database`` on this server."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def dsn(self, database: str = "postgres") -> str:
        """The libpq URL of ``database``, for psycopg directly."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def execute(self, sql: str, database: str = "postgres") -> None:
        """Run one statement outside a transaction (CREATE/DROP DATABASE need that)."""
        import psycopg

        with psycopg.connect(self.dsn(database), autocommit=True) as conn:
            conn.execute(sql)

    def create_database(self, name: str | None = None, *, template: str | None = None) -> str:
        """A new database (empty, or a copy of ``template``); returns its URL."""
        name = name or f"t_{uuid.uuid4().hex[:12]}"
        clause = f' TEMPLATE "{template}"' if template else ""
        self.execute(f'CREATE DATABASE "{name}"{clause}')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop ``name``, ending any session still on it (a test's leftover pool)."""
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
