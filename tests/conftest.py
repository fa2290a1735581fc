"""Shared fixtures: a real Redis for the session, a temporary store per test, the app,
a live HTTP server for workers to report to, and real worker processes.

The store is SQLite by default; ``TEST_STORE=postgres`` (make test's second pass) gives every
test a fresh database on one PostgreSQL for the session instead (see ``make_store_url``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis
from redis.connection import AbstractConnection
from werkzeug.serving import make_server

from backend.api.context import update_settings
from backend.app import create_app, start_background, stop_background
from backend.dev import processes
from backend.dev.redis_server import EmbeddedRedis
from tests.run_passes import POSTGRES_PASS_RUNS

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "test-internal-token"
TASK_MODULES = "backend.tasks.examples,tests.fixtures,tests.long_task_fixtures"

#: The store the suite runs on: ``sqlite`` (the default) or ``postgres``.
STORE = os.environ.get("TEST_STORE", "sqlite")
if STORE not in ("sqlite", "postgres"):
    raise pytest.UsageError(f"TEST_STORE must be sqlite or postgres, not {STORE!r}")


# The suite is development: the start-up check of secrets (backend/core/secrets_check.py) would
# refuse its short test keys. Set in the environment, so the processes tests start inherit it;
# tests of the check itself take it out again.
os.environ.setdefault("JOBSERVICE_ENV", "development")

# One line per HTTP request from the live server drowns the useful logs of a failing test.
logging.getLogger("werkzeug").setLevel(logging.WARNING)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis.start(data_dir=tmp_path_factory.mktemp("redis"), appendonly=False)
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server) -> str:
    Redis.from_url(redis_server.url).flushall()
    return redis_server.url


@pytest.fixture
def redis_conn(redis_url) -> Redis:
    return Redis.from_url(redis_url)


@pytest.fixture(scope="session")
def sentinel_session_group(tmp_path_factory):
    """A Sentinel group (tests/sentinels.py) for the session, started by the first test that asks."""
    from tests.sentinels import SentinelGroup

    group = SentinelGroup.start(tmp_path_factory.mktemp("sentinel"))
    yield group
    group.close()


@pytest.fixture
def sentinel_group(sentinel_session_group):
    """The session's Sentinel group, its master flushed. A master an earlier test killed is back
    first, as a replica (restored here rather than after that test: the last kill needs none)."""
    group = sentinel_session_group
    group.restore()
    Redis(*group.master_address()).flushall()
    return group


@pytest.fixture
def make_store_url(request, tmp_path):
    """A factory of fresh stores for this test: ``make_store_url(name="jobs", migrated=True)``.

    SQLite: a file in the test's directory (``migrated`` is moot: the app migrates at start).
    PostgreSQL: a new database, a copy of the session's template at head when ``migrated``
    (CREATE DATABASE ... TEMPLATE takes ~0.1 s where migrating takes longer), else empty;
    dropped after the test.
    """
    created: list[str] = []

    def make(name: str = "jobs", *, migrated: bool = True) -> str:
        if STORE == "sqlite":
            return f"sqlite:///{tmp_path / f'{name}.db'}"
        server = request.getfixturevalue("postgres_server")
        template = request.getfixturevalue("postgres_template") if migrated else None
        database = f"t_{uuid.uuid4().hex[:12]}"
        created.append(database)
        return server.create_database(database, template=template)

    yield make
    if created:
        server = request.getfixturevalue("postgres_server")
        for database in created:
            server.drop_database(database)


@pytest.fixture
def store_url(make_store_url) -> str:
    """This test's store (``DATABASE_URL``), on the store the suite runs on."""
    return make_store_url()


@pytest.fixture
def settings(store_url, redis_url) -> dict:
    """The app's settings for one test; tests may change them before using ``app``."""
    return {
        "REDIS_URL": redis_url,
        "DATABASE_URL": store_url,
        "INTERNAL_SERVICE_TOKEN": TOKEN,
        "TASK_MODULES": TASK_MODULES,
        "API_KEYS": None,
        "LOG_LEVEL": "WARNING",
        # Tests that need the reconciler run it themselves, or turn the thread on.
        "RECONCILE_INTERVAL": 0,
        "WORKER_LEASE_SECONDS": 1.0,
        "RETRY_BACKOFF_BASE": 1.0,
        "RETRY_JITTER": 0,
        # Tests of these features turn them on (the housekeeping thread would prune and roll up
        # history under tests that count queries or copy a store).
        "WEBHOOK_INTERVAL": 0,
        "HOUSEKEEPING_INTERVAL": 0,
        "RATE_LIMIT_ENABLED": 0,
    }


@pytest.fixture
def app(settings):
    """The API with its background threads, as a server runs it (those whose interval is not 0)."""
    app = start_background(create_app(settings))
    yield app
    # Its threads and delivery pool end with the test (they outlived it before).
    stop_background(app)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def live_server(app) -> Iterator[str]:
    """The app served over real HTTP on a free port, for workers' reports."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    url = f"http://127.0.0.1:{server.server_port}"
    update_settings(app, API_BASE_URL=url)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield url
    server.shutdown()
    thread.join(timeout=5)


def worker_env(settings: dict, api_url: str, **extra: str) -> dict:
    env = dict(os.environ)
    env.update(
        {
            "REDIS_URL": settings["REDIS_URL"],
            "API_BASE_URL": api_url,
            "INTERNAL_SERVICE_TOKEN": settings["INTERNAL_SERVICE_TOKEN"],
            "TASK_MODULES": TASK_MODULES,
            "REPORT_RETRY_SECONDS": "10",
            "WORKER_LEASE_SECONDS": str(settings["WORKER_LEASE_SECONDS"]),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


class WorkerProcess:
    """A real worker: ``python backend/worker.py`` in a subprocess."""

    def __init__(
        self,
        settings: dict,
        api_url: str,
        *args: str,
        log_dir: Path,
        env: dict | None = None,
        program: tuple[str, ...] = ("backend/worker.py",),
    ):
        self.log_path = log_dir / f"worker-{id(self)}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed by wait() / stop()
        self.process = subprocess.Popen(
            [sys.executable, *program, *args],
            cwd=ROOT,
            env=worker_env(settings, api_url, **(env or {})),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            # Its own process group, so that stop() also ends what it left behind when a test
            # SIGKILLed it (RQ's scheduler child lives on otherwise, writing to Redis).
            start_new_session=True,
        )

    def wait(self, timeout: float = 60) -> int:
        try:
            return self.process.wait(timeout=timeout)
        finally:
            self._log.close()

    def stop(self) -> None:
        processes.stop(self.process)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self._log.close()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def start_worker(settings, live_server, tmp_path):
    """Start real worker processes reporting to the live server; all stopped after the test."""
    started: list[WorkerProcess] = []

    def start(*args: str, env: dict | None = None, program: tuple[str, ...] = ("backend/worker.py",)) -> WorkerProcess:
        worker = WorkerProcess(settings, live_server, *args, log_dir=tmp_path, env=env, program=program)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture
def run_burst_worker(start_worker):
    """Run one burst worker until the queues are empty; fail the test if it fails."""

    def run(*extra: str, simple: bool = True, timeout: float = 60) -> WorkerProcess:
        args = ["--burst", "--name", f"burst-{time.monotonic_ns()}", *extra]
        if simple:
            args.append("--simple")
        worker = start_worker(*args)
        code = worker.wait(timeout=timeout)
        assert code == 0, worker.output()
        return worker

    return run


# -- PostgreSQL (tests/postgres.py) --------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL for the session; tests that use it skip when it is not installed."""
    from tests.postgres import postgres_server_fixture

    yield from postgres_server_fixture()


@pytest.fixture(scope="session")
def postgres_template(postgres_server) -> str:
    """The name of a database migrated to head once per session, which ``make_store_url``
    copies (no connection is left open on it: CREATE DATABASE ... TEMPLATE refuses then)."""
    from backend.store.engine import migrate

    name = "jobs_template"
    migrate(postgres_server.create_database(name))
    return name


@pytest.fixture
def sent_to_redis(monkeypatch):
    """The commands of each send on a redis-py connection from this thread (a pipeline's is one)."""
    sends: list[list[bytes]] = []
    original = AbstractConnection.send_packed_command
    me = threading.get_ident()

    def recording(connection, command, check_health=True):
        if threading.get_ident() == me:
            chunks = command if isinstance(command, list) else [command]
            data = b"".join(bytes(c) for c in chunks)
            # Each command of a RESP array starts "*<n>\r\n$<len>\r\n<NAME>".
            sends.append([part.split(b"\r\n")[2].upper() for part in data.split(b"*")[1:] if b"\r\n$" in part[:8]])
        return original(connection, command, check_health)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", recording)
    return sends


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """A fresh empty database on the session's PostgreSQL."""
    return postgres_server.create_database()


# -- The PostgreSQL pass (TEST_STORE=postgres) ----------------------------------------------


def pytest_report_header(config):
    return f"job store: {STORE} (TEST_STORE)"


def pytest_collection_modifyitems(config, items):
    """In the PostgreSQL pass, skip what would only repeat the SQLite pass: tests that build no
    store through ``make_store_url`` (their store, if any, is SQLite either way) and tests about
    SQLite itself. The PostgreSQL-specific ones run in the PostgreSQL pass when run_passes runs
    one, else in the SQLite pass (``pytest`` alone)."""
    if os.environ.get(POSTGRES_PASS_RUNS):
        _keep_one_pass_tests_to_their_pass(items)
    if STORE != "postgres":
        if os.environ.get(POSTGRES_PASS_RUNS):
            # run_passes runs a PostgreSQL pass beside this one: the PostgreSQL-specific tests
            # run there, so that the two passes take about as long (make test's 15 minutes).
            for item in items:
                if {"postgres_url", "postgres_server", "own_postgres"} & set(item.fixturenames) or _picks_its_store(
                    item
                ):
                    item.add_marker(pytest.mark.skip(reason="PostgreSQL-specific: runs in the PostgreSQL pass"))
        return
    for item in items:
        marker = item.get_closest_marker("sqlite_only")
        if marker is not None:
            reason = marker.kwargs.get("reason") or (marker.args[0] if marker.args else "about SQLite itself")
            item.add_marker(pytest.mark.skip(reason=f"SQLite only: {reason}"))
        elif {"postgres_url", "postgres_server", "own_postgres"} & set(item.fixturenames) or _picks_its_store(item):
            if not os.environ.get(POSTGRES_PASS_RUNS):
                item.add_marker(pytest.mark.skip(reason="PostgreSQL-specific: runs in the SQLite pass already"))
        elif "make_store_url" not in item.fixturenames and not _given_to_this_pass(item):
            item.add_marker(pytest.mark.skip(reason="uses no test store: the same test as in the SQLite pass"))


def _keep_one_pass_tests_to_their_pass(items) -> None:
    """Under run_passes, a ``one_pass`` test runs in its store's pass only: it checks nothing a
    store changes (a page in Chromium, workers killed under load), and running it twice would
    spend make test's 15 minutes on a repeat. Which pass is chosen to even out the two."""
    for item in items:
        marker = item.get_closest_marker("one_pass")
        if marker is None:
            continue
        store = marker.kwargs.get("store", "sqlite")
        if store != STORE:
            reason = marker.kwargs.get("reason") or (marker.args[0] if marker.args else "store-independent")
            item.add_marker(pytest.mark.skip(reason=f"runs in the {store} pass only ({reason})"))


def _given_to_this_pass(item) -> bool:
    """A ``one_pass`` test given to this store's pass, under run_passes: it runs here, store or not."""
    marker = item.get_closest_marker("one_pass")
    return bool(os.environ.get(POSTGRES_PASS_RUNS)) and marker is not None and marker.kwargs.get("store") == STORE


def _picks_its_store(item) -> bool:
    """A test parametrized over the stores (``store``) builds each itself, the same in both passes."""
    callspec = getattr(item, "callspec", None)
    return callspec is not None and "store" in callspec.params


def pytest_terminal_summary(terminalreporter):
    """The PostgreSQL pass's skips, counted per reason (run_passes lists no skip one by one)."""
    if STORE != "postgres":
        return
    reasons: dict[str, int] = {}
    for report in terminalreporter.stats.get("skipped", []):
        reason = str(report.longrepr[2]).removeprefix("Skipped: ") if isinstance(report.longrepr, tuple) else "?"
        reasons[reason] = reasons.get(reason, 0) + 1
    for reason, count in sorted(reasons.items(), key=lambda item: -item[1]):
        terminalreporter.write_line(f"skipped in the PostgreSQL pass: {count} x {reason}")
