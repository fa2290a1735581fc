"""RQ's worker records as GET /monitoring/queue/workers shows them, read in three round trips.

RQ's ``Worker.all`` reads each worker apart (its hash, then its executions, then each current
job): a fleet of 50 workers was some 150 round trips per refresh of the dashboard's panel. Here
every worker is read in one pipeline (its hash, its executions, its lease), then every current
job in a second: the cost stays three round trips however many workers there are. A record
Redis refuses to read (a key of another type: another client's, or a stale one) leaves out its
worker, never the whole list: the pipelines collect each command's error instead of raising the first.
"""

from __future__ import annotations

import json
from datetime import datetime

from redis import Redis
from rq.defaults import RQ_KEY_PREFIX
from rq.executions import WORKER_EXECUTIONS_KEY_TEMPLATE
from rq.job import Job as RQJob
from rq.utils import utcparse
from rq.worker_registration import REDIS_WORKER_KEYS

from backend.broker.leases import lease_key
from backend.broker.replies import text

#: The prefix of a worker's key in RQ's set of workers.
WORKER_KEY_PREFIX = f"{RQ_KEY_PREFIX}:worker:"
#: The prefix of an execution's hash; its rest is the composite "<rq job id>:<execution id>".
EXECUTION_KEY_PREFIX = f"{RQ_KEY_PREFIX}:execution:"


def _maybe_text(value: bytes | str | None) -> str | None:
    return None if value is None else text(value)


def _int(value: bytes | str | None) -> int:
    try:
        return int(_maybe_text(value) or 0)
    except ValueError:
        return 0


def _time(value: bytes | str | None) -> datetime | None:
    try:
        return utcparse(_maybe_text(value)) if value else None
    except ValueError:  # another client's format: shown as unknown, never a 500
        return None


def _store_job_id(meta: bytes | None) -> str | None:
    """The store's job id an RQ job's meta names (``"job_id"``; JSON, as our jobs are written)."""
    try:
        found = json.loads(meta).get("job_id") if meta else None
    except (ValueError, AttributeError):
        return None
    return found if isinstance(found, str) else None


def read_workers(connection: Redis) -> list[dict]:
    """Every worker RQ has a record of, by name: ``name, queues, state, last_heartbeat, birth,
    successful_jobs, failed_jobs, current_rq_job_id, current_job_id`` (the store's id, from the
    RQ job's meta) and ``alive`` (it holds its lease). A name whose hash expired is left out.

    Raises:
        BrokerError: Redis is unreachable or refused.
    """
    names = sorted(
        key.removeprefix(WORKER_KEY_PREFIX)
        for key in (_maybe_text(member) for member in connection.smembers(REDIS_WORKER_KEYS))
        if key and key.startswith(WORKER_KEY_PREFIX)
    )
    if not names:
        return []
    with connection.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.hgetall(WORKER_KEY_PREFIX + name)
            pipe.smembers(WORKER_EXECUTIONS_KEY_TEMPLATE.format(name))
            pipe.exists(lease_key(name))
        found = pipe.execute(raise_on_error=False)
    rows = []
    for index, name in enumerate(names):
        replies = found[3 * index : 3 * index + 3]
        if any(isinstance(reply, Exception) for reply in replies):
            continue  # WRONGTYPE: not a worker record as RQ writes one
        record, executions, leased = replies
        if not record:
            continue
        record = {_maybe_text(field): value for field, value in record.items()}
        rows.append(
            {
                "name": name,
                "queues": [queue for queue in (_maybe_text(record.get("queues")) or "").split(",") if queue],
                "state": _maybe_text(record.get("state")) or "?",
                "birth": _time(record.get("birth")),
                "last_heartbeat": _time(record.get("last_heartbeat")),
                "successful_jobs": _int(record.get("successful_job_count")),
                "failed_jobs": _int(record.get("failed_job_count")),
                "alive": bool(leased),
                # One execution shown, as RQ's get_current_job_id does; sorted: the same one each read.
                "executions": sorted(_maybe_text(member) for member in executions),
                "current_rq_job_id": None,
                "current_job_id": None,
            }
        )
    _read_current_jobs(connection, rows)
    for row in rows:
        del row["executions"]
    return rows


def _read_current_jobs(connection: Redis, rows: list[dict]) -> None:
    """Fill each row's current job from its first listed execution, in one more round trip."""
    wanted = [row for row in rows if row["executions"]]
    if not wanted:
        return
    with connection.pipeline(transaction=False) as pipe:
        for row in wanted:
            composite = row["executions"][0]
            pipe.exists(EXECUTION_KEY_PREFIX + composite)  # ended but still listed: no current job
            pipe.hget(RQJob.key_for(composite.split(":", 1)[0]), "meta")
        found = pipe.execute(raise_on_error=False)
    for index, row in enumerate(wanted):
        live, meta = found[2 * index : 2 * index + 2]
        if isinstance(meta, Exception):  # a job key of another type: no store id to name
            meta = None
        if live and not isinstance(live, Exception):
            row["current_rq_job_id"] = row["executions"][0].split(":", 1)[0]
            row["current_job_id"] = _store_job_id(meta)
