"""A failing roll-up of the job counts never keeps the reconciler from settling jobs.

The roll-up runs first in each pass; its error (a full disk, a lock timeout, an overflow) must
cost only the roll-up, since recovering lost jobs is what the pass is for.
"""

from __future__ import annotations

from sqlalchemy.exc import OperationalError

from backend.api.context import services
from tests.test_leadership import lose_a_queued_job


def test_a_pass_whose_roll_up_fails_still_requeues_a_lost_job(app, client, redis_conn, monkeypatch, caplog):
    # Given a lost job, and a store whose count roll-up fails
    job = lose_a_queued_job(app, client, redis_conn)

    def failing_roll_up(*_args, **_kwargs):
        raise OperationalError("INSERT INTO job_counts ...", {}, Exception("integer out of range"))

    monkeypatch.setattr("backend.recovery.reconciler.counts.roll_up", failing_roll_up)

    # When the reconciler passes
    report = services(app).reconciler.run_once()

    # Then the job is requeued all the same, and the failed roll-up is logged
    assert report is not None and report.requeued == [job["job_id"]]
    assert client.get(f"/jobs/{job['job_id']}").get_json()["attempt"] == 2
    assert "roll-up" in caplog.text
