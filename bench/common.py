"""What every benchmark needs: Redis, the API under gunicorn, workers (ours and raw RQ),
HTTP clients, percentiles, tables and the list of ratios checked against targets."""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import requests
from redis import Redis

from backend.dev.redis_server import EmbeddedRedis, free_port

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "bench"
CACHE_DIR = BENCH_DIR / ".cache"
PY = sys.executable
VENV_BIN = Path(sys.executable).parent
TOKEN = "bench-internal-token"
TASK_MODULES = "backend.tasks.examples,bench.tasks"
RAW_QUEUE = "rawbench"
#: The queues raw RQ workers listen on: like ours (high, default, low), three in priority order
#: with the jobs in the second, so both sides pay RQ's same dequeue (an empty LPOP first).
RAW_WORKER_QUEUES = ("rawbench-high", RAW_QUEUE, "rawbench-low")
GUNICORN_CONF = "backend/gunicorn_conf.py"


# -- numbers and tables ---------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) of ``values``, nearest rank."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def table(title: str, headers: list[str], rows: list[list]) -> str:
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = [
        "| "
        + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        + " |"
        for r in cells
    ]
    return "\n".join([f"\n### {title}\n", line, rule, *body])


def emit(text: str) -> None:
    print(text, flush=True)


@dataclass
class Check:
    name: str
    measured: str
    target: str
    ok: bool | None  # None: informational


#: Each PostgreSQL figure against its SQLite figure of the same run (issue 12): at least this.
PG_FLOOR = 0.70


@dataclass
class Results:
    checks: list[Check] = field(default_factory=list)
    ratios: list[tuple[str, float]] = field(default_factory=list)
    #: (figure, on SQLite, on PostgreSQL, PostgreSQL/SQLite with higher = PostgreSQL faster)
    stores: list[tuple[str, str, str, float]] = field(default_factory=list)

    def ratio(self, name: str, value: float) -> None:
        self.ratios.append((name, value))

    def check(self, name: str, measured: str, target: str, ok: bool | None) -> None:
        self.checks.append(Check(name, measured, target, ok))

    def stores_compared(self, name: str, sqlite: str, postgresql: str, speed: float) -> None:
        """One figure on both stores; ``speed`` > 1 when PostgreSQL is faster (a rate's ratio,
        or a latency's inverse ratio), checked against ``PG_FLOOR``."""
        self.stores.append((name, sqlite, postgresql, speed))
        self.ratio(f"{name}: PostgreSQL/SQLite", speed)
        self.check(f"{name}: PostgreSQL/SQLite", f"{speed:.2f}", f">= {PG_FLOOR:.2f}", speed >= PG_FLOOR)


# -- processes ----------------------------------------------------------------------------


class Workdir:
    """A temporary directory for one run: databases, logs, Redis data."""

    def __init__(self):
        self.path = Path(tempfile.mkdtemp(prefix="jobservice-bench-"))

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def cleanup(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def start_redis(workdir: Workdir, name: str = "redis") -> EmbeddedRedis:
    return EmbeddedRedis.start(data_dir=workdir / name, port=0, appendonly=False)


def service_env(redis_url: str, database_url: str, api_url: str, **extra: str) -> dict:
    env = dict(os.environ)
    for name in ("API_KEYS", "PROMETHEUS_MULTIPROC_DIR", "GUNICORN_WORKERS", "GUNICORN_THREADS"):
        env.pop(name, None)
    env.update(
        {
            "REDIS_URL": redis_url,
            "BENCH_REDIS_URL": redis_url,
            "DATABASE_URL": database_url,
            "API_BASE_URL": api_url,
            "INTERNAL_SERVICE_TOKEN": TOKEN,
            "TASK_MODULES": TASK_MODULES,
            "RATE_LIMIT_ENABLED": "0",
            "LOG_LEVEL": "WARNING",
            "PYTHONPATH": str(ROOT),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


def _terminate(process: subprocess.Popen, timeout: float = 15) -> None:
    """SIGTERM, then SIGKILL after ``timeout``; children it leaves behind (a forking worker's
    work horse) are killed too."""
    if process.poll() is not None:
        return
    try:
        children = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            if child.is_running():
                child.kill()


class Gunicorn:
    """An app under ``gunicorn -c backend/gunicorn_conf.py`` on a free loopback port."""

    def __init__(self, app_spec: str, env: dict, log_path: Path, ready_path: str, port: int | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(env, GUNICORN_BIND=f"127.0.0.1:{self.port}")
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.log_path = log_path
        self.process = subprocess.Popen(
            [PY, "-m", "gunicorn", "-c", GUNICORN_CONF, app_spec],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._wait_ready(ready_path)

    def _wait_ready(self, path: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited ({self.process.returncode}); see {self.log_path}")
            try:
                if requests.get(self.url + path, timeout=2).status_code < 500:
                    self._wait_workers_settled(deadline)
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"gunicorn did not answer on {self.url}{path}; see {self.log_path}")

    def _wait_workers_settled(self, deadline: float) -> None:
        """One worker answered; wait until every worker has loaded the app (its RSS is steady)."""
        last: dict[int, int] = {}
        steady_since = time.monotonic()
        while time.monotonic() < deadline:
            now = {}
            for pid in self.worker_pids():
                with contextlib.suppress(psutil.NoSuchProcess):
                    now[pid] = psutil.Process(pid).memory_info().rss
            if not now or set(now) != set(last) or any(abs(now[p] - last[p]) > 1 << 20 for p in now):
                steady_since = time.monotonic()
            elif time.monotonic() - steady_since >= 0.6:
                return
            last = now
            time.sleep(0.1)

    def worker_pids(self) -> list[int]:
        try:
            return [c.pid for c in psutil.Process(self.process.pid).children()]
        except psutil.NoSuchProcess:
            return []

    def stop(self) -> None:
        _terminate(self.process, timeout=20)
        self._log.close()


def start_api(env: dict, workdir: Workdir, name: str = "api") -> Gunicorn:
    # /openapi.json answers without an API key, whatever API_KEYS says.
    return Gunicorn("backend.app:create_app()", env, workdir / f"{name}.log", "/openapi.json", port=_port_of(env))


def start_hello(env: dict, workdir: Workdir) -> Gunicorn:
    return Gunicorn("bench.hello_app:app", env, workdir / "hello.log", "/hello")


def _port_of(env: dict) -> int:
    return int(env["API_BASE_URL"].rsplit(":", 1)[1])


class Stack:
    """A fresh Redis and the API (gunicorn, the repo's configuration) on a SQLite file or ``database_url``."""

    def __init__(
        self,
        workdir: Workdir,
        name: str,
        db_path: Path | None = None,
        database_url: str | None = None,
        **extra_env: str,
    ):
        self.workdir = workdir
        self.name = name
        self.redis = start_redis(workdir, f"redis-{name}")
        self.db_path = db_path or workdir / f"{name}.db"
        self.database_url = database_url or f"sqlite:///{self.db_path}"
        self.env = service_env(self.redis.url, self.database_url, f"http://127.0.0.1:{free_port()}", **extra_env)
        try:
            self.api = start_api(self.env, workdir, name)
        except BaseException:
            self.redis.stop()
            raise
        self.url = self.api.url
        self._workers: list[WorkerProc] = []

    def worker(self, kind: str, simple: bool, *, burst: bool = True, name: str | None = None) -> WorkerProc:
        name = name or f"{self.name}-{kind}-{'simple' if simple else 'fork'}-{len(self._workers)}"
        worker = WorkerProc(kind, simple, name, self.env, self.workdir / f"{name}.log", burst=burst)
        self._workers.append(worker)
        return worker

    def redis_client(self) -> Redis:
        return Redis.from_url(self.redis.url)

    def stop(self) -> None:
        for worker in self._workers:
            worker.stop()
        self.api.stop()
        self.redis.stop()

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class WorkerProc:
    """One worker process: ours (``backend/worker.py``) or raw RQ (``rq worker``)."""

    def __init__(self, kind: str, simple: bool, name: str, env: dict, log_path: Path, burst: bool = True):
        self.kind, self.simple, self.name = kind, simple, name
        if kind == "ours":
            command = [PY, "backend/worker.py", "--name", name]
            if simple:
                command.append("--simple")
        else:
            command = [
                str(VENV_BIN / "rq"), "worker", "--name", name,
                "--worker-class", "rq.SimpleWorker" if simple else "rq.Worker",
                "--serializer", "rq.serializers.JSONSerializer",
                "--url", env["REDIS_URL"], "--logging_level", "WARNING",
                *RAW_WORKER_QUEUES,
            ]  # fmt: skip
        if burst:
            command.append("--burst")
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in wait()/stop()
        self.log_path = log_path
        self.started = time.time()
        self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout=timeout)
        finally:
            self._log.close()

    def stop(self) -> None:
        _terminate(self.process)
        self._log.close()

    def rss(self) -> int:
        return psutil.Process(self.process.pid).memory_info().rss


# -- HTTP ---------------------------------------------------------------------------------


def session() -> requests.Session:
    s = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=1)
    s.mount("http://", adapter)
    return s


def submit_batches(api_url: str, task: str, count: int, size: int = 1000) -> list[str]:
    """Submit ``count`` jobs of ``task`` through the batch endpoint; return their ids."""
    ids: list[str] = []
    with session() as http:
        while len(ids) < count:
            n = min(size, count - len(ids))
            r = http.post(f"{api_url}/tasks/{task}/batch", json={"jobs": [{}] * n}, timeout=300)
            r.raise_for_status()
            ids.extend(r.json()["job_ids"])
    return ids


def store_counts(api_url: str) -> dict[str, int]:
    return requests.get(f"{api_url}/monitoring/queue/stats", timeout=30).json()["jobs"]
