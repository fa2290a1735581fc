"""The event hub's store poll: every watched job's (status, attempt) in one statement.

Why: with 1,000 open streams the hub reads them every EVENTS_POLL_SECONDS; an IN-list of a bound
parameter per id (two statements of 500) was most of what open streams cost the host (issue 17, T6).
"""

from __future__ import annotations

from sqlalchemy import event

from backend.api.context import services
from backend.store.event_reads import status_keys
from tests.helpers import submit_add


def test_the_status_of_1200_watched_jobs_is_one_statement_and_missing_ones_are_left_out(app, client):
    # Given 1,200 watched ids: 3 jobs that exist (one of them cancelled) and 1,197 that do not
    jobs = [submit_add(client)["job_id"] for _ in range(3)]
    assert client.post(f"/jobs/{jobs[0]}/cancel", json={}).status_code == 200
    watched = [*jobs, *(f"job_{i:032x}" for i in range(1197))]
    statements = []
    engine = services(app).engine
    listener = lambda *args: statements.append(args[2])  # noqa: E731 - (conn, cursor, statement, ...)
    event.listen(engine, "before_cursor_execute", listener)
    try:
        # When the hub polls them
        found = status_keys(services(app).sessions, watched)
    finally:
        event.remove(engine, "before_cursor_execute", listener)
    # Then the jobs that exist come back with their status and attempt, in one statement
    assert found == {jobs[0]: ("CANCELLED", 1), jobs[1]: ("QUEUED", 1), jobs[2]: ("QUEUED", 1)}
    assert len(statements) == 1, statements
