"""What a job's event history holds and where a stream starts in it.

Why: the history is bounded in events (EVENTS_HISTORY), so each event must be small: a status
event per snooze or retry carrying 64 KiB of arguments held ~32 MiB of Redis per job (review 43,
finding 3). And a Last-Event-ID newer than every event must not silence a stream for ever
(finding 5).
"""

from __future__ import annotations

import threading
import time

import requests

from backend.service.representations import HEAVY_FIELDS
from tests.helpers import AUTH, get_job, submit, submit_add, wait_until
from tests.test_events import of_kind, read_stream, statuses


def _snooze(client, job_id: str, attempt: int) -> None:
    """Report attempt ``attempt`` started and snoozed for 1 s, as a worker would."""
    reports = [
        {"job_id": job_id, "attempt": attempt, "event": "started", "worker": "w", "at": time.time()},
        {"job_id": job_id, "attempt": attempt, "event": "snoozed", "seconds": 1, "reason": "429"},
    ]
    response = client.post("/internal/reports", json={"sent_at": time.time(), "reports": reports}, headers=AUTH)
    assert response.status_code == 200, response.get_json()


def test_status_events_leave_out_the_heavy_fields_so_a_snoozing_job_holds_little_in_redis(
    client, live_server, redis_conn
):
    pad = "x" * 60_000  # arguments within MAX_ARGS_BYTES (64 KiB)
    job_id = submit(client, "summarise_stream", kwargs={"text": pad})["job_id"]
    received: list = []
    reader = threading.Thread(
        target=read_stream, args=(f"{live_server}/jobs/{job_id}/events",), kwargs={"received": received}
    )
    reader.start()

    def last_status() -> list:
        return [(d["attempt"], d["status"]) for d in of_kind(received, "status")][-1:]

    # Each attempt is seen QUEUED before the next report: the hub polls every 0.1 s, and a cancel
    # sent at once could otherwise come before the poll that sees the last attempt QUEUED.
    wait_until(lambda: last_status() == [(1, "QUEUED")], what="the first status event")
    for attempt in range(1, 13):  # each snooze is a new attempt: a status event each
        _snooze(client, job_id, attempt)
        wait_until(lambda a=attempt: last_status() == [(a + 1, "QUEUED")], what=f"attempt {attempt + 1} QUEUED")
    assert client.post(f"/jobs/{job_id}/cancel", json={}).status_code == 200
    reader.join(timeout=30)

    # A new attempt is PENDING until it is on its queue, and each attempt's start and snooze are
    # two writes: a 0.1 s poll may catch either in between (seen in the PostgreSQL pass under load).
    passing = ("PENDING", "PROCESSING")
    assert [status for status in statuses(received) if status not in passing] == ["QUEUED"] * 13 + ["CANCELLED"]
    key = f"jobservice:events:{job_id}"
    entries, used = redis_conn.xlen(key), redis_conn.memory_usage(key)
    # Before: 14 status events of ~64 KiB each, ~32 MiB at EVENTS_HISTORY (500) events.
    assert used / entries * 500 < 4 * 2**20, f"{used / entries * 500 / 2**20:.0f} MiB per job at EVENTS_HISTORY"
    whole = get_job(client, job_id)
    for data in of_kind(received, "status"):
        assert not set(HEAVY_FIELDS) & set(data), sorted(data)
    # The last status event is the job as GET /jobs/<id> answers it, less its heavy fields ...
    assert of_kind(received, "status")[-1] == {k: v for k, v in whole.items() if k not in HEAVY_FIELDS}
    # ... and `end` is the whole job.
    assert of_kind(received, "end") == [whole] and whole["kwargs"] == {"text": pad}


def test_a_last_event_id_ahead_of_the_history_replays_it_and_the_stream_still_ends(client, live_server):
    job_id = submit_add(client)["job_id"]  # no worker: QUEUED
    url = f"{live_server}/jobs/{job_id}/events"
    ahead = f"{int(time.time() * 1000) + 3_600_000}-0"  # an hour past every event
    received: list = []
    done = threading.Event()

    def read():
        try:
            read_stream(url, headers={"Last-Event-ID": ahead}, received=received)
        finally:
            done.set()

    threading.Thread(target=read, daemon=True).start()
    wait_until(lambda: received, what="the replayed status event")
    assert client.post(f"/jobs/{job_id}/cancel", json={}).status_code == 200
    # Before: every event, `end` too, was dropped as seen; the stream stayed open on keep-alives.
    assert done.wait(8), f"the stream is still open 8 s after the job ended; got {received}"
    assert statuses(received) == ["QUEUED", "CANCELLED"] and [k for _, k, _ in received][-1] == "end"
    # On the ended job the same id is past its end: 204, as for the end's own id.
    assert requests.get(url, headers={"Last-Event-ID": ahead}, timeout=(5, 30)).status_code == 204
