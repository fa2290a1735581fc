"""Live job events: the broker's event log, and ``GET /jobs/<job_id>/events`` read as a client would.

Why: a client follows a long task through this stream (status, progress, output, logs, end),
reconnecting with Last-Event-ID; it must see every event once and in order.
"""

from __future__ import annotations

import json
import queue
import threading

import pytest
import requests

from backend.broker.events import EventLog, parse_id
from backend.service.representations import HEAVY_FIELDS
from tests.helpers import submit, wait_until


def test_event_log_appends_publishes_and_dedupes_status(redis_conn):
    events = EventLog(redis_conn, history=50, ttl=60)
    subscriber = events.subscriber()
    subscriber.subscribe("j1")
    confirmed = subscriber.get(timeout=1)
    assert (confirmed.kind, confirmed.job_id) == ("subscribe", "j1")

    first = events.append("j1", "progress", json.dumps({"progress": 10, "message": "a"}))
    assert events.publish_status("j1", "PROCESSING:1", '{"status": "PROCESSING"}', terminal=False)
    assert events.publish_status("j1", "PROCESSING:1", '{"status": "PROCESSING"}', terminal=False) is None
    last = events.publish_status("j1", "COMPLETED:1", '{"status": "COMPLETED"}', terminal=True)

    heard = [subscriber.get(timeout=1) for _ in range(4)]
    assert [(r.kind, r.event.kind) for r in heard] == [("event", k) for k in ("progress", "status", "status", "end")]
    assert heard[0].event.id == first and heard[2].event.id == last
    assert heard[3].event.data == '{"status": "COMPLETED"}'

    history = events.history("j1", after=None, limit=100)
    assert [e.kind for e in history] == ["progress", "status", "status", "end"]
    assert [e.id for e in events.history("j1", after=first, limit=100)] == [e.id for e in history[1:]]
    assert [e.kind for e in events.history("j1", after=None, limit=2)] == ["status", "end"]
    assert redis_conn.ttl("jobservice:events:j1") > 0
    subscriber.close()


# -- GET /jobs/<job_id>/events, read by a real HTTP client ------------------------------------


def read_stream(url: str, *, headers: dict | None = None, received: list | None = None, stop=None):
    """Read an SSE stream as a client would: the events (id, kind, data) until the server closes
    it, or until ``stop(events)`` holds; ``received`` (if given) fills as they arrive."""
    events = received if received is not None else []
    with requests.get(url, headers=headers, stream=True, timeout=(5, 30)) as response:
        assert response.status_code == 200, response.text
        assert response.headers["Content-Type"].startswith("text/event-stream")
        assert response.headers["Cache-Control"] == "no-cache"
        fields: dict[str, str] = {}
        for line in response.iter_lines(decode_unicode=True):
            if line:
                name, _, value = line.partition(": ")
                fields[name] = value
                continue
            if "event" in fields:
                events.append((fields["id"], fields["event"], json.loads(fields["data"])))
                if stop is not None and stop(events):
                    break
            fields = {}
    return events


def of_kind(events, wanted: str) -> list:
    return [data for _, kind, data in events if kind == wanted]


def statuses(events) -> list[str]:
    return [data["status"] for _, kind, data in events if kind == "status"]


def test_streams_follow_a_job_to_its_end_and_a_reconnect_gets_only_what_it_missed(
    client, live_server, run_burst_worker
):
    text = "One two. Three four five."  # its longest sentence, emitted word by word
    job_id = submit(client, "summarise_stream", kwargs={"text": text, "sentences": 1, "delay": 0.3})["job_id"]
    url = f"{live_server}/jobs/{job_id}/events"
    # Two clients on the same job, open before any worker takes it. The task runs for about a
    # second, over several of the hub's status polls (every 0.1 s), so PROCESSING is seen.
    streams = [[], []]
    readers = [threading.Thread(target=read_stream, args=(url,), kwargs={"received": s}) for s in streams]
    for reader in readers:
        reader.start()
    wait_until(lambda: all(streams), what="both streams' first status event")

    run_burst_worker()
    for reader in readers:
        reader.join(timeout=30)

    events = streams[0]
    assert streams[1] == events  # every event to both, in the same order
    assert statuses(events) == ["QUEUED", "PROCESSING", "COMPLETED"]
    assert "".join(data["data"]["token"] for data in of_kind(events, "output")) == "Three four five."
    assert [(data["progress"], data["message"]) for data in of_kind(events, "progress")] == [
        (33, "1 of 3 words"),
        (66, "2 of 3 words"),
        (100, "3 of 3 words"),
    ]
    assert [(data["level"], data["message"]) for data in of_kind(events, "log")] == [
        ("INFO", "summarising 2 sentences into 1"),
        ("INFO", "summary of 3 words ready"),
    ]
    final = client.get(f"/jobs/{job_id}").get_json()
    assert events[-1][1] == "end" and events[-1][2] == final and final["result"]["summary"] == "Three four five."
    ids = [parse_id(event_id) for event_id, _, _ in events]
    assert ids == sorted(set(ids))  # in order, none twice

    # A client that saw up to PROCESSING gets the rest, once.
    seen = next(i for i, (_, kind, data) in enumerate(events) if kind == "status" and data["status"] == "PROCESSING")
    missed = read_stream(url, headers={"Last-Event-ID": events[seen][0]})
    assert missed == events[seen + 1 :]
    # A stream on the ended job: its history, then end, at once.
    assert read_stream(url) == events
    # After end, a reconnect is told to stop.
    after_end = requests.get(url, params={"last_event_id": events[-1][0]}, timeout=10)
    assert after_end.status_code == 204


def test_progress_events_reach_an_open_stream_as_a_worker_appends_them(client, live_server, redis_conn):
    job_id = submit(client, "add", args=[1, 2])["job_id"]  # no worker: it stays QUEUED
    received: list = []
    reader = threading.Thread(
        target=read_stream,
        args=(f"{live_server}/jobs/{job_id}/events",),
        kwargs={"received": received, "stop": lambda events: len(events) == 3},
    )
    reader.start()
    wait_until(lambda: received, what="the first status event")

    worker_side = EventLog(redis_conn)
    worker_side.append(job_id, "progress", json.dumps({"progress": 40, "message": "reading"}))
    worker_side.append(job_id, "output", json.dumps({"data": {"token": "Hel"}, "attempt": 1}))
    reader.join(timeout=30)

    assert [(kind, data) for _, kind, data in received] == [
        ("status", {k: v for k, v in client.get(f"/jobs/{job_id}").get_json().items() if k not in HEAVY_FIELDS}),
        ("progress", {"progress": 40, "message": "reading"}),
        ("output", {"data": {"token": "Hel"}, "attempt": 1}),
    ]


@pytest.fixture
def keyed_server(settings, request) -> str:
    settings["API_KEYS"] = "alice:alice-key-0123456789abcdef,bob:bob-key-0123456789abcdef"
    settings["EVENTS_MAX_STREAMS_PER_OWNER"] = 1
    return request.getfixturevalue("live_server")


ALICE = {"Authorization": "Bearer alice-key-0123456789abcdef"}
BOB = {"Authorization": "Bearer bob-key-0123456789abcdef"}


def test_streams_keep_owners_apart_refuse_bad_ids_and_cap_each_owner(keyed_server):
    created = requests.post(f"{keyed_server}/tasks/add", json={"args": [1, 2]}, headers=ALICE, timeout=10)
    url = f"{keyed_server}/jobs/{created.json()['job_id']}/events"

    others = requests.get(url, headers=BOB, timeout=10)
    assert others.status_code == 404 and others.json()["error"]["code"] == "not_found"
    malformed = requests.get(url, headers={**ALICE, "Last-Event-ID": "yesterday"}, timeout=10)
    assert malformed.status_code == 400 and "Last-Event-ID" in malformed.json()["error"]["message"]

    with requests.get(url, headers=ALICE, stream=True, timeout=10) as first:
        assert first.status_code == 200
        second = requests.get(url, headers=ALICE, timeout=10)
        assert second.status_code == 429 and second.headers["Retry-After"]
        assert "EVENTS_MAX_STREAMS_PER_OWNER" in second.json()["error"]["message"]


def test_a_stream_answers_503_while_redis_is_down(settings, request):
    settings["REDIS_URL"] = "redis://127.0.0.1:1/0"  # nothing listens there
    live_server = request.getfixturevalue("live_server")
    job_id = requests.post(f"{live_server}/tasks/add", json={"args": [1, 2]}, timeout=10).json()["job_id"]

    response = requests.get(f"{live_server}/jobs/{job_id}/events", timeout=30)

    assert response.status_code == 503 and response.headers["Retry-After"]
    assert response.json()["error"]["code"] == "service_unavailable"


def test_a_job_run_again_after_its_end_streams_its_new_attempt(client, live_server):
    job_id = submit(client, "add", args=[1, 2])["job_id"]
    client.post(f"/jobs/{job_id}/cancel", json={})
    url = f"{live_server}/jobs/{job_id}/events"
    assert [kind for _, kind, _ in read_stream(url)] == ["status", "end"]

    assert client.post(f"/jobs/{job_id}/retry", json={}).status_code == 202
    events = read_stream(url, stop=lambda events: statuses(events)[-1:] == ["QUEUED"])

    # The first run's end is history: the stream stays open for the second attempt.
    assert [kind for _, kind, _ in events] == ["status", "status"]
    assert statuses(events) == ["CANCELLED", "QUEUED"] and events[-1][2]["attempt"] == 2


def test_streams_close_when_redis_drops_the_hub_and_a_reconnect_misses_nothing(client, live_server, redis_conn):
    job_id = submit(client, "add", args=[1, 2])["job_id"]
    url = f"{live_server}/jobs/{job_id}/events"
    first: list = []
    reader = threading.Thread(target=read_stream, args=(url,), kwargs={"received": first})
    reader.start()
    wait_until(lambda: first, what="the first status event")

    redis_conn.client_kill_filter(_type="pubsub")  # the hub's subscriber connection is gone
    reader.join(timeout=15)
    assert not reader.is_alive()  # the server ended the stream: the client reconnects
    EventLog(redis_conn).append(job_id, "progress", json.dumps({"progress": 5, "message": None}))

    missed = read_stream(url, headers={"Last-Event-ID": first[-1][0]}, stop=lambda events: True)
    assert [(kind, data) for _, kind, data in missed] == [("progress", {"progress": 5, "message": None})]


def test_a_client_that_falls_behind_is_cut_off_and_catches_up_by_reconnecting(settings, request, redis_conn):
    settings["EVENTS_HISTORY"] = 2000
    live_server = request.getfixturevalue("live_server")
    job_id = requests.post(f"{live_server}/tasks/add", json={"args": [1, 2]}, timeout=10).json()["job_id"]
    url = f"{live_server}/jobs/{job_id}/events"
    total, text = 1000, "x" * 15_000  # 15 MB: more than the sockets' buffers and the stream's queue
    with requests.get(url, stream=True, timeout=(5, 30)) as response:
        # The client reads nothing while the task emits.
        worker_side = EventLog(redis_conn, history=2000)
        for number in range(total):
            worker_side.append(job_id, "output", json.dumps({"data": [number, text], "attempt": 1}))
        wait_until(
            lambda: all(c["omem"] == "0" for c in redis_conn.client_list(_type="pubsub")),
            what="the hub to have read every event",
        )
        first = []
        lines = response.iter_lines(decode_unicode=True)
        fields: dict = {}
        for line in lines:
            if line:
                name, _, value = line.partition(": ")
                fields[name] = value
            elif "event" in fields:
                first.append((fields["id"], fields["event"], json.loads(fields["data"])))
                fields = {}
    outputs = [data["data"][0] for _, kind, data in first if kind == "output"]
    assert len(outputs) < total  # the server closed the stream: it did not buffer 15 MB for it

    rest = read_stream(
        url, headers={"Last-Event-ID": first[-1][0]}, stop=lambda events: events[-1][2]["data"][0] == total - 1
    )
    assert outputs + [data["data"][0] for _, _, data in rest] == list(range(total))


def test_the_browser_guard_keeps_a_rebinding_page_off_the_stream(client):
    job_id = submit(client, "add", args=[1, 2])["job_id"]
    # A page on evil.example whose name resolves to 127.0.0.1 (DNS rebinding), API_KEYS unset.
    response = client.get(f"/jobs/{job_id}/events", headers={"Host": "evil.example"})
    assert response.status_code == 403 and response.get_json()["error"]["code"] == "host_not_allowed"


# -- review 41: what a client must never see, and what a stream must not hold ----------------


def test_a_reconnect_after_end_is_204_and_a_new_stream_ends_at_the_end_whatever_came_after(
    client, live_server, redis_conn
):
    # A cancelled running task keeps emitting until the stop reaches it: its events land after the end.
    job_id = submit(client, "add", args=[1, 2])["job_id"]
    client.post(f"/jobs/{job_id}/cancel", json={})
    url = f"{live_server}/jobs/{job_id}/events"
    events = read_stream(url)
    assert [kind for _, kind, _ in events] == ["status", "end"]
    worker_side = EventLog(redis_conn)
    worker_side.append_many(job_id, [("output", json.dumps({"data": n, "attempt": 1})) for n in range(600)])

    again = requests.get(url, headers={"Last-Event-ID": events[-1][0]}, timeout=10)
    assert again.status_code == 204, (again.status_code, again.text)
    # More than the history's 500 events came after the end: a new client still gets the end, last.
    fresh = read_stream(url)
    assert fresh[-1] == events[-1] and [kind for _, kind, _ in fresh] == ["end"]


def test_a_late_publish_of_an_older_status_does_not_follow_the_end(client, live_server):
    from backend.api.context import services

    with client.application.app_context():
        hub = services().event_hub
    job_id = submit(client, "add", args=[1, 2])["job_id"]
    read_before = client.get(f"/jobs/{job_id}").data  # one host read the job while QUEUED ...
    client.post(f"/jobs/{job_id}/cancel", json={})
    url = f"{live_server}/jobs/{job_id}/events"
    events = read_stream(url)  # ... another published CANCELLED + end ...
    hub.publish(job_id, read_before)  # ... then the first host's publish lands.

    assert read_stream(url) == events  # no QUEUED after the end
    again = requests.get(url, headers={"Last-Event-ID": events[-1][0]}, timeout=10)
    assert again.status_code == 204, (again.status_code, again.text)


def test_a_reset_by_the_status_poll_leaves_one_hub_thread_delivering_each_event_once(client, redis_conn):
    from redis.exceptions import ResponseError

    from backend.api.context import services

    with client.application.app_context():
        hub = services().event_hub
    job_id = submit(client, "add", args=[1, 2])["job_id"]
    real, failures = hub.events.publish_status, [ResponseError("OOM command not allowed")]

    def refused_once(*args, **kwargs):  # a Redis that refuses one write; the subscriber is fine
        if failures:
            raise failures.pop()
        return real(*args, **kwargs)

    hub.events.publish_status = refused_once
    try:
        first = hub.watch(job_id, "local")
        wait_until(lambda: first.closed, what="the poll's reset to close the stream")
        second = hub.watch(job_id, "local")  # the client reconnects
        wait_until(lambda: len([t for t in threading.enumerate() if t.name == "event-hub"]) == 1, timeout=5)
        EventLog(redis_conn).append(job_id, "progress", json.dumps({"progress": 5, "message": None}))
        # Every event until 0.5 s pass without one (a status publish of the poll may come after
        # the progress on a loaded machine: it is another event, not one delivered twice).
        received = []
        while True:
            try:
                received.append(second.next(0.5 if any(e.kind == "progress" for e in received) else 5))
            except queue.Empty:
                break
        hub.release(second)
    finally:
        hub.events.publish_status = real
    delivered = [(event.id, event.kind) for event in received]
    assert [kind for _, kind in delivered].count("progress") == 1, delivered
    assert len({event_id for event_id, _ in delivered}) == len(delivered), f"an event delivered twice: {delivered}"


def test_a_last_event_id_past_redis_range_is_a_400_not_a_503(client, live_server):
    job_id = submit(client, "add", args=[1, 2])["job_id"]
    url = f"{live_server}/jobs/{job_id}/events"
    response = requests.get(url, headers={"Last-Event-ID": "99999999999999999999-0"}, timeout=10)
    assert response.status_code == 400, (response.status_code, response.text)


def test_a_stream_whose_client_went_away_frees_its_slot_within_the_keep_alive(settings, request):
    import socket

    settings["EVENTS_MAX_STREAMS_PER_OWNER"] = 1
    live_server = request.getfixturevalue("live_server")
    job_id = submit(request.getfixturevalue("client"), "add", args=[1, 2])["job_id"]  # QUEUED: silent
    host, port = live_server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(f"GET /jobs/{job_id}/events HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        received = b""
        while b"event: status" not in received:
            received += sock.recv(4096)
    # The tab was closed: the slot is free once the next keep-alive finds the socket gone.

    def opened() -> bool:
        with requests.get(f"{live_server}/jobs/{job_id}/events", stream=True, timeout=10) as again:
            return again.status_code == 200

    wait_until(opened, timeout=10, what="the closed stream's slot to be freed")


def _rss_mib() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmRSS:"))


def test_streams_that_read_nothing_do_not_hold_the_replayed_history(client, live_server, redis_conn):
    import socket
    import time

    job_id = submit(client, "add", args=[1, 2])["job_id"]
    # The bounded history full of the largest outputs a task may emit (500 x 16 KiB).
    EventLog(redis_conn).append_many(
        job_id, [("output", json.dumps({"data": [n, "x" * 16_000], "attempt": 1})) for n in range(500)]
    )
    host, port = live_server.removeprefix("http://").split(":")
    before, sockets = _rss_mib(), []
    try:
        for _ in range(30):  # one tenant's streams that read nothing (a small receive window)
            s = socket.create_connection((host, int(port)))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.sendall(f"GET /jobs/{job_id}/events HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            sockets.append(s)
        time.sleep(2)  # they have all replayed as far as their sockets let them
        grown = _rss_mib() - before
    finally:
        for s in sockets:
            s.close()
    assert grown < 60, f"the server grew {grown:.0f} MiB for 30 streams that read nothing"
