"""Job dependencies, batches and per-task concurrency, with real workers."""

from __future__ import annotations

import time

from rq.job import Job as RQJob
from rq.serializers import JSONSerializer

from backend.api.context import services
from backend.broker.queues import QueueAdapter, RedisUnavailable
from backend.core import protocol
from tests.helpers import AUTH, get_job, submit, wait_for_status
from tests.test_reconciler import age

# -- dependencies -------------------------------------------------------------------------


def test_a_dependency_chain_runs_in_order(client, start_worker):
    a = submit(client, "one_at_a_time", kwargs={"seconds": 0.3})
    b = submit(client, "one_at_a_time", kwargs={"seconds": 0.05}, depends_on=[a["job_id"]])
    c = submit(client, "one_at_a_time", kwargs={"seconds": 0.05}, depends_on=[b["job_id"]])
    assert b["status"] == "QUEUED" and b["waiting_for"] == [a["job_id"]]
    assert get_job(client, c["job_id"])["waiting_for"] == [b["job_id"]]

    start_worker("--name", "chain", "--simple")
    wait_for_status(client, c["job_id"], {"COMPLETED"})

    done = [get_job(client, j["job_id"]) for j in (a, b, c)]
    assert [j["status"] for j in done] == ["COMPLETED"] * 3
    # Each ran after its parent ended, by the tasks' own clock (one host). Not by the jobs'
    # started_at/completed_at: those are the API's time of a report less its age, so two reports
    # sent in different batches a few ms apart may land with their transit delays inverted.
    runs = [job["result"] for job in done]
    assert runs[0]["ended"] <= runs[1]["started"] and runs[1]["ended"] <= runs[2]["started"]
    assert done[2]["waiting_for"] == []


def test_a_failed_parent_cancels_its_children_unless_they_allow_failure(client, start_worker):
    parent = submit(client, "fail", max_retries=0)
    child = submit(client, "add", args=[1, 1], depends_on=[parent["job_id"]])
    grandchild = submit(client, "add", args=[2, 2], depends_on=[child["job_id"]])
    tolerant = submit(client, "add", args=[3, 3], depends_on=[parent["job_id"]], allow_failure=True)

    start_worker("--name", "parents", "--simple")
    wait_for_status(client, tolerant["job_id"], {"COMPLETED"})

    assert get_job(client, parent["job_id"])["status"] == "FAILED"
    cancelled = get_job(client, child["job_id"])
    assert cancelled["status"] == "CANCELLED"
    assert cancelled["cancelled_by"] == "dependency"
    assert parent["job_id"] in cancelled["error"]
    assert get_job(client, grandchild["job_id"])["status"] == "CANCELLED"
    assert get_job(client, tolerant["job_id"])["result"] == 6


def test_a_child_runs_after_its_parent_succeeds_on_a_retry(client, start_worker, tmp_path):
    parent = submit(client, "flaky", kwargs={"marker": str(tmp_path / "m"), "failures": 1}, max_retries=2)
    child = submit(client, "add", args=[1, 1], depends_on=[parent["job_id"]])

    start_worker("--name", "retry-parent", "--simple")

    assert wait_for_status(client, child["job_id"], {"COMPLETED"}, timeout=30)["result"] == 2
    assert get_job(client, parent["job_id"])["retry_count"] == 1


def test_a_child_of_an_ended_parent_is_settled_at_once(client, run_burst_worker):
    parent = submit(client, "add", args=[1, 1])
    run_burst_worker()
    child = submit(client, "add", args=[1, 1], depends_on=[parent["job_id"]])
    assert child["waiting_for"] == []
    failed = submit(client, "fail", max_retries=0)
    run_burst_worker()
    orphan = client.post("/tasks/add", json={"args": [1, 1], "depends_on": [failed["job_id"]]}).get_json()
    assert orphan["status"] == "CANCELLED"


def test_depends_on_must_name_the_callers_own_jobs(client):
    response = client.post("/tasks/add", json={"args": [1, 1], "depends_on": ["job_missing"]})
    assert response.status_code == 422
    assert "job_missing" in response.get_json()["error"]["message"]
    assert client.get("/jobs").get_json()["jobs"] == []


# -- batches ------------------------------------------------------------------------------


def test_a_batch_of_1000_is_recorded_at_once_and_runs(client, run_burst_worker):
    response = client.post("/tasks/add/batch", json={"jobs": [{"args": [i, i]} for i in range(1000)]})

    assert response.status_code == 202
    batch = response.get_json()
    assert batch["size"] == 1000 and len(batch["job_ids"]) == 1000
    summary = client.get(f"/batches/{batch['batch_id']}").get_json()
    assert summary["counts"]["QUEUED"] == 1000 and summary["done"] is False

    run_burst_worker(timeout=240)

    summary = client.get(f"/batches/{batch['batch_id']}").get_json()
    assert summary["counts"]["COMPLETED"] == 1000
    assert summary["progress"] == 100.0 and summary["done"] is True
    assert get_job(client, batch["job_ids"][999])["result"] == 1998


def test_a_batch_with_one_bad_job_records_nothing(client, redis_conn):
    response = client.post("/tasks/add/batch", json={"jobs": [{"args": [1, 1]}, {"args": [1]}]})
    assert response.status_code == 422
    assert response.get_json()["error"]["message"].startswith("jobs[1]")
    assert client.get("/jobs").get_json()["jobs"] == []
    assert redis_conn.llen("rq:queue:default") == 0


def test_a_batch_over_the_limit_or_empty_is_422(client, settings):
    assert client.post("/tasks/add/batch", json={"jobs": []}).status_code == 422
    too_many = [{"args": [1, 1]}] * (settings.get("BATCH_MAX_JOBS", 1000) + 1)
    assert client.post("/tasks/add/batch", json={"jobs": too_many}).status_code == 422


def test_a_batch_can_be_cancelled(client):
    batch = client.post("/tasks/add/batch", json={"jobs": [{"args": [1, 1]}] * 5}).get_json()
    response = client.post(f"/batches/{batch['batch_id']}/cancel", json={})
    assert response.status_code == 200
    assert len(response.get_json()["cancelled"]) == 5
    assert client.get(f"/batches/{batch['batch_id']}").get_json()["counts"]["CANCELLED"] == 5


def test_an_unknown_batch_is_404(client):
    assert client.get("/batches/bat_nope").status_code == 404


# -- per-task concurrency -----------------------------------------------------------------


def test_a_task_with_concurrency_one_never_runs_twice_at_once(client, start_worker):
    jobs = [submit(client, "one_at_a_time", kwargs={"seconds": 0.4}) for _ in range(4)]
    start_worker("--name", "c1", "--simple")
    start_worker("--name", "c2", "--simple")

    for job in jobs:
        wait_for_status(client, job["job_id"], {"COMPLETED"}, timeout=30)

    spans = sorted(
        (get_job(client, j["job_id"])["result"]["started"], get_job(client, j["job_id"])["result"]["ended"])
        for j in jobs
    )
    for (_, ended), (started, _) in zip(spans, spans[1:], strict=False):
        assert started >= ended - 0.01, spans


# -- run_at -------------------------------------------------------------------------------


def test_run_at_delays_a_job_through_rqs_scheduler(client, start_worker):
    from datetime import UTC, datetime, timedelta

    when = datetime.now(UTC) + timedelta(seconds=3)
    job = submit(client, "add", args=[1, 1], run_at=when.isoformat())
    assert job["run_at"] is not None
    start_worker("--name", "later", "--simple")
    time.sleep(1.5)
    assert get_job(client, job["job_id"])["status"] == "QUEUED"
    done = wait_for_status(client, job["job_id"], {"COMPLETED"}, timeout=20)
    assert done["started_at"] >= when.isoformat()[:19]


def test_a_bad_run_at_is_422(client):
    for value in ("tomorrow", "2030-01-01T00:00:00", "9999-12-31T23:59:59+00:00", 5):
        assert client.post("/tasks/add", json={"args": [1, 1], "run_at": value}).status_code == 422


def test_a_child_whose_release_met_a_redis_failure_is_released_by_the_reconciler(
    app, client, redis_conn, monkeypatch, run_burst_worker
):
    # Given a parent and a child that allows its failure, waiting in RQ's deferred registry
    parent = submit(client, "fail", max_retries=0)
    child = submit(client, "add", args=[2, 3], depends_on=[parent["job_id"]], allow_failure=True)
    rq_child = RQJob.fetch(f"{child['job_id']}-1", connection=redis_conn, serializer=JSONSerializer)
    assert rq_child.get_status() == "deferred"
    # When the parent's failure is applied while Redis fails the child's release (RQ releases a
    # dependant only when its parent's RQ job finishes: this one is ours to release)
    refused = RedisUnavailable("Redis was unreachable moments ago")
    monkeypatch.setattr(QueueAdapter, "discard_deferred", lambda self, rq_id: (_ for _ in ()).throw(refused))
    reports = [
        protocol.started(parent["job_id"], 1, "w1"),
        protocol.failed(parent["job_id"], 1, "RuntimeError: boom"),
    ]
    client.post("/internal/reports", json={"sent_at": time.time(), "reports": reports}, headers=AUTH)
    monkeypatch.undo()
    # Then the parent has failed and the child is left waiting, deferred in RQ (the report is not
    # applied again: the parent's end is recorded)
    assert get_job(client, parent["job_id"])["status"] == "FAILED"
    assert get_job(client, child["job_id"])["status"] == "QUEUED"
    assert rq_child.get_status() == "deferred"
    # And the reconciler's next pass releases it, and it runs
    age(app, child["job_id"])
    report = services(app).reconciler.run_once()
    assert report.enqueued == [child["job_id"]]
    run_burst_worker()
    done = wait_for_status(client, child["job_id"], "COMPLETED")
    assert done["result"] == 5
