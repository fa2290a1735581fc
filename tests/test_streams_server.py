"""The event streams' server: the real gevent gunicorn (backend/gunicorn_streams.py) holds
hundreds of open ``GET /jobs/<id>/events`` streams, each gets its own job's events, and the same
process keeps answering other requests, even while another process holds the store's lock (the
developers' guide: a blocking call on an event loop stalls every request of that process)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import requests

from backend.broker.events import EventLog
from backend.core.settings import Settings
from backend.dev import processes
from tests.conftest import ROOT, STORE
from tests.gunicorn_api import served_api
from tests.test_slow_clients import needs_nginx, start_nginx

# A functional deadline (a stalled server never answers), far above what an answer takes.
ANSWER_WITHIN = 10.0


@pytest.fixture
def streams_server(settings, live_server, tmp_path) -> Iterator[str]:
    """The app under gunicorn with the shipped streams configuration, on the test's Redis and
    store (which ``live_server``, the API the worker reports to, has migrated)."""
    with served_api(
        settings,
        tmp_path / "streams.log",
        config="backend/gunicorn_streams.py",
        bind="STREAMS_BIND",
        MIGRATE_ON_START="0",
        EVENTS_MAX_STREAMS="1000",
        EVENTS_MAX_STREAMS_PER_OWNER="1000",
        # INFO: its access lines show which process served a path (written at INFO and below only).
        LOG_LEVEL="INFO",
        STREAMS_WORKERS=None,
    ) as url:
        yield url


@dataclass
class Sse:
    id: str
    kind: str
    data: object


@dataclass
class Stream:
    """One client reading one job's stream in its own thread, as a browser tab would."""

    url: str
    job_id: str
    status_code: int | None = None
    events: list[Sse] = field(default_factory=list)
    error: BaseException | None = None
    opened: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Stream:
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        try:
            with requests.get(f"{self.url}/jobs/{self.job_id}/events", stream=True, timeout=(5, 30)) as answer:
                self.status_code = answer.status_code
                self.opened.set()
                if answer.status_code != 200:
                    self.error = RuntimeError(answer.text[:500])
                    return
                fields: dict[str, str] = {}
                for line in answer.iter_lines(chunk_size=None, decode_unicode=True):
                    if line:
                        name, _, value = line.partition(":")
                        if name:  # a line starting with ':' is a comment (keep-alive)
                            fields[name] = value.removeprefix(" ")
                        continue
                    if "event" in fields:
                        self.events.append(Sse(fields["id"], fields["event"], json.loads(fields["data"])))
                        if fields["event"] == "end":
                            return
                    fields = {}
        except BaseException as exc:  # reported by the test, not lost in a thread
            self.error = exc
        finally:
            self.opened.set()
            self.done.set()

    def kinds(self) -> list[str]:
        return [event.kind for event in list(self.events)]

    def outputs(self) -> list[object]:
        return [event.data["data"] for event in list(self.events) if event.kind == "output"]


def submit(api: str, count: int) -> list[str]:
    return [requests.post(f"{api}/tasks/add", json={"args": [i, 1]}).json()["job_id"] for i in range(count)]


def open_streams(url: str, job_ids: list[str], per_job: int) -> list[Stream]:
    streams = [Stream(url, job_id).start() for job_id in job_ids for _ in range(per_job)]
    for stream in streams:
        assert stream.opened.wait(ANSWER_WITHIN), "a stream got no answer"
        assert stream.status_code == 200, (stream.status_code, stream.error)
    # Each has its job's current status first: the stream is live before the test goes on.
    assert wait_for(lambda: all("status" in stream.kinds() for stream in streams)), [s.kinds() for s in streams]
    return streams


def wait_for(probe) -> bool:
    return processes.wait_until(probe, timeout=30, interval=0.05)


def emit_outputs(redis_conn, job_ids: list[str], text: str) -> None:
    """An ``output`` event for each job, as a worker appends it (straight to Redis)."""
    log = EventLog(redis_conn)
    for job_id in job_ids:
        log.append(job_id, "output", json.dumps({"data": f"{text} {job_id}", "attempt": 1}, separators=(",", ":")))


def assert_each_stream_saw_its_job_end(streams: list[Stream], texts: list[str]) -> None:
    for stream in streams:
        assert stream.done.wait(ANSWER_WITHIN) and stream.error is None, (stream.kinds(), stream.error)
        # Only its own job's events, in order, none twice, output included, `end` last
        assert stream.outputs() == [f"{text} {stream.job_id}" for text in texts], stream.kinds()
        for event in stream.events:
            if event.kind in ("status", "end"):
                assert event.data["job_id"] == stream.job_id
        ids = [tuple(int(part) for part in event.id.split("-")) for event in stream.events]
        assert ids == sorted(set(ids)), ids
        assert stream.events[-1].kind == "end" and stream.events[-1].data["status"] == "COMPLETED"
        assert stream.events[-1].data["result"] == int(stream.events[-1].data["args"][0]) + 1


def test_two_hundred_open_streams_each_get_their_jobs_events_while_the_process_answers(
    streams_server, live_server, redis_conn, run_burst_worker
):
    # Given 50 queued jobs, and 200 streams open on them at once on the gevent process
    job_ids = submit(live_server, 50)
    streams = open_streams(streams_server, job_ids, per_job=4)
    # When the same process is asked for a job while all of them are open
    answer = requests.get(f"{streams_server}/jobs/{job_ids[7]}", timeout=ANSWER_WITHIN)
    # Then it answers
    assert answer.status_code == 200 and answer.json()["job_id"] == job_ids[7]
    # And it refuses writes, which could deadlock it on SQLite's writers' flock
    refused = requests.post(f"{streams_server}/tasks/add", json={"args": [1, 2]}, timeout=ANSWER_WITHIN)
    assert refused.status_code == 405 and refused.json()["error"]["code"] == "method_not_allowed"
    # When each job emits output (the worker's path) and a real worker runs them all
    emit_outputs(redis_conn, job_ids, "partial")
    assert wait_for(lambda: all(stream.outputs() for stream in streams))
    run_burst_worker()
    # Then every stream got its own job's output and statuses, and ended with the job
    assert_each_stream_saw_its_job_end(streams, ["partial"])


@needs_nginx
def test_nginx_sends_the_events_path_to_the_streams_process_and_the_rest_to_the_api(
    streams_server, live_server, redis_conn, run_burst_worker, tmp_path
):
    # Given the shipped server block in front of the API and of the streams process
    proxy = start_nginx(live_server, tmp_path / "nginx", streams=streams_server)
    try:
        # When a job is submitted and its stream opened, both through nginx
        submitted = requests.post(f"{proxy.url}/tasks/add", json={"args": [4, 1]}, timeout=ANSWER_WITHIN)
        assert submitted.status_code == 202  # a write: the API took it (the streams process refuses writes)
        job_id = submitted.json()["job_id"]
        stream = open_streams(proxy.url, [job_id], per_job=1)[0]
        # Then an event reaches the client while the stream is open (nothing held in a buffer)
        emit_outputs(redis_conn, [job_id], "through nginx")
        assert wait_for(lambda: stream.outputs())
        run_burst_worker()
        assert_each_stream_saw_its_job_end([stream], ["through nginx"])
    finally:
        processes.stop(proxy)
    # And the stream was served by the gevent process
    # (gunicorn logs a streamed request once its response has ended: a moment after the client saw the end)
    assert wait_for(lambda: f"GET /jobs/{job_id}/events" in (tmp_path / "streams.log").read_text())


LOCK_HOLDER = """
import fcntl, sqlite3, sys
path = sys.argv[1]
# A writer's turn (backend/store/sqlite_writers.py) and SQLite's write lock, held until told.
turn = open(path + "-writers", "a+")
fcntl.flock(turn, fcntl.LOCK_EX)
db = sqlite3.connect(path, isolation_level=None)
db.execute("BEGIN IMMEDIATE")
db.execute("UPDATE jobs SET priority = priority")
print("locked", flush=True)
sys.stdin.readline()
db.execute("ROLLBACK")
"""


@pytest.mark.sqlite_only(reason="SQLite's write lock held by another process")
def test_streams_keep_flowing_while_another_process_holds_sqlites_write_lock(
    streams_server, live_server, redis_conn, run_burst_worker, settings
):
    job_ids = submit(live_server, 10)
    early = open_streams(streams_server, job_ids, per_job=2)
    # Given another process holding the store's write lock (and the writers' turn) for as long
    # as this test wants
    path = settings["DATABASE_URL"].removeprefix("sqlite:///")
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, path], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        # When streams open, events are emitted and a job is read, all while it holds the lock
        late = open_streams(streams_server, job_ids, per_job=2)
        emit_outputs(redis_conn, job_ids, "during the lock")
        answer = requests.get(f"{streams_server}/jobs/{job_ids[3]}", timeout=ANSWER_WITHIN)
        # Then the gevent process answered and the streams received them, the lock still held
        assert answer.status_code == 200 and answer.json()["status"] == "QUEUED"
        assert wait_for(lambda: all(stream.outputs() for stream in early + late))
        assert holder.poll() is None
    finally:
        holder.communicate("release\n", timeout=ANSWER_WITHIN)
    # And once it lets go, the jobs run and every stream ends with its job
    run_burst_worker()
    assert_each_stream_saw_its_job_end(early + late, ["during the lock"])


PG_LOCK_HOLDER = """
import sys, psycopg
with psycopg.connect(sys.argv[1]) as db:
    with db.transaction():
        db.execute("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")
        print("locked", flush=True)
        sys.stdin.readline()
"""


@pytest.mark.skipif(STORE != "postgres", reason="a PostgreSQL lock: psycopg waits for it cooperatively")
def test_a_request_waiting_for_a_postgresql_lock_stalls_no_other_request_of_the_process(
    streams_server, live_server, redis_conn, run_burst_worker, settings
):
    job_ids = submit(live_server, 10)
    streams = open_streams(streams_server, job_ids, per_job=2)
    # Given another process holding a lock that every read of the jobs table waits for
    url = settings["DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://")
    holder = subprocess.Popen(
        [sys.executable, "-c", PG_LOCK_HOLDER, url], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    waiting: dict[str, object] = {}
    try:
        assert holder.stdout.readline().strip() == "locked"
        # When a request of the gevent process waits for it
        reader = threading.Thread(
            target=lambda: waiting.update(answer=requests.get(f"{streams_server}/jobs/{job_ids[3]}", timeout=60))
        )
        reader.start()
        # Then the process still serves what does not need that lock: other requests, live events
        assert requests.get(f"{streams_server}/openapi.json", timeout=ANSWER_WITHIN).status_code == 200
        emit_outputs(redis_conn, job_ids, "during the lock")
        assert wait_for(lambda: all(stream.outputs() for stream in streams))
        assert "answer" not in waiting  # the waiting read is still waiting for the lock
    finally:
        holder.communicate("release\n", timeout=ANSWER_WITHIN)
    # And the waiting request answers once the lock is let go
    reader.join(ANSWER_WITHIN)
    assert waiting["answer"].status_code == 200
    run_burst_worker()
    assert_each_stream_saw_its_job_end(streams, ["during the lock"])


@pytest.mark.one_pass(reason="the streams process's settings; no store involved")
def test_the_streams_process_runs_no_background_thread(monkeypatch):
    # The settings gunicorn_streams.py leaves for the app: no reconciler, housekeeping or webhook
    # thread (as greenlets their store writes stalled every stream while another process wrote:
    # housekeeping's history roll-up waited on the writers' flock for 20 s in this file's lock test)
    import runpy

    for name in ("RECONCILE_INTERVAL", "HOUSEKEEPING_INTERVAL", "WEBHOOK_INTERVAL"):
        monkeypatch.setenv(name, "5")  # restored after the test, whatever the config file sets
    runpy.run_path(str(ROOT / "backend" / "gunicorn_streams.py"))
    settings = Settings.load()
    assert (settings.reconcile_interval, settings.housekeeping_interval, settings.webhook_interval) == (0, 0, 0)
