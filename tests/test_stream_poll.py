"""The event hub's status poll after a stream opens: what the stream published is not read again.

Why: a stream that opens reads its job and publishes its status itself; the poll then read the
same job's JSON and published it once more (deduplicated by Redis), for each new stream. With
1,000 streams opening, that kept the streams process busy for ~2 s after the last one opened
(issue 17, T6). A status change after the opening must still come through the poll.
"""

from __future__ import annotations

import queue

from backend.api.context import services
from backend.service import job_events
from tests.helpers import submit, wait_until


def test_the_poll_does_not_read_again_what_an_opening_stream_published_and_still_sees_changes(client, monkeypatch):
    with client.application.app_context():
        hub = services().event_hub
    job_id = submit(client, "add", args=[1, 2])["job_id"]  # no worker: it stays QUEUED
    polls, reads = [], []
    real_changed, real_json = job_events.StatusPoll.changed, hub._reader.json

    def changed(poll, watched):
        polls.append(dict(watched))
        return real_changed(poll, watched)

    def json_of(job, owner):
        reads.append(job)
        return real_json(job, owner=owner)

    monkeypatch.setattr(job_events.StatusPoll, "changed", changed)
    monkeypatch.setattr(hub._reader, "json", json_of)
    # Given a stream opened as GET /jobs/<id>/events opens one: watch, read the job, publish it
    watch = hub.watch(job_id, "local")
    try:
        hub.publish(job_id, real_json(job_id, owner=None))
        # When the poll has run a few times
        wait_until(lambda: len(polls) >= 3, what="three status polls")
        # Then it read no job JSON: it took the opener's status as published
        assert reads == []
        assert polls[-1] == {job_id: "QUEUED:1"}
        # When the job changes: the poll reads it and publishes the change
        assert client.post(f"/jobs/{job_id}/cancel", json={}).status_code == 200
        kinds = []
        while "end" not in kinds:
            try:
                kinds.append(watch.next(10).kind)
            except queue.Empty:
                break
        assert "end" in kinds, kinds
        assert reads == [job_id]
    finally:
        hub.release(watch)
