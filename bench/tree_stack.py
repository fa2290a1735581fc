"""The API and a worker run from another checkout of the repository (a baseline commit), beside ours.

Why: a before/after figure is only honest when both run in the same invocation, in alternating
rounds, on the same machine load. ``git worktree add --detach /tmp/base <commit>`` makes the tree;
``TreeStack`` serves it with that tree's own code (cwd and PYTHONPATH there), its own Redis and
store, under that tree's gunicorn configuration, as ``bench.common.Stack`` does for ours.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from backend.dev.redis_server import free_port
from bench.common import PY, Gunicorn, Stack, Workdir, WorkerProc, service_env, start_redis


class _TreeGunicorn(Gunicorn):
    """``Gunicorn`` started in ``tree`` (its own code and gunicorn configuration)."""

    def __init__(self, tree: Path, env: dict, log_path: Path, port: int):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        env = dict(env, GUNICORN_BIND=f"127.0.0.1:{port}")
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.log_path = log_path
        self.process = subprocess.Popen(
            [PY, "-m", "gunicorn", "-c", "backend/gunicorn_conf.py", "backend.app:create_app()"],
            cwd=tree,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._wait_ready("/openapi.json")


class _TreeWorker(WorkerProc):
    """Our simple worker, run from ``tree``."""

    def __init__(self, tree: Path, name: str, env: dict, log_path: Path, burst: bool):
        self.kind, self.simple, self.name = "ours", True, name
        command = [PY, "backend/worker.py", "--name", name, "--simple", *(["--burst"] if burst else [])]
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in wait()/stop()
        self.log_path = log_path
        self.started = time.time()
        self.process = subprocess.Popen(command, cwd=tree, env=env, stdout=self._log, stderr=subprocess.STDOUT)


class TreeStack(Stack):
    """A fresh Redis and the API of ``tree`` on a SQLite file or ``database_url`` (``Stack``'s
    redis_client, stop and context manager; its own start and worker)."""

    def __init__(self, workdir: Workdir, name: str, tree: Path, database_url: str | None = None):
        self.workdir, self.name, self.tree = workdir, name, Path(tree)
        self.redis = start_redis(workdir, f"redis-{name}")
        self.database_url = database_url or f"sqlite:///{workdir / f'{name}.db'}"
        port = free_port()
        self.env = service_env(self.redis.url, self.database_url, f"http://127.0.0.1:{port}", PYTHONPATH=str(tree))
        try:
            self.api = _TreeGunicorn(self.tree, self.env, workdir / f"{name}.log", port)
        except BaseException:
            self.redis.stop()
            raise
        self.url = self.api.url
        self._workers: list[WorkerProc] = []

    def worker(self, kind: str, simple: bool, *, burst: bool = True, name: str | None = None) -> WorkerProc:
        if kind != "ours" or not simple:
            raise ValueError("a tree stack runs our simple worker only")
        name = name or f"{self.name}-worker-{len(self._workers)}"
        worker = _TreeWorker(self.tree, name, self.env, self.workdir / f"{name}.log", burst)
        self._workers.append(worker)
        return worker
