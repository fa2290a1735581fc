"""The stack of one scenario: a real Redis, the API and workers as subprocesses (the same
commands people type), the CLI, what happened (the tasks' execution log, RQ's view), and the
teardown.

Every process a test starts carries ``CHAOS_RUN_MARKER=<uuid>`` in its environment, and so
do their descendants (RQ work-horses, a task's own children), so that ``Cluster.shutdown``
finds and SIGKILLs every one of them by pid, whatever happened in the test.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from redis import Redis
from redis.exceptions import RedisError
from rq.exceptions import NoSuchJobError
from rq.job import Job as RQJob
from rq.serializers import JSONSerializer

from backend.broker.connection import connect
from backend.dev.redis_server import EmbeddedRedis, free_port
from backend.recovery.reconciler import LOCK_KEY, LOCK_SECONDS
from tests.chaos.checks import wait_until
from tests.chaos.client import Api
from tests.chaos.faults import Faults
from tests.chaos.processes import Execution, Kill, WorkerProc, children_of, cmdline, marked_pids
from tests.chaos.settings import (
    LEASE_SECONDS,
    MARKER_ENV,
    RECONCILE_GRACE,
    RECONCILE_INTERVAL,
    ROOT,
    TASK_MODULES,
    TOKEN,
)


class Cluster(Faults):
    """A Redis, an API and workers for one test, in ``directory``; ``shutdown`` ends them all."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.marker = uuid.uuid4().hex
        self.exec_log = directory / "exec.log"
        self.db_path = directory / "jobs.db"
        #: The store's URL when not this directory's SQLite file (a PostgreSQL database).
        self.store_url: str | None = None
        self.redis: EmbeddedRedis | None = None
        #: REDIS_URL of every process when not this cluster's own Redis (a redis+sentinel:// URL).
        self.broker_url: str | None = None
        self.redis_port = free_port()
        self.api_port = free_port()
        self.api = Api(f"http://127.0.0.1:{self.api_port}")
        self.api_process: subprocess.Popen | None = None
        self.api_log = directory / "api.log"
        self.api_env: dict[str, str] = {}
        self.workers: list[WorkerProc] = []
        #: API servers started by tests.chaos.api_hosts (several hosts on one store).
        self.api_hosts: list = []
        self.kills: list[Kill] = []
        self._redis_client: Redis | None = None
        #: Called first thing at shutdown (a recorder's stop, say).
        self.on_shutdown: list[Callable[[], None]] = []

    # -- environment --------------------------------------------------------------------

    @property
    def redis_url(self) -> str:
        return self.broker_url or f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def database_url(self) -> str:
        return self.store_url or f"sqlite:///{self.db_path}"

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                MARKER_ENV: self.marker,
                "CHAOS_EXEC_LOG": str(self.exec_log),
                "REDIS_URL": self.redis_url,
                "DATABASE_URL": self.database_url,
                "API_BASE_URL": self.api.base_url,
                "INTERNAL_SERVICE_TOKEN": TOKEN,
                "TASK_MODULES": TASK_MODULES,
                "LOG_LEVEL": "WARNING",
                "PYTHONUNBUFFERED": "1",
                "RECONCILE_INTERVAL": str(RECONCILE_INTERVAL),
                "RECONCILE_GRACE": str(RECONCILE_GRACE),
                "WORKER_LEASE_SECONDS": str(LEASE_SECONDS),
                "RETRY_BACKOFF_BASE": "1",
                "RETRY_JITTER": "0",
                "REPORT_RETRY_SECONDS": "60",
                "RATE_LIMIT_ENABLED": "0",
            }
        )
        env.pop("API_KEYS", None)
        env.update(extra)
        return env

    @property
    def rconn(self) -> Redis:
        if self._redis_client is None and self.broker_url:
            # The service's own way in, which follows a Sentinel URL's master through a failover.
            self._redis_client = connect(self.broker_url, socket_timeout=5)
        if self._redis_client is None:
            self._redis_client = Redis.from_url(self.redis_url, socket_connect_timeout=2, socket_timeout=5)
        return self._redis_client

    # -- Redis --------------------------------------------------------------------------

    def start_redis(self) -> EmbeddedRedis:
        self.redis = EmbeddedRedis.start(data_dir=self.dir / "redis", port=self.redis_port, appendonly=True)
        return self.redis

    # -- the API ------------------------------------------------------------------------

    def start_api(self, *, wait: float = 30, **extra_env: str) -> subprocess.Popen:
        """``python backend/app.py`` on this cluster's port; returns once it answers HTTP."""
        if extra_env:
            self.api_env = dict(extra_env)
        with open(self.api_log, "ab") as log:
            log.write(f"---- API start at {time.time():.3f}\n".encode())
            log.flush()
            self.api_process = subprocess.Popen(
                [sys.executable, "backend/app.py"],
                cwd=ROOT,
                env=self.env(PORT=str(self.api_port), **self.api_env),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.api_process.poll() is not None:
                raise AssertionError(f"the API exited with {self.api_process.returncode}:\n{self.api_output()[-3000:]}")
            if self.api.up():
                return self.api_process
            time.sleep(0.1)
        raise AssertionError(f"the API did not answer within {wait} s:\n{self.api_output()[-3000:]}")

    def api_output(self) -> str:
        return self.api_log.read_text(errors="replace") if self.api_log.exists() else ""

    # -- workers ------------------------------------------------------------------------

    def start_worker(
        self,
        name: str,
        *,
        simple: bool = False,
        queues: str | None = None,
        burst: bool = False,
        wait: bool = True,
        env: dict | None = None,
    ) -> WorkerProc:
        """``python backend/worker.py --name NAME``; with ``wait``, returns once RQ has it registered."""
        args = [sys.executable, "backend/worker.py", "--name", name]
        if simple:
            args.append("--simple")
        if queues:
            args += ["--queues", queues]
        if burst:
            args.append("--burst")
        log_path = self.dir / f"worker-{name}.log"
        with open(log_path, "ab") as log:
            log.write(f"---- worker {name} start at {time.time():.3f}\n".encode())
            log.flush()
            process = subprocess.Popen(
                args,
                cwd=ROOT,
                env=self.env(LOG_LEVEL="INFO", **(env or {})),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        worker = WorkerProc(name=name, process=process, log_path=log_path, started_at=time.time())
        self.workers.append(worker)
        if wait:
            self.wait_worker_ready(worker)
        return worker

    def wait_worker_ready(self, worker: WorkerProc, timeout: float = 20) -> bool:
        """Wait until RQ registered this very process under its name; False if it exited first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not worker.alive():
                return False
            with contextlib.suppress(RedisError):
                pid = self.rconn.hget(f"rq:worker:{worker.name}", "pid")
                if pid is not None and int(pid) == worker.pid:
                    return True
            time.sleep(0.05)
        raise AssertionError(f"worker {worker.name} not ready in {timeout} s:\n{worker.output()[-3000:]}")

    def restart_worker_like_a_supervisor(self, name: str, *, timeout: float = 30, **kwargs) -> WorkerProc:
        """Start ``name`` again and again (as docker's restart policy would) until one process
        holds the name; a start while the dead process's lease lives exits at once."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            worker = self.start_worker(name, wait=False, **kwargs)
            if self.wait_worker_ready(worker):
                return worker
            time.sleep(0.1)
        raise AssertionError(f"worker {name} could not start again within {timeout} s")

    def live_workers(self) -> list[WorkerProc]:
        return [w for w in self.workers if w.alive() and w.killed_at is None]

    def wait_running(self, job_id: str, *, attempt: int | None = None, timeout: float = 20) -> Execution:
        """Wait until an execution of ``job_id`` (of ``attempt``, when given) has started; return it."""
        found: list[Execution] = []

        def running() -> bool:
            found[:] = [
                r for r in self.executions() if r.job_id == job_id and (attempt is None or r.attempt == attempt)
            ]
            return bool(found)

        wait_until(running, timeout, message=f"job {job_id} never started running")
        return found[-1]

    # -- other commands -----------------------------------------------------------------

    def cli(self, *args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
        """``python -m backend <args>`` against this cluster's Redis and store."""
        return subprocess.run(
            [sys.executable, "-m", "backend", *args],
            cwd=ROOT,
            env=self.env(**env),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    # -- what happened ------------------------------------------------------------------

    def executions(self) -> list[Execution]:
        """Every task execution so far, in order of start."""
        if not self.exec_log.exists():
            return []
        runs: dict[tuple[str, int, int], Execution] = {}
        order: list[Execution] = []
        for line in self.exec_log.read_text().splitlines():
            parts = line.split()
            if len(parts) != 6:
                continue
            event, job_id, attempt, pid, ppid, at = parts
            key = (job_id, int(attempt), int(pid))
            if event == "start":
                run = Execution(job_id, int(attempt), int(pid), int(ppid), float(at))
                runs[key] = run
                order.append(run)
            elif event == "end" and key in runs:
                runs[key].ended = float(at)
        return order

    def rq_status(self, rq_job_id: str) -> str | None:
        """The RQ status of ``rq_job_id``, or None when its hash is gone."""
        try:
            job = RQJob.fetch(rq_job_id, connection=self.rconn, serializer=JSONSerializer)
        except NoSuchJobError:
            return None
        status = job.get_status()
        return getattr(status, "value", status)

    def lease_alive(self, worker_name: str) -> bool:
        return bool(self.rconn.exists(f"jobservice:lease:{worker_name}"))

    def reconciler_lock(self) -> str:
        """Who may reconcile now: the reconciler lock's time to live, for failure messages."""
        try:
            ttl = self.rconn.pttl(LOCK_KEY)
        except RedisError as exc:
            return f"reconciler lock: redis error {exc}"
        if ttl < 0:
            return "reconciler lock: free"
        # A live API holds it only during a pass; one held for long was left by a dead API.
        return f"reconciler lock: held, expires in {ttl / 1000:.1f} s (of {LOCK_SECONDS} s)"

    def describe(self, job: dict) -> str:
        """A stuck or wrong job, with what Redis says about it, for failure messages."""
        try:
            rq = self.rq_status(job["rq_job_id"]) if job.get("rq_job_id") else None
            lease = self.lease_alive(job["worker"]) if job.get("worker") else None
        except RedisError as exc:
            rq = lease = f"redis error {exc}"
        keys = ("job_id", "status", "attempt", "retry_count", "max_retries", "worker", "error", "updated_at")
        return f"{ {k: job.get(k) for k in keys} } rq={rq!r} lease_alive={lease!r}"

    def strays(self) -> list[str]:
        """ "pid cmdline" of this cluster's processes that are neither the API, a live worker,
        nor a live worker's work-horse (or that horse's children): orphans."""
        expected = {worker.pid for worker in self.live_workers()}
        if self.api_process is not None and self.api_process.poll() is None:
            expected.add(self.api_process.pid)
        expected.update(host.pid for host in self.api_hosts if host.alive())
        frontier = list(expected)
        while frontier:
            children = children_of(frontier.pop())
            expected.update(children)
            frontier.extend(children)
        return [f"{pid} {cmdline(pid)}" for pid in marked_pids(self.marker) if pid not in expected]

    # -- the end ------------------------------------------------------------------------

    def shutdown(self) -> list[str]:
        """SIGKILL every process this cluster started (and their descendants); stop Redis.

        Returns "pid cmdline" of the processes found alive after the ones started directly
        were killed (orphaned work-horses, a task's children).
        """
        for callback in self.on_shutdown:
            with contextlib.suppress(Exception):
                callback()
        for worker in self.workers:
            if worker.alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, signal.SIGKILL)
        if self.api_process is not None and self.api_process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.api_process.pid, signal.SIGKILL)
        for host in self.api_hosts:
            if host.alive():
                host.kill()
        leftovers = []
        for _ in range(3):
            pids = marked_pids(self.marker)
            leftovers.extend(f"{pid} {cmdline(pid)}" for pid in pids)
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if not pids:
                break
            time.sleep(0.2)
        for worker in self.workers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.process.wait(timeout=5)
        if self.api_process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.api_process.wait(timeout=5)
        if self.redis is not None:
            self.redis.stop()
        if self._redis_client is not None:
            self._redis_client.close()
        return leftovers
