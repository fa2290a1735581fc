"""A real PostgreSQL for the test session: ``initdb`` and ``pg_ctl`` in a temporary directory on a
free port, trust auth on 127.0.0.1, stopped at the session's end.

Why a real server: the store's PostgreSQL behaviour (transactional DDL, advisory locks, boolean
types) is what these tests check, and no stand-in has it. Without the binaries the tests that
need it skip, saying why.
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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

#: Where Debian's postgresql package puts the binaries (not on PATH).
DEBIAN_BINARIES = "/usr/lib/postgresql/*/bin"


def find_binaries() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``, or None when PostgreSQL is not installed."""
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(os.path.realpath(initdb)).parent
    for directory in sorted(glob.glob(DEBIAN_BINARIES), reverse=True):
        if (Path(directory) / "initdb").exists() and (Path(directory) / "pg_ctl").exists():
            return Path(directory)
    return None


def _free_port() -> int:
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
        pytest.skip("running as root and there is no postgres user to run PostgreSQL as")
    return ["runuser", "-u", "postgres", "--"], uid


@dataclass
class PostgresServer:
    """One running server; ``url(name)`` creates a fresh database on it."""

    bin_dir: Path
    data_dir: Path
    port: int
    prefix: list[str]

    @classmethod
    def start(cls, base: Path) -> PostgresServer:
        bin_dir = find_binaries()
        if bin_dir is None:
            pytest.skip(f"PostgreSQL is not installed (no initdb/pg_ctl on PATH or in {DEBIAN_BINARIES})")
        prefix, uid = _as_server_user()
        if uid is not None:
            os.chown(base, uid, -1)
        data_dir = base / "data"
        subprocess.run(
            [*prefix, str(bin_dir / "initdb"), "-D", str(data_dir), "-U", "postgres", "-A", "trust", "-E", "UTF8"],
            check=True,
            capture_output=True,
        )
        server = cls(bin_dir, data_dir, _free_port(), prefix)
        # fsync off: a test database need not survive a power cut, and syncing costs seconds.
        options = f"-p {server.port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        subprocess.run(
            [
                *prefix,
                str(bin_dir / "pg_ctl"),
                "-D",
                str(data_dir),
                "-o",
                options,
                "-l",
                str(base / "log"),
                "-w",
                "start",
            ],
            check=True,
            capture_output=True,
        )
        return server

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database; returns its URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        subprocess.run(
            [*self.prefix, str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", "immediate", "stop"],
            capture_output=True,
        )


def postgres_server_fixture() -> Iterator[PostgresServer]:
    """The session fixture's body (``tests/conftest.py`` registers it as ``postgres_server``)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed (pip install -r requirements.txt)")
    # Not under pytest's temp root: that is private to root, and the server may run as postgres.
    base = Path(tempfile.mkdtemp(prefix="jobs-postgres-"))
    try:
        server = PostgresServer.start(base)
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)
