"""Live job events: the broker's event log, and ``GET /jobs/<job_id>/events`` read as a client would.

Why: a client follows a long task through this stream (status, progress, output, logs, end),
reconnecting with Last-Event-ID; it must see every event once and in order.
"""

from __future__ import annotations

import json

from backend.broker.events import EventLog


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
