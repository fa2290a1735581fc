"""A new job's RQ hash, copied from RQ's template for its queue (``backend/broker/rq_hashes.py``),
against the hash RQ's own ``create_job`` + ``enqueue_job`` writes for the same job, on the
installed RQ and a real Redis: the same fields, the same values but the two timestamps, and RQ
reads both back alike."""

from __future__ import annotations

import zlib

import pytest
from rq.job import Job as RQJob
from rq.serializers import JSONSerializer

from backend.broker.queues import QueueAdapter

OPTION_SETS = [
    {"args": [], "kwargs": {}, "priority": "default", "timeout": 600},
    {
        "args": [1, "two", None],
        "kwargs": {"job_id": "mine", "ttl": 5, "meta": {"x": [1]}},
        "priority": "high",
        "timeout": 30,
    },
    {"args": [], "kwargs": {"text": "é✓"}, "priority": "low", "timeout": 7, "rate": ("llm", "10/minute")},
]


def _enqueue(adapter: QueueAdapter, job_id: str, options: dict, *, rq_own_path: bool) -> str:
    if rq_own_path:
        # RQ's own path: the template is refused, as for an RQ whose hash differs.
        adapter._hashes.mapping = lambda *a, **k: (_ for _ in ()).throw(LookupError("RQ's own path"))
    try:
        return adapter.enqueue(
            job_id=job_id,
            attempt=1,
            func_path="backend.tasks.examples.echo",
            args=options["args"],
            kwargs=options["kwargs"],
            priority=options["priority"],
            timeout=options["timeout"],
            owner="alice",
            rate=options.get("rate"),
            fresh=True,
        )
    finally:
        adapter._hashes.__dict__.pop("mapping", None)


@pytest.mark.parametrize("options", OPTION_SETS, ids=["plain", "rq-option-names-in-kwargs", "rate"])
def test_a_copied_hash_is_the_hash_rq_writes(redis_conn, options):
    # Given two adapters on one Redis
    adapter = QueueAdapter(redis_conn, result_ttl=500, failure_ttl=900)
    # When the same job is enqueued by RQ's own path and by the template's copy
    ours = _enqueue(adapter, "job_copy", options, rq_own_path=False)
    theirs = _enqueue(adapter, "job_rq", options, rq_own_path=True)
    mine, rqs = redis_conn.hgetall(f"rq:job:{ours}"), redis_conn.hgetall(f"rq:job:{theirs}")
    # Then both hashes have the same fields, and the same values but the times and the job's own
    # description (which names its id)
    assert sorted(mine) == sorted(rqs)
    assert mine.pop(b"description").replace(b"job_copy", b"job_rq") == rqs.pop(b"description")
    assert zlib.decompress(mine.pop(b"data")) == zlib.decompress(rqs.pop(b"data"))
    assert mine.pop(b"meta").replace(b"job_copy", b"job_rq") == rqs.pop(b"meta")
    for stamp in (b"created_at", b"enqueued_at"):
        assert len(mine.pop(stamp)) == len(rqs.pop(stamp))
    assert mine == rqs
    # And both are on the queue once, in order, and indexed for fair share
    queue = f"rq:queue:{options['priority']}"
    assert redis_conn.lrange(queue, 0, -1) == [ours.encode(), theirs.encode()]
    assert redis_conn.hget(f"jobservice:fair:{options['priority']}:index", ours) == b"alice"
    # And RQ reads the copy back as it reads its own job
    a = RQJob.fetch(ours, connection=redis_conn, serializer=JSONSerializer)
    b = RQJob.fetch(theirs, connection=redis_conn, serializer=JSONSerializer)
    for field in ("func_name", "args", "kwargs", "timeout", "result_ttl", "failure_ttl", "origin"):
        assert getattr(a, field) == getattr(b, field), field
    assert a.get_status() == b.get_status() == "queued"
    assert a.meta["attempt"] == b.meta["attempt"] == 1 and a.meta.get("rate") == b.meta.get("rate")
    assert abs((a.enqueued_at - b.enqueued_at).total_seconds()) < 5
