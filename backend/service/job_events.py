"""The event hub of one API process: what its open event streams hear, and their status events.

One thread (a greenlet under gevent) owns the Redis subscriber: it sends SUBSCRIBE/UNSUBSCRIBE
for the jobs being watched between short reads, hands every event to the watching streams'
bounded queues, and every EVENTS_POLL_SECONDS reads the (status, attempt) of all watched jobs
in one store query; for a job whose status key changed it publishes a ``status`` event (and
``end`` when terminal) with the job's JSON as ``GET /jobs/<id>`` shows it. The write paths are
not hooked: whoever changes a job, on whichever host, the hubs watching it see it. Nothing runs
while no stream is open. A Redis error closes every stream (the clients reconnect with
Last-Event-ID) and drops the subscriber; the next stream starts over. No lock is held across
a blocking call, so it works under threads and under gevent alike.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from backend.broker.errors import BrokerError
from backend.core.errors import JobServiceError, ServiceUnavailable
from backend.core.states import JobStatus
from backend.service.representations import HEAVY_FIELDS
from backend.store.errors import StoreUnavailable
from backend.store.event_reads import StatusPoll, status_key

if TYPE_CHECKING:  # types only
    from backend.broker.events import Event, EventLog, EventSubscriber
    from backend.service.job_reads import JobReader
    from backend.store.jobs import Sessions

log = logging.getLogger(__name__)

#: One read of the subscriber waits at most this long, so that (un)subscribes and polls go out.
READ_SECONDS = 0.05
#: Messages handed out per read before the thread polls and (un)subscribes again.
READ_BATCH = 1000
#: Per stream: events waiting for a slow client. Past either cap the stream closes and its
#: client reconnects with Last-Event-ID (the history fills the gap).
QUEUE_EVENTS = 1000
QUEUE_BYTES = 1024 * 1024
#: How long opening a stream waits for its SUBSCRIBE to be confirmed.
SUBSCRIBE_SECONDS = 5.0


class TooManyStreams(ServiceUnavailable):
    """Raised when this process holds EVENTS_MAX_STREAMS streams already."""


class TooManyOwnerStreams(JobServiceError):
    """Raised when the owner holds EVENTS_MAX_STREAMS_PER_OWNER streams in this process already."""

    status = 429
    code = "too_many_streams"


class StreamClosed(Exception):
    """The hub closed the stream (Redis error, or the client fell too far behind)."""


@dataclass(eq=False)
class Watch:
    """One open stream's end: the events of ``job_id`` in order, from a bounded queue."""

    job_id: str
    owner: str | None
    ready: threading.Event = field(default_factory=threading.Event)
    closed: bool = False
    _queue: queue.Queue = field(default_factory=lambda: queue.Queue(QUEUE_EVENTS + 1))
    _bytes: int = 0

    def next(self, timeout: float) -> Event:
        """The next event; ``queue.Empty`` after ``timeout`` seconds without one.

        Raises:
            StreamClosed: the hub closed this stream; its client should reconnect.
        """
        if self.closed:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                raise StreamClosed from None
        else:
            item = self._queue.get(timeout=timeout)
        if item is None:
            raise StreamClosed
        self._bytes -= len(item.data)
        return item

    def _offer(self, event: Event) -> bool:
        """Queue ``event`` (hub thread); False when the stream is over its caps."""
        if self.closed or self._queue.qsize() >= QUEUE_EVENTS or self._bytes + len(event.data) > QUEUE_BYTES:
            return False
        self._bytes += len(event.data)
        self._queue.put_nowait(event)
        return True

    def _close(self) -> None:
        self.closed = True
        self.ready.set()  # a stream still opening gives up at once
        # Wakes a reader waiting on an empty queue; a full one wakes its reader anyway.
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)


class EventHub:
    """Streams' subscriptions and status events for one API process."""

    def __init__(
        self,
        events: EventLog,
        sessions: Sessions,
        reader: JobReader,
        *,
        poll_seconds: float = 0.1,
        max_streams: int = 1000,
        max_streams_per_owner: int = 100,
    ):
        self.events = events
        self._sessions = sessions
        self._reader = reader
        self._poll_seconds = poll_seconds
        self._max_streams = max_streams
        self._max_per_owner = max_streams_per_owner
        self._lock = threading.Lock()
        self._watches: dict[str, set[Watch]] = {}
        self._owners: dict[str | None, int] = {}
        self._count = 0
        #: Jobs whose SUBSCRIBE Redis has confirmed (and no UNSUBSCRIBE sent since).
        self._confirmed: set[str] = set()
        #: Status keys published since the poll last looked (by the streams that opened): the poll
        #: takes them as published, rather than read and publish each new stream's job once more.
        self._published: dict[str, str] = {}
        self._running = False
        self._generation = 0

    # -- the streams' side ------------------------------------------------------------------

    def watch(self, job_id: str, owner: str | None) -> Watch:
        """Open a stream on ``job_id``: subscribed (confirmed) when this returns.

        Raises:
            TooManyStreams: the process's cap (503); TooManyOwnerStreams: the owner's (429).
            ServiceUnavailable: Redis did not confirm the subscription.
        """
        watch = Watch(job_id, owner)
        with self._lock:
            if self._count >= self._max_streams:
                raise TooManyStreams(f"this API process holds {self._count} event streams (EVENTS_MAX_STREAMS)")
            if self._owners.get(owner, 0) >= self._max_per_owner:
                raise TooManyOwnerStreams(
                    f"at most {self._max_per_owner} open event streams per key (EVENTS_MAX_STREAMS_PER_OWNER)",
                    headers={"Retry-After": "5"},
                )
            self._count += 1
            self._owners[owner] = self._owners.get(owner, 0) + 1
            self._watches.setdefault(job_id, set()).add(watch)
            if job_id in self._confirmed:
                watch.ready.set()
            start = not self._running
            if start:
                # A new run: the threads of an earlier one (a poller still asleep) see it and stop.
                self._generation += 1
            self._running = True
            generation = self._generation
        if start:
            threading.Thread(target=self._run, args=(generation,), name="event-hub", daemon=True).start()
            # The store poll has a thread of its own: a store read that waits (a PostgreSQL lock,
            # an outage up to the pool's timeout) must not hold up the events Redis hands out.
            threading.Thread(target=self._poll_loop, args=(generation,), name="event-hub-poll", daemon=True).start()
        if not watch.ready.wait(SUBSCRIBE_SECONDS) or watch.closed:
            self.release(watch)
            raise ServiceUnavailable("Redis did not confirm the event subscription; try again", retry_after=2)
        return watch

    def release(self, watch: Watch) -> None:
        """The stream is over: forget ``watch`` (its job is unsubscribed by the hub thread)."""
        with self._lock:
            watching = self._watches.get(watch.job_id)
            if watching is None or watch not in watching:
                return
            watching.discard(watch)
            if not watching:
                del self._watches[watch.job_id]
            self._count -= 1
            self._owners[watch.owner] -= 1
            if not self._owners[watch.owner]:
                del self._owners[watch.owner]

    def publish(self, job_id: str, body: bytes) -> None:
        """Publish the job's status from its JSON as GET /jobs/<id> serves it (deduplicated):
        ``status`` without the heavy fields, ``end`` (when terminal) whole.

        Raises:
            BrokerError: Redis did not answer or refused.
        """
        job = json.loads(body)
        status = job["status"]
        # The status event leaves out args, kwargs and result (as GET /jobs lists jobs): the
        # history keeps EVENTS_HISTORY events, and each snooze or retry adds status events, so a
        # copy of 64 KiB of arguments in each would hold ~32 MiB of Redis per job. `end` is whole.
        light = {name: value for name, value in job.items() if name not in HEAVY_FIELDS}
        key = status_key(status, job.get("attempt"))
        self.events.publish_status(
            job_id,
            key,
            json.dumps(light, separators=(",", ":")),
            terminal=JobStatus(status).is_terminal,
            end_json=body.decode(),
        )
        with self._lock:
            if job_id in self._watches:
                self._published[job_id] = key

    # -- the hub thread ---------------------------------------------------------------------

    def _run(self, generation: int) -> None:
        subscriber = self.events.subscriber()
        sent: set[str] = set()
        try:
            while True:
                with self._lock:
                    if generation != self._generation:
                        return  # reset (by the poll, say): a newer run owns the streams now
                    wanted = set(self._watches)
                    if not wanted and not sent:
                        self._running = False
                        return
                    self._confirmed -= sent - wanted
                for job_id in wanted - sent:
                    subscriber.subscribe(job_id)
                for job_id in sent - wanted:
                    subscriber.unsubscribe(job_id)
                sent = wanted
                self._read(subscriber)
        except BrokerError as exc:
            log.warning("event hub: Redis failed (%s); closing %d event streams, they reconnect", exc, self._count)
            self._reset(generation)
        except Exception:
            log.exception("event hub failed; closing its event streams")
            self._reset(generation)
        finally:
            subscriber.close()

    def _read(self, subscriber: EventSubscriber) -> None:
        """Hand out what the subscriber has: waits READ_SECONDS for the first, then takes the rest."""
        timeout = READ_SECONDS
        for _ in range(READ_BATCH):  # then polls and (un)subscribes get their turn
            received = subscriber.get(timeout)
            if received is None:
                return
            timeout = 0.0
            with self._lock:
                watching = list(self._watches.get(received.job_id, ()))
                if received.kind == "subscribe":
                    self._confirmed.add(received.job_id)
                    for watch in watching:
                        watch.ready.set()
            if received.kind != "event":
                continue
            for watch in watching:
                if not watch._offer(received.event):
                    log.info("event stream of job %s fell behind; closed, its client reconnects", watch.job_id)
                    watch._close()
                    self.release(watch)

    def _poll_loop(self, generation: int) -> None:
        """Every ``poll_seconds``, publish the watched jobs' status changes, while this hub runs."""
        keys: dict[str, str] = {}
        poll = StatusPoll(self._sessions.kw["bind"])
        try:
            while True:
                time.sleep(self._poll_seconds)
                with self._lock:
                    if generation != self._generation or not self._running:
                        return
                    wanted = list(self._watches)
                    published, self._published = self._published, {}
                for job_id in keys.keys() - wanted:
                    del keys[job_id]
                # Opening 1,000 streams cost the process ~1 s of CPU more while the poll read each
                # new job's JSON and published it again (issue 17, T6). Whichever key is newer, it
                # was published: the poll publishes whenever the store's differs.
                keys.update((job_id, key) for job_id, key in published.items() if job_id in self._watches)
                self._poll(poll, {job_id: keys.get(job_id) for job_id in wanted}, keys)
        except BrokerError as exc:
            log.warning("event hub: Redis failed (%s); closing %d event streams, they reconnect", exc, self._count)
            self._reset(generation)
        except Exception:
            log.exception("event hub's status poll failed; closing its event streams")
            self._reset(generation)
        finally:
            poll.close()

    def _poll(self, poll: StatusPoll, watched: dict[str, str | None], keys: dict[str, str]) -> None:
        """Publish the status of every watched job whose (status, attempt) changed."""
        try:
            changed = poll.changed(watched)
        except StoreUnavailable as exc:
            log.warning("event hub: store unavailable (%s); status events wait for it", exc)
            return
        for job_id, (status, attempt) in changed.items():
            try:
                body = self._reader.json(job_id, owner=None)
            except (JobServiceError, *StoreUnavailable):
                poll.forget()  # deleted in between, or the store is down: the next poll tries again
                continue
            self.publish(job_id, body)
            keys[job_id] = status_key(status, attempt)

    def _reset(self, generation: int) -> None:
        """Close every stream and let the next one start a new thread."""
        with self._lock:
            if generation != self._generation:
                return
            self._generation += 1
            watches = [watch for watching in self._watches.values() for watch in watching]
            self._watches.clear()
            self._owners.clear()
            self._count = 0
            self._confirmed.clear()
            self._published.clear()
            self._running = False
        for watch in watches:
            watch._close()
