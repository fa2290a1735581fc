"""The event hub's store poll: which watched jobs changed (status, attempt), in one statement.

Why: with 1,000 open streams the hub reads them every EVENTS_POLL_SECONDS; an IN-list of a bound
parameter per id (two statements of 500) was most of what open streams cost the host (issue 17, T6),
and then reading every watched row at every poll when nothing had been committed since was.
"""

from __future__ import annotations

from sqlalchemy import text

from backend.api.context import services
from backend.store.event_reads import StatusPoll, status_key
from tests.helpers import submit_add


class _CountingCursor:
    def __init__(self, cursor, statements: list[str]):
        self._cursor, self._statements = cursor, statements

    def execute(self, sql, *args):
        self._statements.append(sql)
        self._cursor.execute(sql, *args)
        return self

    def __getattr__(self, name):
        return getattr(self._cursor, name)


def _counting(poll: StatusPoll) -> list[str]:
    """The statements ``poll`` sends from now on."""
    statements: list[str] = []
    run = poll._run

    def counted(sql, params, fetch):
        statements.append(sql)
        return run(sql, params, fetch)

    poll._run = counted
    return statements


def test_the_status_of_1200_watched_jobs_is_one_read_and_missing_ones_are_left_out(app, client):
    # Given 1,200 watched ids the hub knows nothing of yet: 3 jobs that exist (one of them
    # cancelled) and 1,197 that do not
    jobs = [submit_add(client)["job_id"] for _ in range(3)]
    assert client.post(f"/jobs/{jobs[0]}/cancel", json={}).status_code == 200
    watched = {job_id: None for job_id in [*jobs, *(f"job_{i:032x}" for i in range(1197))]}
    poll = StatusPoll(services(app).engine)
    statements = _counting(poll)
    try:
        # When the hub polls them
        found = poll.changed(watched)
    finally:
        poll.close()
    # Then the jobs that exist come back with their status and attempt: the marker, then one read
    assert found == {jobs[0]: ("CANCELLED", 1), jobs[1]: ("QUEUED", 1), jobs[2]: ("QUEUED", 1)}
    assert len(statements) == 2, statements


def test_a_poll_answers_only_what_changed_and_reads_no_row_while_nothing_was_committed(app, client):
    # Given three watched jobs whose statuses the hub has published
    jobs = [submit_add(client)["job_id"] for _ in range(3)]
    poll = StatusPoll(services(app).engine)
    try:
        keys = {job_id: status_key(*key) for job_id, key in poll.changed(dict.fromkeys(jobs)).items()}
        assert keys == {job_id: "QUEUED:1" for job_id in jobs}
        statements = _counting(poll)
        # When it polls again with nothing committed since: only the marker is read
        assert poll.changed(keys) == {}
        assert len(statements) == 1, statements
        # When one job is cancelled (another connection commits): that one only comes back
        assert client.post(f"/jobs/{jobs[1]}/cancel", json={}).status_code == 200
        assert poll.changed(keys) == {jobs[1]: ("CANCELLED", 1)}
        assert len(statements) == 3, statements
        # And a poll whose keys lag behind that answer (the hub could not publish it) reads again
        assert poll.changed(keys) == {jobs[1]: ("CANCELLED", 1)}
        keys[jobs[1]] = "CANCELLED:1"
        assert poll.changed(keys) == {}
        # And a job watched anew is read even with nothing committed
        fourth = submit_add(client)["job_id"]
        assert poll.changed(keys) == {}  # the submission's commit: read, nothing new among these
        assert poll.changed({**keys, fourth: None}) == {fourth: ("QUEUED", 1)}
    finally:
        poll.close()


def test_a_poll_reads_again_on_a_new_connection_when_its_own_was_lost(app, client):
    # Given a poll that holds its connection, and a job changed behind it
    job_id = submit_add(client)["job_id"]
    engine = services(app).engine
    poll = StatusPoll(engine)
    try:
        assert poll.changed({job_id: None}) == {job_id: ("QUEUED", 1)}
        poll._connection.driver_connection.close()  # closed under it (a server restart, an idle timeout)
        with engine.begin() as connection:
            connection.execute(text("UPDATE jobs SET attempt = 2 WHERE id = :id"), {"id": job_id})
        # When it polls: it reconnects and reads
        assert poll.changed({job_id: "QUEUED:1"}) == {job_id: ("QUEUED", 2)}
    finally:
        poll.close()
