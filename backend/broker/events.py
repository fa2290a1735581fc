"""A job's live events in Redis: a bounded STREAM (the history a reconnect replays) and a
pub/sub channel (what open streams hear now).

Every Redis access for events is here. The worker appends ``progress``/``output``/``log``
events; the API publishes ``status`` (deduplicated by a key holding the last status published,
so many hosts seeing the same change add one event) and ``end``. Each append is one round
trip (a Lua script: XADD + EXPIRE + PUBLISH), and every key expires EVENTS_TTL_SECONDS after
the job's last event, so a forgotten job's events cost nothing for long.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from redis import Redis
from redis.client import PubSub
from redis.exceptions import NoScriptError

from backend.broker.replies import text

__all__ = ["Event", "EventLog", "EventSubscriber", "Received", "channel", "compare_ids", "parse_id", "stream_key"]

_PREFIX = "jobservice:events:"

#: KEYS: stream (also the channel), status key. ARGV: kind, data, maxlen, ttl.
#: The entry id is the SSE event id; the PUBLISH carries "<id> <kind> <data>".
_APPEND = b"""
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'k', ARGV[1], 'd', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('PUBLISH', KEYS[1], id .. ' ' .. ARGV[1] .. ' ' .. ARGV[2])
return id
"""

#: KEYS: stream, status key. ARGV: status key value, status data (the job's JSON without its
#: heavy fields), terminal ('1'/'0'), maxlen, ttl, attempt, rank (PENDING 0 < QUEUED 1 <
#: PROCESSING 2 < an end 3), end data (the whole job JSON: the result matters there).
#: The status key holds "<attempt> <rank> <end id or ->" of the last status published. A status
#: that is not after it in (attempt, rank) is refused: it is a repeat, or a publisher that read
#: the job before a change publishing after it (a status must never go backwards nor follow the
#: end of its attempt). A terminal status is followed by ``end`` with the end data.
#: Reply: the status event's id, or false.
_STATUS = b"""
local cur = redis.call('GET', KEYS[2])
local attempt, rank = tonumber(ARGV[6]), tonumber(ARGV[7])
if cur then
  local a, r = string.match(cur, '^(%d+) (%d+)')
  if a and (attempt < tonumber(a) or (attempt == tonumber(a) and rank <= tonumber(r))) then return false end
end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[4], '*', 'k', 'status', 'd', ARGV[2])
redis.call('PUBLISH', KEYS[1], id .. ' status ' .. ARGV[2])
local last = '-'
if ARGV[3] == '1' then
  last = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[4], '*', 'k', 'end', 'd', ARGV[8])
  redis.call('PUBLISH', KEYS[1], last .. ' end ' .. ARGV[8])
end
redis.call('SET', KEYS[2], attempt .. ' ' .. rank .. ' ' .. last, 'EX', ARGV[5])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return id
"""

#: Redis entry ids are two unsigned 64-bit numbers.
_ID_MAX = 2**64 - 1
#: The rank of a status within an attempt (anything else is an end).
_RANKS = {"PENDING": 0, "QUEUED": 1, "PROCESSING": 2}
_END_RANK = 3


def stream_key(job_id: str) -> str:
    """The job's STREAM of events (its bounded history)."""
    return _PREFIX + job_id


def channel(job_id: str) -> str:
    """The pub/sub channel of the job's live events (same name as its stream)."""
    return _PREFIX + job_id


def _status_key(job_id: str) -> str:
    return _PREFIX + job_id + ":status"


def parse_id(event_id: str) -> tuple[int, int]:
    """An entry id ``<ms>-<seq>`` as a pair compared in order; ValueError when malformed."""
    ms, sep, seq = event_id.partition("-")
    digits = (ms + seq).isascii() and ms.isdigit() and seq.isdigit()
    if not sep or not digits or len(ms) > 20 or len(seq) > 20 or int(ms) > _ID_MAX or int(seq) > _ID_MAX:
        raise ValueError(f"not an event id: {event_id[:64]!r}")
    return int(ms), int(seq)


def compare_ids(a: str, b: str) -> int:
    """-1, 0 or 1 as entry id ``a`` is before, the same as or after ``b``."""
    pa, pb = parse_id(a), parse_id(b)
    return (pa > pb) - (pa < pb)


@dataclass(frozen=True)
class Event:
    """One event of a job: its entry id (the SSE id), its kind and its data (JSON text)."""

    id: str
    kind: str
    data: str


class EventLog:
    """Append, publish and read a job's events; one per connection (its scripts registered once)."""

    def __init__(self, connection: Redis, *, history: int = 500, ttl: int = 3600):
        self._connection = connection
        self._history = int(history)
        self._ttl = int(ttl)
        self._append = connection.register_script(_APPEND)
        self._status = connection.register_script(_STATUS)

    def append(self, job_id: str, kind: str, data_json: str) -> str:
        """Add one event to the job's history and publish it; its entry id.

        Raises:
            BrokerUnreachable, BrokerError: Redis did not answer or refused.
        """
        keys = [stream_key(job_id), _status_key(job_id)]
        return text(self._append(keys=keys, args=[kind, data_json, self._history, self._ttl]))

    def append_many(self, job_id: str, events: list[tuple[str, str]]) -> list[str]:
        """Append ``events`` ((kind, data json) pairs, in order) in one round trip: the append
        script in a pipeline (EVALSHA; loaded first only when Redis answers NOSCRIPT). Their ids.

        Raises:
            BrokerUnreachable, BrokerError: Redis did not answer or refused.
        """
        keys = [stream_key(job_id), _status_key(job_id)]
        replies = self._pipeline(keys, events)
        missing = [index for index, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:  # a restarted or flushed Redis: load the script, send those again (only those)
            self._connection.script_load(_APPEND)
            for index, reply in zip(missing, self._pipeline(keys, [events[i] for i in missing]), strict=True):
                replies[index] = reply
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return [text(reply) for reply in replies]

    def _pipeline(self, keys: list[str], events: list[tuple[str, str]]) -> list:
        pipe = self._connection.pipeline(transaction=False)
        for kind, data_json in events:
            pipe.evalsha(self._append.sha, len(keys), *keys, kind, data_json, self._history, self._ttl)
        return pipe.execute(raise_on_error=False)

    def publish_status(
        self, job_id: str, status_key: str, job_json: str, *, terminal: bool, end_json: str | None = None
    ) -> str | None:
        """Publish a ``status`` event unless ``status_key`` (``<status>:<attempt>``) is not after
        the last published in (attempt, status order) (then None); a terminal one is followed by
        ``end`` carrying ``end_json`` (default ``job_json``). Why two: a status event carries the
        job without its heavy fields, so that the bounded history stays small in bytes.

        Raises:
            BrokerUnreachable, BrokerError: Redis did not answer or refused.
        """
        status, _, attempt = status_key.rpartition(":")
        rank = _END_RANK if terminal else _RANKS.get(status, 0)
        number = int(attempt) if attempt.isdigit() else 0
        keys = [stream_key(job_id), _status_key(job_id)]
        args = [status_key, job_json, "1" if terminal else "0", self._history, self._ttl, number, rank]
        args.append(job_json if end_json is None else end_json)
        reply = self._status(keys=keys, args=args)
        return text(reply) if reply else None

    def end_id(self, job_id: str) -> str | None:
        """The id of the ``end`` event of the last status published, when that status is an end.

        Raises:
            BrokerUnreachable, BrokerError: Redis did not answer or refused.
        """
        value = text(self._connection.get(_status_key(job_id)) or b"")
        parts = value.split(" ")
        return parts[2] if len(parts) == 3 and parts[2] != "-" else None

    def last_id(self, job_id: str) -> str | None:
        """The id of the newest event the job's history holds; None when it holds none.

        Raises:
            BrokerUnreachable, BrokerError: Redis did not answer or refused.
        """
        rows = self._connection.xrevrange(stream_key(job_id), max="+", min="-", count=1)
        return text(rows[0][0]) if rows else None

    def page(self, job_id: str, *, after: str | None, count: int) -> list[Event]:
        """At most ``count`` events after ``after`` (exclusive; None: from the oldest kept), oldest first.

        A replay reads the history page by page, so that a stream holds one page, not the
        history, while its client is slow to read.

        Raises:
            BrokerUnreachable, BrokerError: Redis did not answer or refused.
        """
        low = "-" if after is None else "(" + after
        rows = self._connection.xrange(stream_key(job_id), min=low, max="+", count=max(1, int(count)))
        return [_event(entry_id, fields) for entry_id, fields in rows]

    def history(self, job_id: str, *, after: str | None, limit: int) -> list[Event]:
        """The newest ``limit`` events after ``after`` (exclusive; None: from the start), oldest first.

        Raises:
            BrokerUnreachable, BrokerError: Redis did not answer or refused.
        """
        low = "-" if after is None else "(" + after
        rows = self._connection.xrevrange(stream_key(job_id), max="+", min=low, count=max(1, int(limit)))
        return [_event(entry_id, fields) for entry_id, fields in reversed(rows)]

    def subscriber(self) -> EventSubscriber:
        """A pub/sub connection of its own, to be used by one thread."""
        return EventSubscriber(self._connection.pubsub(ignore_subscribe_messages=False))


def _event(entry_id, fields: dict) -> Event:
    return Event(text(entry_id), text(fields.get(b"k", b"")), text(fields.get(b"d", b"null")))


@dataclass(frozen=True)
class Received:
    """What the subscriber read: ``kind`` is ``event`` (with ``event``), ``subscribe`` or
    ``unsubscribe`` (a confirmation), for ``job_id``."""

    kind: str
    job_id: str
    event: Event | None = None


class EventSubscriber:
    """One pub/sub connection: subscribe, unsubscribe and read, all from the same thread."""

    def __init__(self, pubsub: PubSub):
        self._pubsub = pubsub

    def subscribe(self, job_id: str) -> None:
        """Send SUBSCRIBE; its confirmation comes through :meth:`get`.

        Raises:
            BrokerUnreachable, BrokerError: Redis did not answer or refused.
        """
        self._pubsub.subscribe(channel(job_id))

    def unsubscribe(self, job_id: str) -> None:
        """Send UNSUBSCRIBE (confirmed through :meth:`get`).

        Raises:
            BrokerUnreachable, BrokerError: Redis did not answer or refused.
        """
        self._pubsub.unsubscribe(channel(job_id))

    def get(self, timeout: float) -> Received | None:
        """The next message, waiting at most ``timeout`` seconds; None when none came.

        Raises:
            BrokerUnreachable, BrokerError: Redis did not answer or refused.
        """
        # Not subscribed to anything: redis-py waits ``timeout`` and answers None.
        message = self._pubsub.get_message(timeout=timeout)
        if not message:
            return None
        name = text(message.get("channel") or b"")
        if not name.startswith(_PREFIX):
            return None
        job_id = name[len(_PREFIX) :]
        kind = text(message.get("type") or b"")
        if kind != "message":
            return Received(kind, job_id) if kind in ("subscribe", "unsubscribe") else None
        entry_id, _, rest = text(message.get("data") or b"").partition(" ")
        event_kind, _, data = rest.partition(" ")
        return Received("event", job_id, Event(entry_id, event_kind, data))

    def close(self) -> None:
        """Drop the connection (errors swallowed: it is being thrown away)."""
        with contextlib.suppress(Exception):  # a broken connection closes as well as it can
            self._pubsub.close()
