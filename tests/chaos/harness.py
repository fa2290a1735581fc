"""The chaos harness: a real Redis, the API and workers as subprocesses, and the checks.

Every process a test starts carries ``CHAOS_RUN_MARKER=<uuid>`` in its environment, and so
do their descendants (RQ work-horses, a task's own children), so that ``Cluster.shutdown``
finds and SIGKILLs every one of them by pid, whatever happened in the test.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import requests
from redis import Redis
from redis.exceptions import RedisError
from rq.exceptions import NoSuchJobError
from rq.job import Job as RQJob
from rq.serializers import JSONSerializer

from backend.dev.redis_server import EmbeddedRedis, free_port
from backend.recovery.reconciler import LOCK_KEY, LOCK_SECONDS

ROOT = Path(__file__).resolve().parents[2]
SOAK = os.environ.get("CHAOS_SOAK", "") == "1"
TOKEN = "chaos-internal-token"
TASK_MODULES = "backend.tasks.examples,tests.chaos.tasks"
MARKER_ENV = "CHAOS_RUN_MARKER"

#: Recovery settings of every API and worker the harness starts.
LEASE_SECONDS = 3.0
RECONCILE_INTERVAL = 1.0
RECONCILE_GRACE = 1.0
#: The recovery bound under those settings: a dead worker's lease lapses (within 3 s), the
#: reconciler, passing every second over rows older than the grace (1 s), counts it dead once
#: the lease was missing for half a lease and confirms it 0.5 s later: ~6-7 s in all. 15 s
#: leaves room for a loaded 2-core machine; the product's default bound is 60 s.
RECOVERY_BOUND = 15.0

TERMINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED"})
_RANK = {"PENDING": 0, "QUEUED": 1, "PROCESSING": 2, "COMPLETED": 3, "FAILED": 3, "CANCELLED": 3}
#: The store's terminal status -> the RQ statuses of the current attempt that agree with it
#: (None: the RQ job is gone).
RQ_AGREES = {
    "COMPLETED": {"finished"},
    "FAILED": {"failed"},
    "CANCELLED": {"canceled", "stopped", None},
}


def scaled(normal: int, soak: int) -> int:
    """``soak`` under CHAOS_SOAK=1, else ``normal``."""
    return soak if SOAK else normal


# -- HTTP ---------------------------------------------------------------------------------


class Api:
    """A client of the API that remembers every answer >= 500 (a 503 needs a Retry-After)."""

    def __init__(self, base_url: str):
        self.base_url = base_url
        self._local = threading.local()
        self._lock = threading.Lock()
        self.server_errors: list[str] = []
        self.unavailable = 0  # 503s with Retry-After: allowed while a dependency is down
        self.requests = 0

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def request(self, method: str, path: str, *, timeout: float = 10, **kwargs) -> requests.Response:
        """One request; raises requests.RequestException when the API does not answer."""
        try:
            response = self._session().request(method, self.base_url + path, timeout=timeout, **kwargs)
        except requests.RequestException:
            self._local.session = None  # do not reuse a broken keep-alive connection
            raise
        with self._lock:
            self.requests += 1
            if response.status_code == 503 and response.headers.get("Retry-After"):
                self.unavailable += 1
            elif response.status_code >= 500:
                self.server_errors.append(f"{method} {path} -> {response.status_code}: {response.text[:300]}")
        return response

    def get(self, path: str, **kwargs) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs) -> requests.Response:
        return self.request("POST", path, **kwargs)

    def submit(self, task: str, **body) -> dict:
        """POST /tasks/<task>; the job of a 202 (or 200), else AssertionError."""
        response = self.post(f"/tasks/{task}", json=body)
        assert response.status_code in (200, 202), f"submit {task}: {response.status_code} {response.text[:300]}"
        return response.json()

    def job(self, job_id: str) -> dict:
        response = self.get(f"/jobs/{job_id}")
        assert response.status_code == 200, f"GET /jobs/{job_id}: {response.status_code} {response.text[:300]}"
        return response.json()

    def all_jobs(self) -> list[dict]:
        """Every job in the store, complete (arguments and results too), through GET /jobs pages
        of up to 500."""
        jobs: list[dict] = []
        cursor = ""
        while True:
            response = self.get(f"/jobs?limit=500&fields=args,kwargs,result&cursor={cursor}", timeout=20)
            assert response.status_code == 200, f"GET /jobs: {response.status_code} {response.text[:300]}"
            page = response.json()
            jobs.extend(page["jobs"])
            cursor = page["next_cursor"]
            if not cursor:
                return jobs

    def up(self) -> bool:
        try:
            self.get("/monitoring/health", timeout=2)
            return True
        except requests.RequestException:
            return False


# -- processes ----------------------------------------------------------------------------


def children_of(pid: int) -> list[int]:
    """The direct children of ``pid`` (from /proc)."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/children") as handle:
                found.extend(int(part) for part in handle.read().split())
    return found


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie waiting to be reaped."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def marked_pids(marker: str) -> list[int]:
    """Every live process whose environment carries ``CHAOS_RUN_MARKER=marker``."""
    needle = f"{MARKER_ENV}={marker}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            with open(f"/proc/{entry}/environ", "rb") as handle:
                environ = handle.read()
            if needle in environ.split(b"\0") and pid_alive(int(entry)):
                found.append(int(entry))
    return found


@dataclass
class WorkerProc:
    name: str
    process: subprocess.Popen
    log_path: Path
    started_at: float
    killed_at: float | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class Execution:
    """One run of a task, from the tasks' execution log."""

    job_id: str
    attempt: int
    pid: int
    ppid: int
    started: float
    ended: float | None = None


@dataclass
class Kill:
    """One SIGKILL of a worker: when, which process, and what it was running."""

    at: float
    worker: str
    pid: int
    horses: list[int]
    #: job_id -> the attempt it was on when its worker died.
    inflight: dict[str, int] = field(default_factory=dict)


class Cluster:
    """A Redis, an API and workers for one test, in ``directory``; ``shutdown`` ends them all."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.marker = uuid.uuid4().hex
        self.exec_log = directory / "exec.log"
        self.db_path = directory / "jobs.db"
        self.redis: EmbeddedRedis | None = None
        self.redis_port = free_port()
        self.api_port = free_port()
        self.api = Api(f"http://127.0.0.1:{self.api_port}")
        self.api_process: subprocess.Popen | None = None
        self.api_log = directory / "api.log"
        self.api_env: dict[str, str] = {}
        self.workers: list[WorkerProc] = []
        self.kills: list[Kill] = []
        self._redis_client: Redis | None = None
        #: Called first thing at shutdown (a recorder's stop, say).
        self.on_shutdown: list[Callable[[], None]] = []

    # -- environment --------------------------------------------------------------------

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def database_url(self) -> str:
        return f"sqlite:///{self.db_path}"

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
        if self._redis_client is None:
            self._redis_client = Redis.from_url(self.redis_url, socket_connect_timeout=2, socket_timeout=5)
        return self._redis_client

    # -- Redis --------------------------------------------------------------------------

    def start_redis(self) -> EmbeddedRedis:
        self.redis = EmbeddedRedis.start(data_dir=self.dir / "redis", port=self.redis_port, appendonly=True)
        return self.redis

    def kill_redis(self) -> None:
        assert self.redis is not None
        os.kill(self.redis.process.pid, signal.SIGKILL)
        self.redis.process.wait(timeout=10)

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

    def kill_api(self) -> None:
        assert self.api_process is not None
        os.kill(self.api_process.pid, signal.SIGKILL)
        self.api_process.wait(timeout=10)

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

    def kill_worker(self, worker: WorkerProc, *, horse: bool = True) -> Kill:
        """SIGKILL a worker's main process (and, with ``horse``, its work-horse child)."""
        horses = children_of(worker.pid)
        inflight_before = self.inflight_on(worker)
        at = time.time()
        os.kill(worker.pid, signal.SIGKILL)
        if horse:
            for pid in horses:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        worker.killed_at = at
        worker.process.wait(timeout=10)
        inflight = {**self.held_by(worker.name), **inflight_before, **self.inflight_on(worker, before=at)}
        kill = Kill(at=at, worker=worker.name, pid=worker.pid, horses=horses if horse else [], inflight=inflight)
        self.kills.append(kill)
        return kill

    def kill_horse(self, worker: WorkerProc, job_id: str) -> Kill:
        """SIGKILL only the work-horse (the forked child) running ``job_id`` on ``worker``."""
        runs = [r for r in self.executions() if r.job_id == job_id and r.ppid == worker.pid and r.ended is None]
        assert runs, f"no running execution of {job_id} under worker {worker.name} (pid {worker.pid})"
        run = runs[-1]
        at = time.time()
        os.kill(run.pid, signal.SIGKILL)
        kill = Kill(at=at, worker=worker.name, pid=run.pid, horses=[run.pid], inflight={job_id: run.attempt})
        self.kills.append(kill)
        return kill

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

    def held_by(self, worker_name: str) -> dict[str, int]:
        """Jobs that RQ's started registries or the store say ``worker_name`` holds (best effort)."""
        held: dict[str, int] = {}
        with contextlib.suppress(RedisError, ValueError):
            for queue in ("high", "default", "low"):
                ids = [entry.decode().split(":", 1)[0] for entry in self.rconn.zrange(f"rq:wip:{queue}", 0, -1)]
                for rq_job in RQJob.fetch_many(ids, connection=self.rconn, serializer=JSONSerializer):
                    if rq_job is not None and rq_job.worker_name == worker_name and "job_id" in (rq_job.meta or {}):
                        held[rq_job.meta["job_id"]] = int(rq_job.meta["attempt"])
        with contextlib.suppress(requests.RequestException, ValueError, KeyError):
            response = self.api.get("/jobs?status=PROCESSING&limit=500", timeout=5)
            for job in response.json()["jobs"]:
                if job.get("worker") == worker_name:
                    held.setdefault(job["job_id"], job["attempt"])
        return held

    def inflight_on(self, worker: WorkerProc, *, before: float | None = None) -> dict[str, int]:
        """Executions of ``worker``'s process (or its horses) started and not ended (by ``before``)."""
        running: dict[str, int] = {}
        for run in self.executions():
            if worker.pid not in (run.pid, run.ppid):
                continue
            if before is not None and run.started > before:
                continue
            if run.ended is None or (before is not None and run.ended > before):
                running[run.job_id] = run.attempt
        return running

    def stop_worker(self, worker: WorkerProc, timeout: float = 30) -> int:
        """SIGTERM (warm shutdown) and wait."""
        if worker.alive():
            worker.process.send_signal(signal.SIGTERM)
        return worker.process.wait(timeout=timeout)

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


# -- watching the store while a scenario runs ---------------------------------------------


class Recorder:
    """Polls every job through GET /jobs while a scenario runs and keeps each job's changes
    of (attempt, status, worker), with the time they were first seen."""

    def __init__(self, api: Api, interval: float = 0.25):
        self.api = api
        self.interval = interval
        self.history: dict[str, list[tuple[float, int, str, str | None]]] = {}
        self.polls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)
        self._lock = threading.Lock()
        self._polling = threading.Lock()

    def start(self) -> Recorder:
        self._thread.start()
        return self

    def __enter__(self) -> Recorder:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.poll()
            self._stop.wait(self.interval)

    def poll(self) -> list[dict] | None:
        """One look at every job; None while the API does not answer.

        One look at a time (``_polling``): each starts after the previous one was answered,
        so the looks are in the store's order and a change seen is never undone by an older
        answer arriving late.
        """
        with self._polling:
            at = time.time()
            try:
                jobs = self.api.all_jobs()
            except (requests.RequestException, AssertionError):
                return None
            self._observe(jobs, at)
            return jobs

    def _observe(self, jobs: Iterable[dict], at: float) -> None:
        with self._lock:
            self.polls += 1
            for job in jobs:
                seen = (at, job["attempt"], job["status"], job.get("worker"))
                history = self.history.setdefault(job["job_id"], [])
                if not history or history[-1][1:] != seen[1:]:
                    history.append(seen)

    def since(self, job_id: str) -> float:
        """When the job's current (attempt, status, worker) was first seen."""
        with self._lock:
            return self.history[job_id][-1][0]

    def violations(self) -> list[str]:
        """Every backward move seen: a lower attempt, an earlier status within one attempt,
        or any change after a terminal status."""
        found = []
        with self._lock:
            for job_id, history in self.history.items():
                for (_, a1, s1, _), (_, a2, s2, _) in zip(history, history[1:], strict=False):
                    if s1 in TERMINAL and (a2, s2) != (a1, s1) or a2 < a1 or (a2 == a1 and _RANK[s2] < _RANK[s1]):
                        found.append(f"{job_id}: {s1} (attempt {a1}) then {s2} (attempt {a2})")
        return found

    def first_seen(self, job_id: str, predicate: Callable[[int, str], bool], *, after: float) -> float | None:
        """When a (attempt, status) matching ``predicate`` was first seen after ``after``."""
        with self._lock:
            history = list(self.history.get(job_id, []))
        for index, (at, attempt, status, _) in enumerate(history):
            if predicate(attempt, status):
                # A state that began before ``after`` and still held counts from ``after``.
                if at >= after:
                    return at
                if index + 1 == len(history) or history[index + 1][0] > after:
                    return after
        return None


# -- waiting and checking ------------------------------------------------------------------


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.1, message: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(message or f"condition not met within {timeout} s")


def wait_all_terminal(
    cluster: Cluster,
    job_ids: Iterable[str],
    *,
    timeout: float,
    stall: float = RECOVERY_BOUND,
    recorder: Recorder | None = None,
    max_run: float | None = None,
) -> dict[str, dict]:
    """Poll until every job in ``job_ids`` is terminal; return them by id.

    Fails when ``timeout`` passes, when none of the live jobs changed in any way for
    ``stall`` seconds (nothing may be stuck for longer than the recovery bound), or, given
    the ``recorder`` and ``max_run`` (the longest a task of the scenario runs), as soon as a
    job has been PROCESSING the same attempt for longer than ``max_run`` + ``stall``.
    """
    wanted = set(job_ids)
    deadline = time.monotonic() + timeout
    last_change = time.monotonic()
    last_view: dict[str, tuple] = {}
    jobs: dict[str, dict] = {}
    while True:
        if recorder is not None:
            listing = recorder.poll()
        else:
            try:
                listing = cluster.api.all_jobs()
            except requests.RequestException:
                listing = None
        if listing is not None:
            jobs = {job["job_id"]: job for job in listing if job["job_id"] in wanted}
            live = [job for job_id, job in jobs.items() if job["status"] not in TERMINAL]
            missing = wanted - set(jobs)
            assert not missing, f"acknowledged jobs missing from the store: {sorted(missing)[:10]}"
            if not live:
                return jobs
            if recorder is not None and max_run is not None:
                overdue = [
                    cluster.describe(job)
                    for job in live
                    if job["status"] == "PROCESSING" and time.time() - recorder.since(job["job_id"]) > stall + max_run
                ]
                if overdue:
                    raise AssertionError(
                        f"{len(overdue)} job(s) PROCESSING for more than {max_run} + {stall} s, stuck:\n"
                        + "\n".join([*overdue[:20], cluster.reconciler_lock()])
                    )
            view = {job["job_id"]: (job["status"], job["attempt"], job["progress"]) for job in live}
            if view != last_view:
                last_view = view
                last_change = time.monotonic()
        now = time.monotonic()
        stuck = [cluster.describe(job) for job in jobs.values() if job["status"] not in TERMINAL]
        if stuck and (now - last_change > stall or now > deadline):
            stuck.append(cluster.reconciler_lock())
        if now - last_change > stall:
            raise AssertionError(f"{len(stuck)} job(s) unchanged for {stall} s, stuck:\n" + "\n".join(stuck[:20]))
        if now > deadline:
            raise AssertionError(f"{len(stuck)} job(s) not terminal after {timeout} s:\n" + "\n".join(stuck[:20]))
        time.sleep(0.25)


def store_rq_mismatches(cluster: Cluster, jobs: Iterable[dict], *, gone_ok: Iterable[str] = ()) -> list[str]:
    """Terminal jobs whose current RQ job (``rq_job_id``) ended differently; ``gone_ok``:
    jobs whose RQ job the test itself deleted, for which "gone" agrees with any end."""
    gone_ok = set(gone_ok)
    found = []
    for job in jobs:
        status = cluster.rq_status(job["rq_job_id"])
        if status is None and job["job_id"] in gone_ok:
            continue
        if status not in RQ_AGREES.get(job["status"], set()):
            found.append(f"{job['job_id']}: store {job['status']} but RQ {job['rq_job_id']} is {status!r}")
    return found


def check_invariants(
    cluster: Cluster, jobs: dict[str, dict], recorder: Recorder | None, *, gone_ok: Iterable[str] = ()
) -> None:
    """The promise, for ``jobs`` (already waited for with ``wait_all_terminal``):
    terminal, agreeing with RQ, never moved backwards, and no 500 anywhere."""
    live = [cluster.describe(job) for job in jobs.values() if job["status"] not in TERMINAL]
    assert not live, "jobs not terminal:\n" + "\n".join(live[:20])
    mismatches = store_rq_mismatches(cluster, jobs.values(), gone_ok=gone_ok)
    assert not mismatches, f"{len(mismatches)} store/RQ mismatch(es):\n" + "\n".join(mismatches[:20])
    if recorder is not None:
        backwards = recorder.violations()
        assert not backwards, f"{len(backwards)} backward move(s):\n" + "\n".join(backwards[:20])
    check_no_server_errors(cluster)


def check_no_server_errors(cluster: Cluster) -> None:
    assert not cluster.api.server_errors, "HTTP 5xx answers:\n" + "\n".join(cluster.api.server_errors[:20])
    api_log = cluster.api_output()
    assert "unhandled error" not in api_log, f"the API logged an unhandled error:\n{api_log[-5000:]}"
    # Werkzeug's access log has every request, the workers' reports included.
    answered_5xx = [line for line in api_log.splitlines() if re.search(r'HTTP/1\.[01]" 5(?!03)\d\d ', line)]
    assert not answered_5xx, "the API answered 5xx:\n" + "\n".join(answered_5xx[:20])
    for worker in cluster.workers:
        out = worker.output()
        for needle in ("HTTP 500", "report answered 500"):
            assert needle not in out, f"worker {worker.name} got a 500 from the API:\n{out[-3000:]}"


# -- figures ------------------------------------------------------------------------------


def executions_per_job(cluster: Cluster, job_ids: Iterable[str]) -> dict[str, list[Execution]]:
    runs: dict[str, list[Execution]] = {job_id: [] for job_id in job_ids}
    for run in cluster.executions():
        if run.job_id in runs:
            runs[run.job_id].append(run)
    return runs


def histogram(runs: dict[str, list[Execution]]) -> dict[str, int]:
    """{"ran 1x": N, "ran 2x": M, ...}"""
    counts = Counter(len(executions) for executions in runs.values())
    return {f"ran {times}x": counts[times] for times in sorted(counts)}


def unexplained_reruns(cluster: Cluster, runs: dict[str, list[Execution]]) -> list[str]:
    """Jobs that ran more than once without their worker being killed mid-job.

    A job may run again only after a run in a process the test killed (a worker or its
    work-horse), and the store must say so: every attempt before the last one that ran is
    recorded FAILED because its worker died, on a worker the test killed.
    """
    killed = {kill.pid for kill in cluster.kills} | {pid for kill in cluster.kills for pid in kill.horses}
    killed_names = {kill.worker for kill in cluster.kills}
    found = []
    for job_id, executions in runs.items():
        if len(executions) < 2:
            continue
        detail = [(run.attempt, run.pid, run.ppid, run.ended is not None) for run in executions]
        spared = [run for run in executions if run.pid not in killed and run.ppid not in killed]
        if len(spared) > 1:
            found.append(f"{job_id} ran {len(executions)}x, {len(spared)} not in killed processes: {detail}")
            continue
        attempts = {a["attempt"]: a for a in cluster.api.get(f"/jobs/{job_id}/attempts").json()["attempts"]}
        last = max(run.attempt for run in executions)
        for run in executions:
            if run.attempt == last:
                continue
            row = attempts.get(run.attempt) or {}
            died = row.get("outcome") == "FAILED" and row.get("worker") in killed_names
            if not died:
                found.append(f"{job_id} ran again after attempt {run.attempt}, recorded as {row}: {detail}")
    return found


def kill_recovery_seconds(cluster: Cluster, recorder: Recorder) -> list[tuple[Kill, str, float | None]]:
    """For each kill and each job it interrupted: seconds until the job was back on a queue
    (a higher attempt) or done; None if never seen so."""
    found = []
    for kill in cluster.kills:
        for job_id, attempt in kill.inflight.items():

            def recovered(seen_attempt: int, status: str, attempt=attempt) -> bool:
                return seen_attempt > attempt or status in TERMINAL

            seen = recorder.first_seen(job_id, recovered, after=kill.at)
            found.append((kill, job_id, None if seen is None else seen - kill.at))
    return found


def report_figures(scenario: str, figures: dict) -> None:
    """Print the figures, and append them as one JSON line to $CHAOS_REPORT when set."""
    record = {"scenario": scenario, "soak": SOAK, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **figures}
    print(f"\n[chaos {scenario}] " + json.dumps(figures, indent=None, sort_keys=False))
    path = os.environ.get("CHAOS_REPORT")
    if path:
        with open(path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
