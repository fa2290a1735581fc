"""A poll of an unchanged job on PostgreSQL (``GET /jobs/<id>``, the path clients hit most): one
statement on a pooled connection that goes back to the pool transactional, as the writers expect.

Why: the poll's stamp read runs in autocommit on PostgreSQL (no BEGIN, no ROLLBACK: a third of the
round trips); a connection left in autocommit would let a later multi-statement write commit half.
The statements are read from libpq's protocol trace of the API's one pooled connection.
"""

from __future__ import annotations

import re

from sqlalchemy import text

from backend.api.context import services
from backend.app import create_app, stop_background
from tests.helpers import submit_add


def _queries_sent(trace_path) -> list[str]:
    """The SQL the client sent, in order, from libpq's trace (simple and extended protocol)."""
    sent = []
    for message in re.split(r"^(?=\d{4}-\d\d-\d\d )", trace_path.read_text(), flags=re.MULTILINE):
        fields = message.split("\t", 4)
        if len(fields) < 5 or fields[1] != "F":
            continue
        if fields[3] == "Query":
            sent.append(fields[4].strip().strip('"'))
        elif fields[3] == "Parse":
            sent.append(re.match(r'\s*"[^"]*"\s+"(.*)"', fields[4], re.DOTALL)[1])
    return sent


def test_polling_an_unchanged_job_sends_one_select_and_leaves_the_connection_transactional(
    settings, postgres_url, tmp_path
):
    # Given the API on PostgreSQL with one pooled connection, and a job already polled once
    app = create_app({**settings, "DATABASE_URL": postgres_url, "DB_POOL_SIZE": 1, "DB_MAX_OVERFLOW": 0})
    try:
        client = app.test_client()
        job_id = submit_add(client)["job_id"]
        first = client.get(f"/jobs/{job_id}")
        assert first.status_code == 200
        engine = services(app).engine
        connection = engine.raw_connection()
        trace = tmp_path / "libpq.trace"
        with open(trace, "w") as sink:
            connection.driver_connection.pgconn.trace(sink.fileno())
            connection.close()
            # When it is polled again, unchanged
            again = client.get(f"/jobs/{job_id}")
            connection = engine.raw_connection()
            connection.driver_connection.pgconn.untrace()
        # Then the same body comes back, from one SELECT with no transaction around it (the pool's
        # ping is an empty statement)
        assert again.status_code == 200 and again.get_data() == first.get_data()
        sent = [q for q in _queries_sent(trace) if q not in ("", ";")]
        assert len(sent) == 1 and sent[0].upper().startswith("SELECT"), sent
        # And the connection went back transactional: a write that fails half way leaves nothing
        assert connection.driver_connection.autocommit is False
        connection.close()
        with engine.connect() as conn:
            try:
                with conn.begin():
                    conn.execute(text("UPDATE jobs SET progress = 99 WHERE id = :id"), {"id": job_id})
                    raise RuntimeError("the rest of the write failed")
            except RuntimeError:
                pass
        assert client.get(f"/jobs/{job_id}").get_json()["progress"] != 99
    finally:
        stop_background(app)
