"""The peer a user would pick instead (issue 17): Celery 5 with Flower 2's HTTP API, on its own
Redis, with one Celery worker draining; started and stopped like our stacks.

Celery and Flower are installed by the benchmark into their own virtual environment
(``bench/.cache/peer-venv``, gitignored; created once, reused), never into the project's
requirements: they are what we are measured against, not what we run. The app is
``bench/peer_app.py``: one no-op task (the same function ours runs) on a Redis broker with a Redis
result backend.

The worker runs ``--pool=solo``: each task in the worker's own process, one at a time, no fork,
which is what our one ``SimpleWorker`` (``backend/worker.py --simple``) does. Prefork with
concurrency 1 would add a pool child fed through a pipe (forked once, not per task), a shape
neither our SimpleWorker nor RQ's forking Worker (a fork per job) has.

Flower 2 refuses every API call with a 401 unless authentication is configured or
``FLOWER_UNAUTHENTICATED_API=true`` is set (flower/api/__init__.py, ``BaseApiHandler.prepare``);
the bench sets the variable, as ours runs with no API key on loopback. Everything else is
Flower's and Celery's defaults (events on, as Flower enables them; JSON; prefetch 4).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import requests

from backend.dev.redis_server import free_port
from bench.common import CACHE_DIR, ROOT, Results, Workdir, _terminate, start_redis
from bench.stores import POSTGRESQL, SQLITE

FLOWER = "Celery+Flower"
TASK = "bench_noop"
PEER_VENV = CACHE_DIR / "peer-venv"
REQUIREMENTS = ("celery[redis]>=5,<6", "flower>=2,<3")
#: T1: our HTTP submission against Flower's, jobs/s (issue 17).
SUBMISSION_TARGET = 1.5


def peer_bin(log=print) -> Path:
    """The peer venv's ``bin`` directory, creating the venv and installing Celery and Flower the
    first time (or when ``REQUIREMENTS`` changed)."""
    stamp = PEER_VENV / ".installed"
    wanted = "\n".join(REQUIREMENTS)
    if stamp.exists() and stamp.read_text() == wanted:
        return PEER_VENV / "bin"
    log(f"installing {' and '.join(REQUIREMENTS)} into {PEER_VENV} (once; reused by later runs)")
    steps = [
        [sys.executable, "-m", "venv", "--clear", str(PEER_VENV)],
        [str(PEER_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         *REQUIREMENTS],
    ]  # fmt: skip
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(step)} exited {done.returncode}:\n{(done.stdout + done.stderr)[-2000:]}")
    stamp.write_text(wanted)
    return PEER_VENV / "bin"


def versions() -> str:
    """Celery's and Flower's versions in the peer venv, or why there are none yet."""
    python = PEER_VENV / "bin" / "python"
    if not (PEER_VENV / ".installed").exists():
        return "not installed yet (the first run of k installs them)"
    done = subprocess.run(
        [str(python), "-c", "import celery, flower; print(celery.__version__, flower.__version__)"],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        return "unknown"
    celery, flower = done.stdout.split()
    return f"Celery {celery} / Flower {flower} (own venv, bench/.cache/peer-venv)"


class CeleryFlower:
    """Redis, one Celery worker (solo pool) and Flower on a free loopback port."""

    def __init__(self, workdir: Workdir, name: str = "peer", log=print):
        celery = str(peer_bin(log) / "celery")
        self.redis = start_redis(workdir, f"redis-{name}")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ)
        env.pop("VIRTUAL_ENV", None)
        env.update(
            {
                "PEER_REDIS_URL": self.redis.url,
                "PYTHONPATH": str(ROOT),
                "PYTHONUNBUFFERED": "1",
                "FLOWER_UNAUTHENTICATED_API": "true",
            }
        )
        self._logs = []
        self.processes: dict[str, subprocess.Popen] = {}
        self.log_paths: dict[str, Path] = {}
        commands = {
            "worker": [celery, "-A", "bench.peer_app", "worker", "--pool=solo", "--concurrency=1", "--loglevel=WARNING",
                       "--hostname", f"{name}@%h"],
            "flower": [celery, "-A", "bench.peer_app", "flower", f"--port={self.port}", "--address=127.0.0.1",
                       "--logging=warning"],
        }  # fmt: skip
        try:
            for role, command in commands.items():
                path = workdir / f"{name}-{role}.log"
                out = open(path, "ab")  # noqa: SIM115 - closed in stop()
                self._logs.append(out)
                self.log_paths[role] = path
                self.processes[role] = subprocess.Popen(
                    command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
                )
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float = 90) -> None:
        """Flower answers, and a task submitted through it comes back SUCCESS (the worker is up)."""
        deadline = time.monotonic() + timeout
        with requests.Session() as http:
            task_id, last = None, None
            while time.monotonic() < deadline:
                for role, process in self.processes.items():
                    if process.poll() is not None:
                        raise RuntimeError(f"celery {role} exited ({process.returncode}); see {self.log_paths[role]}")
                try:
                    if task_id is None:
                        task_id = self.submit(http)
                    if self.done(http, task_id):
                        return
                except (requests.RequestException, RuntimeError) as exc:
                    last = exc
                time.sleep(0.2)
        raise RuntimeError(f"Celery + Flower not ready on {self.url} ({last}); see {list(self.log_paths.values())}")

    def submit(self, http: requests.Session) -> str:
        """``POST /api/task/async-apply/bench_noop`` on ``http``; the task's id."""
        r = http.post(f"{self.url}/api/task/async-apply/{TASK}", json={"args": [], "kwargs": {}}, timeout=60)
        if r.status_code != 200:
            raise RuntimeError(f"Flower's async-apply answered {r.status_code}: {r.text[:200]}")
        return r.json()["task-id"]

    def result_url(self, task_id: str) -> str:
        return f"{self.url}/api/task/result/{task_id}"

    def done(self, http: requests.Session, task_id: str) -> bool:
        """Whether ``GET /api/task/result/<id>`` says SUCCESS (a FAILURE raises)."""
        r = http.get(self.result_url(task_id), timeout=60)
        if r.status_code != 200:
            raise RuntimeError(f"Flower's task result answered {r.status_code}: {r.text[:200]}")
        state = r.json()["state"]
        if state == "FAILURE":
            raise RuntimeError(f"the peer's task {task_id} failed: {r.text[:300]}")
        return state == "SUCCESS"

    def pids(self) -> list[int]:
        """Flower's process (its CPU per request is the server's)."""
        return [self.processes["flower"].pid]

    def roles(self) -> dict[str, list[int]]:
        """The peer's processes by role, for CPU per job: the HTTP API, the worker, Redis."""
        return {"API": self.pids(), "worker": [self.processes["worker"].pid], "Redis": [self.redis.process.pid]}

    def stop(self) -> None:
        for process in self.processes.values():
            _terminate(process)
        for out in self._logs:
            out.close()
        self.redis.stop()

    def __enter__(self) -> CeleryFlower:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def celery_flower(workdir: Workdir, name: str = "peer", log=print) -> CeleryFlower:
    """The peer, started (use it as a context manager)."""
    return CeleryFlower(workdir, name, log)


def check_submission(results: Results, rates: dict[str, float], clients: int) -> None:
    """T1's first half: each of our stores' submission rate against Flower's (``rates`` by side,
    jobs/s, measured in the same rounds), PASS at ``SUBMISSION_TARGET``."""
    for store, rate in rates.items():
        if store == FLOWER or store not in (SQLITE, POSTGRESQL):
            continue
        ratio = rate / rates[FLOWER]
        where = "" if store == SQLITE else f" on {store}"
        results.ratio(f"submission C={clients}{where} (ours/{FLOWER} jobs/s)", ratio)
        results.check(
            f"T1 submission C={clients}{where}: ours/{FLOWER} jobs/s",
            f"{ratio:.2f}",
            f">= {SUBMISSION_TARGET:.2f}",
            ratio >= SUBMISSION_TARGET,
        )
