"""A bulk cancel cut short (the store fails part-way, or the API dies between a fence and its
write) never leaves a job that the store still runs fenced for good: the attempts not written are
not fenced, and one fenced but never written is given a new attempt by the reconciler instead of
ending FAILED for a run that never happened (found by review of the bulk cancel's steps)."""

from __future__ import annotations

import time

from sqlalchemy.exc import OperationalError

from backend.api.context import services
from backend.broker.queues import fence_key
from backend.service.cancels import Cancels
from tests.helpers import attempts, get_job, submit_add, wait_for_status
from tests.test_reconciler import age


def cut_after_the_first_chunk(monkeypatch) -> None:
    """Chunks of one job, and the store failing as the second chunk is written."""
    monkeypatch.setattr(Cancels, "CANCEL_CHUNK", 1)
    written = Cancels._write_cancels
    calls = []

    def write(self, chunk, **kwargs):
        calls.append(chunk)
        if len(calls) == 2:
            raise OperationalError("COMMIT", {}, Exception("server closed the connection unexpectedly"))
        return written(self, chunk, **kwargs)

    monkeypatch.setattr(Cancels, "_write_cancels", write)


def test_a_bulk_cancel_cut_by_a_store_outage_fences_no_job_it_did_not_write(client, redis_conn, monkeypatch):
    # Given three queued jobs, and the store failing after the bulk cancel wrote the first
    ids = [submit_add(client, args=[i, i])["job_id"] for i in range(3)]
    cut_after_the_first_chunk(monkeypatch)
    # When they are cancelled together
    response = client.post("/jobs/cancel", json={"job_ids": ids})
    # Then the answer is 503 (try again), the first is cancelled, and the third, never written,
    # is live and not fenced (before: every job was fenced up front, for 7 days)
    assert response.status_code == 503, response.get_json()
    assert get_job(client, ids[0])["status"] == "CANCELLED"
    assert get_job(client, ids[2])["status"] == "QUEUED"
    assert not redis_conn.exists(fence_key(f"{ids[2]}-1"))


def test_a_job_fenced_but_never_written_runs_as_a_new_attempt_not_failed(app, client, monkeypatch, run_burst_worker):
    # Given a bulk cancel cut by the store as it wrote the second job: fenced, never written
    ids = [submit_add(client, args=[i, i], max_retries=0)["job_id"] for i in range(2)]
    cut_after_the_first_chunk(monkeypatch)
    assert client.post("/jobs/cancel", json={"job_ids": ids}).status_code == 503
    monkeypatch.undo()
    monkeypatch.setattr("backend.service.attempts.UNSTARTED_RETRY_SECONDS", 0.0)  # due at once
    # When a worker takes it (and refuses the fenced attempt) and the reconciler looks at it
    run_burst_worker()
    age(app, ids[1])
    services(app).reconciler.run_once()
    # Then it gets a new attempt, nothing spent, which runs (before: FAILED, "AttemptRefused")
    waiting = get_job(client, ids[1])
    assert (waiting["status"], waiting["attempt"], waiting["retry_count"]) == ("QUEUED", 2, 0), waiting
    assert [a["outcome"] for a in attempts(client, ids[1])] == ["UNSTARTED"]
    time.sleep(1.1)  # RQ's scheduler holds it until the next whole second
    run_burst_worker(timeout=60)
    assert wait_for_status(client, ids[1], {"COMPLETED", "FAILED"}, timeout=30)["status"] == "COMPLETED"


def test_a_run_that_ended_after_a_fence_never_written_is_copied_not_run_again(app, client, redis_conn):
    """The fence of a cancel whose write never came can also stand on an attempt that had passed
    its start check and ran: its end is copied as any other (a new attempt would run it twice)."""
    from rq.job import Job as RQJob
    from rq.serializers import JSONSerializer

    # Given a job whose run finished in RQ while its report never reached the store, and whose
    # attempt a cancel fenced without writing (the API died between the two)
    job = submit_add(client)
    rq_id = job["rq_job_id"]
    redis_conn.lrem("rq:queue:default", 0, rq_id)
    rq_job = RQJob.fetch(rq_id, connection=redis_conn, serializer=JSONSerializer)
    rq_job.set_status("finished")
    redis_conn.set(fence_key(rq_id), 1)
    age(app, job["job_id"])
    # When the reconciler looks at it
    services(app).reconciler.run_once()
    # Then its end is copied: COMPLETED on its first attempt, not run again
    after = get_job(client, job["job_id"])
    assert (after["status"], after["attempt"]) == ("COMPLETED", 1), after


def test_the_reconciler_names_the_workers_refusal_as_the_worker_raises_it():
    from backend.recovery.reconciler import REFUSED
    from backend.runner.start_gate import AttemptRefused

    assert f"{AttemptRefused.__module__}.{AttemptRefused.__qualname__}" == REFUSED
