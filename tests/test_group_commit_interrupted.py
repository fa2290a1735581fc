"""The group commit of submissions when a request is interrupted (a BaseException such as
gevent.Timeout, SystemExit from gunicorn's abort handler, KeyboardInterrupt): a leader cut off
mid-write leaves its followers answering 503, never 202 for jobs never written; a request cut off
while it waits is not written later by another leader."""

from __future__ import annotations

import threading
import time

from sqlalchemy import text

from backend.api.context import services
from backend.store import job_inserts
from tests.helpers import submit_add


class Aborted(BaseException):
    """Stands for gevent.Timeout / SystemExit / KeyboardInterrupt raised in the leader's thread."""


def test_followers_are_not_told_committed_when_the_leaders_write_is_aborted(app, redis_conn, monkeypatch):
    client = app.test_client()
    submit_add(client)  # Redis noted up: jobs are recorded QUEUED through the group commit
    # SQLiteJobWriter or PostgresJobWriter (TEST_STORE=postgres): the same GroupCommit.commit
    writer_cls = type(job_inserts._writer_of(services(app).engine))
    original = writer_cls.write
    leading = threading.Event()
    calls = {"n": 0}

    def write(self, batch):
        calls["n"] += 1
        if calls["n"] == 1:
            # A first leader, slow: three more submissions queue behind it meanwhile.
            leading.set()
            deadline = time.monotonic() + 10
            while len(self._queue) < 3 and time.monotonic() < deadline:
                time.sleep(0.01)
            return original(self, batch)
        if calls["n"] == 2:
            # The next leader takes the three as one batch; its request is aborted mid-write.
            assert len(batch) == 3, len(batch)
            raise Aborted()
        return original(self, batch)

    monkeypatch.setattr(writer_cls, "write", write)

    results: dict[str, object] = {}

    def post(name):
        try:
            results[name] = app.test_client().post("/tasks/add", json={"args": [1, 2]})
        except Aborted:
            results[name] = "aborted"

    first = threading.Thread(target=post, args=("first",))
    first.start()
    assert leading.wait(10)
    batch = [threading.Thread(target=post, args=(f"b{i}",)) for i in range(3)]
    for t in batch:
        t.start()
    for t in [first, *batch]:
        t.join(30)
    assert results["first"].status_code == 202
    aborted = [name for name in ("b0", "b1", "b2") if results[name] == "aborted"]
    assert len(aborted) == 1, results
    engine = services(app).engine
    for name in sorted({"b0", "b1", "b2"} - set(aborted)):
        answer = results[name]
        if answer.status_code in (200, 202):
            job_id = answer.get_json()["job_id"]
            with engine.connect() as conn:
                rows = conn.execute(text("SELECT COUNT(*) FROM jobs WHERE id = :i"), {"i": job_id}).scalar_one()
            # An accepted job must exist in the store of record (else it is lost, and the RQ job
            # already pushed for it runs a job the store has never heard of).
            queued = f"{job_id}-1".encode() in redis_conn.lrange("rq:queue:default", 0, -1)
            assert rows == 1, (
                f"{name}: answered {answer.status_code} for {job_id}, but no row was written"
                f" (its RQ job on the queue for a worker: {queued})"
            )
            assert client.get(f"/jobs/{job_id}").status_code == 200
        else:
            assert answer.status_code == 503, answer.status_code


class _AbortingLock:
    """The leader's lock, whose wait is interrupted (as gevent.Timeout or gunicorn's abort would) in one thread."""

    def __init__(self, real, victim: str):
        self.real, self.victim = real, victim

    def __enter__(self):
        if threading.current_thread().name == self.victim:
            raise Aborted()
        return self.real.__enter__()

    def __exit__(self, *exc):
        return self.real.__exit__(*exc)


def test_a_submission_aborted_while_waiting_for_the_leader_is_not_committed_later(app, redis_conn, monkeypatch):
    client = app.test_client()
    initial = submit_add(client)["job_id"]
    writer = job_inserts._writer_of(services(app).engine)
    writer_cls = type(writer)
    original = writer_cls.write
    leading = threading.Event()
    calls = {"n": 0}
    results: dict[str, object] = {}

    def write(self, batch):
        calls["n"] += 1
        if calls["n"] == 1:
            # The first leader writes once the victim's request has queued its job and been
            # aborted at the leader's lock (before: until the queue held an entry, which a writer
            # that drops an aborted request's entry never does: a 10 s wait out).
            leading.set()
            deadline = time.monotonic() + 10
            while "victim" not in results and time.monotonic() < deadline:
                time.sleep(0.01)
        return original(self, batch)

    monkeypatch.setattr(writer_cls, "write", write)
    monkeypatch.setattr(writer, "_leader", _AbortingLock(writer._leader, victim="victim"))

    def post(name):
        try:
            results[name] = app.test_client().post("/tasks/add", json={"args": [5, 6]})
        except Aborted:
            results[name] = "aborted"

    first = threading.Thread(target=post, args=("first",), name="first")
    first.start()
    assert leading.wait(10)
    victim = threading.Thread(target=post, args=("victim",), name="victim")
    victim.start()
    victim.join(30)
    first.join(30)
    # The victim's request failed: its client was told nothing was accepted
    assert results["victim"] == "aborted"
    # A later submission leads the next commit
    later = submit_add(client)
    accepted = {initial, results["first"].get_json()["job_id"], later["job_id"]}
    with services(app).engine.connect() as conn:
        rows = dict(conn.execute(text("SELECT id, status FROM jobs")).all())
    queued = redis_conn.lrange("rq:queue:default", 0, -1)
    extra = {
        job_id: (status, f"{job_id}-1".encode() in queued) for job_id, status in rows.items() if job_id not in accepted
    }
    # Then no job is stored beyond the accepted ones: the aborted request's job must not be
    # committed later by another leader (here: stored QUEUED, never sent to Redis, so the reconciler
    # runs it after its grace although its client was answered an error and may resubmit).
    assert not extra, f"jobs stored that no request was answered for (status, on the queue): {extra}"
