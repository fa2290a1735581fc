"""Several API hosts on one cluster: each an API server process of its own (``python
backend/app.py``, or gunicorn with its workers) on its own port, sharing the cluster's Redis and
store, as two machines behind a load balancer would.

Why a module of its own: the single-API scenarios (F1-F12) keep ``Cluster.start_api``; the
PostgreSQL scenarios (F13-F15) start, kill and restart hosts by name and judge each host's answers
and log apart (a 5xx from the host that stayed up is a failure, a refused connection from the one
that was killed is the fault itself).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from backend.dev.redis_server import free_port
from tests.chaos.client import Api
from tests.chaos.settings import ROOT
from tests.chaos.stack import Cluster

GUNICORN = Path(sys.executable).parent / "gunicorn"
#: An access-log line (Werkzeug's and gunicorn's both quote the request line) answered 5xx.
_ANSWERED_5XX = re.compile(r'HTTP/1\.[01]" 5\d\d ')
#: What Werkzeug ("Port N is in use by another program") and gunicorn ("Connection in use")
#: print when the port was taken between ``free_port()`` and the bind.
_PORT_TAKEN = re.compile(r"is in use by another program|Connection in use|Address already in use")


@dataclass
class ApiHost:
    """One API server process: ``python backend/app.py`` or, given ``gunicorn_workers``, gunicorn
    with that many worker processes; restarted on the same port."""

    cluster: Cluster
    name: str
    gunicorn_workers: int = 0
    port: int = 0
    process: subprocess.Popen | None = None
    starts: list[float] = field(default_factory=list)
    kills: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        # A port of our choosing may be moved once if another program takes it before the
        # first bind (``wait_up``); a port the caller gave may already be in others' hands.
        self.port_given = bool(self.port)
        self.port = self.port or free_port()
        self.api = Api(f"http://127.0.0.1:{self.port}")
        self._launch_offset = 0
        self.log_path = self.cluster.dir / f"api-{self.name}.log"
        self.cluster.api_hosts.append(self)

    @property
    def base_url(self) -> str:
        return self.api.base_url

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def command(self) -> list[str]:
        if not self.gunicorn_workers:
            return [sys.executable, "backend/app.py"]
        return [str(GUNICORN), "-c", "backend/gunicorn_conf.py", "backend.app:create_app()"]

    def launch(self, **extra_env: str) -> subprocess.Popen:
        """Start the process and return at once (``wait_up`` waits for it to answer)."""
        self._launch_env = extra_env
        env = {
            "PORT": str(self.port),
            "GUNICORN_BIND": f"127.0.0.1:{self.port}",
            "GUNICORN_WORKERS": str(self.gunicorn_workers or 1),
            "GUNICORN_THREADS": "4",
            # The store's URL names a user with no password, which the secrets check of a
            # deployment would take for a short one; python backend/app.py sets this itself.
            "JOBSERVICE_ENV": "development",
            **extra_env,
        }
        with open(self.log_path, "ab") as log:
            self._launch_offset = log.tell()
            log.write(f"---- API {self.name} start at {time.time():.3f}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                self.command(),
                cwd=ROOT,
                env=self.cluster.env(**env),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.starts.append(time.time())
        return self.process

    def wait_up(self, timeout: float = 60) -> float:
        """Wait until the host answers HTTP; returns the seconds since its last start."""
        # A client of its own: the health check answers 503 while no worker is up yet, which
        # is no 5xx of the scenario's traffic that ``server_errors`` counts.
        probe = Api(self.base_url)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive() and self._port_was_taken():
                # Another process (the other pass, or a client's ephemeral port) bound the port
                # between ``free_port()`` and the launch: before anything was given this host's
                # URL, move to a fresh port; a port the caller gave is tried again.
                if not self.port_given and len(self.starts) == 1:
                    self.port = free_port()
                    self.api = probe = Api(f"http://127.0.0.1:{self.port}")
                else:
                    time.sleep(0.5)
                self.starts.pop()
                self.launch(**self._launch_env)
                continue
            if not self.alive():
                code = None if self.process is None else self.process.returncode
                raise AssertionError(f"API {self.name} exited with {code}:\n{self.output()[-3000:]}")
            if probe.up():
                return time.time() - self.starts[-1]
            time.sleep(0.1)
        raise AssertionError(f"API {self.name} did not answer within {timeout} s:\n{self.output()[-3000:]}")

    def start(self, *, timeout: float = 60, **extra_env: str) -> float:
        self.launch(**extra_env)
        return self.wait_up(timeout)

    def kill(self) -> float:
        """SIGKILL the host's whole process group (gunicorn's workers too); returns when."""
        assert self.process is not None
        at = time.time()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        self.kills.append(at)
        return at

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _port_was_taken(self) -> bool:
        """Whether the last launch failed because its port was already bound."""
        with open(self.log_path, "rb") as log:
            log.seek(self._launch_offset)
            return bool(_PORT_TAKEN.search(log.read().decode(errors="replace")))

    def server_errors(self) -> list[str]:
        """What says this host answered a 5xx: the client's count and the host's own log."""
        found = list(self.api.server_errors)
        if self.api.unavailable:
            found.append(f"{self.api.unavailable} answer(s) 503 with Retry-After")
        log = self.output()
        found += [f"{self.name}: {line}" for line in log.splitlines() if _ANSWERED_5XX.search(line)]
        if "unhandled error" in log:
            found.append(f"{self.name} logged an unhandled error")
        return found

    def processes(self) -> list[int]:
        """The host's server processes: the process started and its children (gunicorn's workers)."""
        if not self.alive():
            return []
        from tests.chaos.processes import children_of

        return [self.pid, *children_of(self.pid)]


def worker_reports_5xx(cluster: Cluster, *, allow_503: bool) -> list[str]:
    """Lines of the workers' logs saying an API answered their reports 5xx (the reporter keeps
    and retries them); with ``allow_503``, a 503 (the store or Redis down) is not counted."""
    pattern = re.compile(r"answered (5\d\d)")
    found = []
    for worker in cluster.workers:
        for line in worker.output().splitlines():
            match = pattern.search(line)
            if match and not (allow_503 and match.group(1) == "503"):
                found.append(f"worker {worker.name}: {line}")
    return found
