"""GET /jobs search filters (issue 16 item 2): each filter, their combinations, the owner rule,
cursors bound to the filters, bad input as 422, and the plans: every filter read from an index."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from alembic import command
from sqlalchemy import event, text

from backend.api.context import services
from backend.app import create_app
from backend.core.job_filters import JobFilter
from backend.store import job_search
from backend.store.engine import alembic_config
from backend.store.job_reads import job_page
from tests.helpers import bearer

KEYS = "alice:alice-key,bob:bob-key,ops:ops-key:admin"
ALICE, BOB, OPS = bearer("alice-key"), bearer("bob-key"), bearer("ops-key")


def ids(response) -> list[str]:
    assert response.status_code == 200, response.get_data(as_text=True)
    return [job["job_id"] for job in response.get_json()["jobs"]]


def submit(client, task: str = "echo", headers=None, **kwargs) -> str:
    response = client.post(f"/tasks/{task}", json={"kwargs": kwargs}, headers=headers or {})
    assert response.status_code == 202, response.get_data(as_text=True)
    return response.get_json()["job_id"]


def test_kwargs_filters_match_the_value_as_text_or_as_json(client):
    as_number = submit(client, document_id=7, lang="en")
    as_text = submit(client, document_id="7", lang="fr")
    other = submit(client, document_id=8, lang="en")
    flag = submit(client, document_id=None, urgent=True)

    assert ids(client.get("/jobs?kwargs.document_id=7")) == [as_text, as_number]
    assert ids(client.get("/jobs?kwargs.document_id=7&kwargs.lang=en")) == [as_number]
    assert ids(client.get("/jobs?kwargs.lang=en&kwargs.document_id=8")) == [other]
    assert ids(client.get("/jobs?kwargs.urgent=true&kwargs.document_id=null")) == [flag]
    assert ids(client.get("/jobs?kwargs.document_id=9")) == []
    assert ids(client.get("/jobs?kwargs.document_id=7&task=add")) == []
    assert ids(client.get("/jobs?kwargs.document_id=7&status=QUEUED&limit=1")) == [as_text]


def test_q_finds_a_substring_of_the_task_the_error_or_the_progress_message(app, client):
    manager = services(app).jobs
    failed, progressing, plain = submit(client), submit(client), submit(client, "add", a=1, b=2)
    manager.end_job(failed, error="OSError: Disk FULL on host7")
    manager.update_job_progress(progressing, attempt=1, progress=40, message="Parsing page 12 of 90")

    assert ids(client.get("/jobs?q=disk full")) == [failed]
    assert ids(client.get("/jobs?q=PAGE 12")) == [progressing]
    assert ids(client.get("/jobs?q=ech")) == [progressing, failed]
    assert ids(client.get("/jobs?q=add&task=add")) == [plain]
    # Wildcards and quotes are taken literally.
    assert ids(client.get("/jobs?q=%25_%25")) == []
    assert ids(client.get('/jobs?q="disk"')) == []
    # The index follows a change of the text: the progress message moved on.
    manager.update_job_progress(progressing, attempt=1, progress=60, message="writing")
    assert ids(client.get("/jobs?q=page 12")) == []


def test_a_common_q_finds_the_same_jobs_row_by_row(app, client, monkeypatch):
    """A common q (job_search.q_is_common) is tested row by row along the order's index (not
    read whole from the trigram index and sorted): the same jobs, in the same order."""
    manager = services(app).jobs
    made = [submit(client) for _ in range(4)]
    for job_id in made[:3]:
        manager.end_job(job_id, error="Timeout talking to PRINTER")
    expected = ids(client.get("/jobs?q=printer"))
    assert expected == list(reversed(made[:3]))

    monkeypatch.setattr(job_search, "FEW_MATCHES", 1)  # SQLite's rule
    monkeypatch.setattr(job_search, "COMMON_IN_NEWEST", 1)  # PostgreSQL's
    assert ids(client.get("/jobs?q=printer")) == expected
    first = client.get("/jobs?q=printer&limit=2").get_json()
    assert ids(client.get(f"/jobs?q=printer&limit=2&cursor={first['next_cursor']}")) == expected[2:]
    assert client.post("/jobs/retry", json={"q": "printer", "dry_run": True}).get_json()["matched"] == 3


def test_status_task_time_and_batch_filters_combine(client):
    batch = client.post("/tasks/add/batch", json={"jobs": [{"args": [1, 2]}, {"args": [3, 4]}]}).get_json()
    lone = submit(client, "add", a=1, b=2)
    time.sleep(0.003)  # created_at is shown to the millisecond: the next job in a later one
    echo = submit(client)
    jobs = {job["job_id"]: job for job in client.get("/jobs?limit=10").get_json()["jobs"]}
    middle = (datetime.fromisoformat(jobs[lone]["created_at"]) + timedelta(milliseconds=1)).isoformat()

    # (On PostgreSQL a batch's jobs share one created_at: their order is then the ids'.)
    assert sorted(ids(client.get(f"/jobs?batch_id={batch['batch_id']}"))) == sorted(batch["job_ids"])
    assert ids(client.get("/jobs", query_string={"task": "add", "created_after": middle})) == []
    assert ids(client.get("/jobs", query_string={"task": "echo", "created_after": middle})) == [echo]
    assert set(ids(client.get("/jobs", query_string={"task": "add", "created_before": middle}))) == {
        *batch["job_ids"],
        lone,
    }
    naive = datetime.fromisoformat(jobs[echo]["created_at"]).astimezone(UTC).replace(tzinfo=None) + timedelta(0, 1)
    assert set(ids(client.get(f"/jobs?status=queued&created_before={naive.isoformat()}"))) == set(jobs)
    assert ids(client.get("/jobs?schedule_id=sch_none")) == []
    # The ends of time (past them in UTC) are no error.
    assert (
        len(ids(client.get("/jobs?created_before=9999-12-31T23:59:59-01:00&created_after=0001-01-01T00:00%2B01:00")))
        == 4
    )


def test_the_owner_filter_is_for_admins(settings):
    settings["API_KEYS"] = KEYS
    client = create_app(settings).test_client()
    alices = submit(client, headers=ALICE, document_id=1)
    bobs = submit(client, headers=BOB, document_id=1)

    refused = client.get("/jobs?owner=bob", headers=ALICE)
    assert refused.status_code == 403
    assert "owner filter is for admin keys" in refused.get_json()["error"]["message"]
    assert ids(client.get("/jobs?owner=alice", headers=ALICE)) == [alices]
    assert ids(client.get("/jobs?kwargs.document_id=1", headers=ALICE)) == [alices]
    assert ids(client.get("/jobs?owner=bob&kwargs.document_id=1", headers=OPS)) == [bobs]
    assert ids(client.get("/jobs?kwargs.document_id=1", headers=OPS)) == [bobs, alices]


def test_a_cursor_goes_on_with_its_own_filters_only(client):
    made = [submit(client, document_id=5) for _ in range(3)]
    submit(client, document_id=6)

    first = client.get("/jobs?kwargs.document_id=5&limit=2").get_json()
    rest = client.get(f"/jobs?kwargs.document_id=5&limit=2&cursor={first['next_cursor']}")
    assert [j["job_id"] for j in first["jobs"]] + ids(rest) == list(reversed(made))
    assert rest.get_json()["next_cursor"] is None

    for other in ("kwargs.document_id=6", "task=echo", ""):
        response = client.get(f"/jobs?{other}&limit=2&cursor={first['next_cursor']}")
        assert response.status_code == 422, other
        assert "other filters" in response.get_json()["error"]["message"]


@pytest.mark.parametrize(
    "query, says",
    [
        ("colour=red", "unknown parameter 'colour'"),
        ("q=ab", "q must be 3 to 200 characters"),
        ("q=" + "x" * 201, "q may be at most 200"),
        ("kwargs.1x=2", "a kwargs filter names a keyword argument"),
        ("kwargs.x=" + "y" * 201, "at most 200 characters"),
        ("&".join(f"kwargs.k{i}=1" for i in range(6)), "at most 5 kwargs filters"),
        ("created_after=yesterday", "created_after must be an ISO 8601 time"),
        ("created_before=2030-02-30T00:00:00Z", "created_before must be an ISO 8601 time"),
        ("task=echo&task=add", "is given more than once"),
        ("status=DONE", "status must be one of"),
    ],
)
def test_bad_filters_are_422_naming_the_fault(client, query, says):
    response = client.get(f"/jobs?{query}")
    assert response.status_code == 422
    assert says in response.get_json()["error"]["message"]


@pytest.mark.parametrize("query", ["owner=a%00", "q=ab%00c", "kwargs.x=%00", "batch_id=%00", "task=echo&q=e%00ch"])
def test_a_filter_holding_a_nul_matches_nothing_on_either_store(client, query):
    submit(client, x="\x00")
    response = client.get(f"/jobs?{query}")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["jobs"] == []


FILTERS = {
    # label: (filter, what the plan must show on SQLite, on PostgreSQL)
    "none": (JobFilter(), "ix_jobs_created", "ix_jobs_created"),
    "owner": (JobFilter(owner="a"), "ix_jobs_owner_created", "ix_jobs_owner_created"),
    "status": (JobFilter(status="FAILED"), "ix_jobs_status_created", "ix_jobs_status_created"),
    "task": (JobFilter(task="echo"), "ix_jobs_task_created", "ix_jobs_task_created"),
    "owner+status": (JobFilter(owner="a", status="FAILED"), "ix_jobs_owner_status_created", "ix_jobs_owner_status"),
    "owner+task": (JobFilter(owner="a", task="echo"), "ix_jobs_owner_task_created", "ix_jobs_owner_task_created"),
    "created range": (
        JobFilter(created_after=datetime(2026, 1, 1, tzinfo=UTC), created_before=datetime(2027, 1, 1, tzinfo=UTC)),
        "ix_jobs_created",
        "ix_jobs_created",
    ),
    "kwargs": (JobFilter(kwargs=(("document_id", "7"),)), "ix_job_kwargs_lookup", "ix_job_kwargs_lookup"),
    "two kwargs": (JobFilter(kwargs=(("a", "1"), ("b", "2"))), "ix_job_kwargs_lookup", "ix_job_kwargs_lookup"),
    # A tenant's kwargs filter walks its own rows, not every owner's holding that value (review B #5).
    "owner+kwargs": (JobFilter(owner="a", kwargs=(("a", "1"),)), "ix_job_kwargs_owner_lookup", "owner"),
    "owner+two kwargs+created_after": (
        JobFilter(owner="a", kwargs=(("a", "1"), ("b", "2")), created_after=datetime(2026, 1, 1, tzinfo=UTC)),
        "ix_job_kwargs_owner_lookup",
        "owner",
    ),
    "q": (JobFilter(q="disk full"), "jobs_fts VIRTUAL TABLE", "ix_jobs_search_trgm"),
    "batch": (JobFilter(batch_id="bat_1"), "ix_jobs_batch_created", "ix_jobs_batch_created"),
    "schedule": (JobFilter(schedule_id="sch_1"), "ix_jobs_schedule_created", "ix_jobs_schedule_created"),
}


@pytest.mark.parametrize("label", list(FILTERS))
def test_every_filter_is_read_from_an_index_not_a_scan(app, label):
    """The statement GET /jobs runs (page 2: with a cursor) is planned on an index: no scan of
    jobs, and, but for q (whose matches come unordered from the trigram index), no sort."""
    filt, sqlite_index, pg_index = FILTERS[label]
    engine = services(app).sessions.kw["bind"]
    executed: list[tuple[str, object]] = []

    def capture(_connection, _cursor, statement, parameters, _context, _many):
        if threading.get_ident() == me:  # not the app's background threads
            executed.append((statement, parameters))

    # Page 2 (a cursor) but for q: on empty tables PostgreSQL's costs make a walk of
    # ix_jobs_created look as cheap as the trigram index for it (a 1M store: bench/store_scale.py).
    after = None if label == "q" else (datetime(2026, 6, 1, tzinfo=UTC), "job_x")
    me = threading.get_ident()
    event.listen(engine, "before_cursor_execute", capture)
    try:
        list(job_page(services(app).sessions, filt=filt, after=after, limit=51, omit=frozenset()))
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    # The page's statement (for q, a probe of its trigram index comes first; on SQLite then a count
    # of the jobs of the tasks whose name holds q, which the index does not hold: migration 0015).
    statement, parameters = executed[-1]
    probes = (3 if engine.dialect.name == "sqlite" else 2) if label == "q" else 1
    assert len(executed) == probes, executed
    with engine.connect() as connection:
        if engine.dialect.name == "postgresql":
            connection.exec_driver_sql("SET enable_seqscan = off")  # a test's empty tables: a scan costs nothing
            plan = "\n".join(row[0] for row in connection.exec_driver_sql(f"EXPLAIN {statement}", parameters))
            assert pg_index in plan and "Seq Scan" not in plan, plan
            assert ("Sort" not in plan) or label in ("q", "none", "created range"), plan
        else:
            rows = connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)
            plan = "\n".join(row[3] for row in rows)
            assert sqlite_index in plan, plan
            assert not any(line.startswith("SCAN jobs") and "INDEX" not in line for line in plan.splitlines()), plan
            assert "TEMP B-TREE" not in plan or label == "q", plan


def test_the_jobs_stored_before_the_search_index_are_found_by_their_kwargs(app, client, store_url):
    """Migration 0013 fills job_kwargs from the jobs already stored (here: down to 0012 and up again)."""
    plain = submit(client, document_id=7, flag=True, ratio=0.5, nothing=None, nested={"a": 1}, long="x" * 201)
    text = submit(client, document_id="7")
    submit(client, document_id=8, note="NUL \x00 inside")  # taken in stride (PostgreSQL: its kwargs skipped)
    command.downgrade(alembic_config(store_url), "0012")
    command.upgrade(alembic_config(store_url), "head")

    assert ids(client.get("/jobs?kwargs.document_id=7")) == [text, plain]
    assert ids(client.get("/jobs?kwargs.flag=true&kwargs.ratio=0.5&kwargs.nothing=null")) == [plain]
    for absent in ("nested=%7B%22a%22%3A%201%7D", "long=" + "x" * 200):
        assert ids(client.get(f"/jobs?kwargs.{absent}")) == []


@pytest.mark.parametrize("q", ["échec", "ÉCHEC", "ΟΔΟΣ", "οδος", "STRAßE"])
def test_a_non_ascii_q_matches_alike_whether_rare_or_common(app, client, monkeypatch, q):
    """Both q paths (the trigram index, the row-by-row test) fold case the same way, beyond ASCII."""
    found, other = submit(client), submit(client)
    services(app).jobs.end_job(found, error="Échec: ΟΔΟΣ Straße 5 unreachable")
    services(app).jobs.end_job(other, error="disk full")
    rare = ids(client.get("/jobs", query_string={"q": q}))
    monkeypatch.setattr(job_search, "FEW_MATCHES", 0)  # SQLite's rule: every q is common
    monkeypatch.setattr(job_search, "COMMON_IN_NEWEST", 0)  # PostgreSQL's
    common = ids(client.get("/jobs", query_string={"q": q}))
    assert rare == common, (rare, common)
    if q == "οδος" and services(app).sessions.kw["bind"].dialect.name == "postgresql":
        # PostgreSQL's lower() keeps a final sigma (ς) and lowers Σ to σ: its q follows the database.
        assert common == []
    else:
        assert common == [found]


def test_the_backfill_writes_what_submission_writes(settings):
    """Migration 0013's backfill indexes a stored job as its submission did (review B #6): each
    number as its JSON text (not SQLite's "1.0e+16" nor jsonb's "10000000000000000"), the first
    20 kwargs in their own order (not jsonb's), and with the job's owner (a tenant's filter finds it)."""
    settings["API_KEYS"] = KEYS
    settings["HOUSEKEEPING_INTERVAL"] = "0"  # no thread of its own racing the downgrade
    store_url = settings["DATABASE_URL"]
    client = create_app(settings).test_client()
    values = [1e16, 2**70, 7.0, 0.1, 1e-7, True, None, "é"]
    made = {json.dumps(v) if not isinstance(v, str) else v: submit(client, headers=ALICE, x=v) for v in values}
    many = submit(client, headers=ALICE, zz_long_name=1, **{f"k{i:02d}": i for i in range(25)})
    bobs = submit(client, headers=BOB, x=True)
    command.downgrade(alembic_config(store_url), "0012")
    command.upgrade(alembic_config(store_url), "head")

    for as_text, job_id in made.items():
        expected = [bobs, job_id] if as_text == "true" else [job_id]
        assert ids(client.get("/jobs", query_string={"kwargs.x": as_text}, headers=OPS)) == expected, as_text
        assert ids(client.get("/jobs", query_string={"kwargs.x": as_text}, headers=ALICE)) == [job_id], as_text
    assert ids(client.get("/jobs?kwargs.zz_long_name=1", headers=ALICE)) == [many]  # the first 20 as submitted
    assert ids(client.get("/jobs?kwargs.k19=19", headers=ALICE)) == []  # the 21st onwards: not indexed
    assert ids(client.get("/jobs?kwargs.x=true", headers=BOB)) == [bobs]


def _fts_rows(app) -> int:
    """The jobs SQLite's trigram index holds (its docsize table: a row per indexed job; a count of
    the FTS table itself would read its external content, jobs)."""
    with services(app).sessions() as session:
        return session.execute(text(f"SELECT count(*) FROM {job_search.FTS_TABLE}_docsize")).scalar_one()


@pytest.mark.sqlite_only
def test_the_q_index_holds_only_jobs_with_text_yet_q_finds_every_task(app, client, store_url):
    """Migration 0015: a new job writes nothing to SQLite's trigram index (its task name is searched
    through the task names); a job enters it with its first error or progress message."""
    # Given jobs of two tasks, none with an error or a progress message yet
    plain, other = submit(client), submit(client, "add", a=1, b=2)
    # Then the index holds none of them, yet q finds each by a piece of its task's name, in any case
    assert _fts_rows(app) == 0
    assert ids(client.get("/jobs?q=ECH")) == [plain]
    # (read off the jobs' own task index, not the job counts, whose deltas may be many and unfolded)
    with services(app).sessions() as session:
        session.execute(text("DELETE FROM job_count_deltas"))
        session.execute(text("DELETE FROM job_counts"))
        session.commit()
    assert ids(client.get("/jobs?q=ECH")) == [plain]
    assert ids(client.get("/jobs?q=hox")) == [] and ids(client.get("/jobs?q=ADD")) == [other]
    # When one gets a progress message and the other fails
    manager = services(app).jobs
    manager.update_job_progress(plain, attempt=1, progress=10, message="Reading chapter nine")
    manager.end_job(other, error="ValueError: bad chapter")
    # Then both are in the index, found by their text and still by their task
    assert _fts_rows(app) == 2
    assert ids(client.get("/jobs?q=chapter")) == [other, plain]
    assert ids(client.get("/jobs?q=echo")) == [plain]
    # And a store migrated from before 0015 (every job indexed) keeps only those with text, alike
    third = submit(client)
    command.downgrade(alembic_config(store_url), "0014")
    assert _fts_rows(app) == 3
    command.upgrade(alembic_config(store_url), "head")
    assert _fts_rows(app) == 2
    assert ids(client.get("/jobs?q=chapter")) == [other, plain]
    assert ids(client.get("/jobs?q=echo")) == [third, plain]
