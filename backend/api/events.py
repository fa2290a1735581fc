"""``GET /jobs/<job_id>/events``: a job's live events as Server-Sent Events.

Same auth and isolation as ``GET /jobs/<job_id>``. The stream subscribes first (the hub), makes
sure the job's current status is published, replays the history after ``Last-Event-ID``, then
sends live events, comparing ids so that nothing goes out twice, and closes after ``end``.
A reconnect after ``end`` answers 204, which tells EventSource to stop. A Last-Event-ID newer
than the job's newest event counts as none on a live job (its whole history is replayed).
"""

from __future__ import annotations

import json
import queue

from flask import Blueprint, Response, g, request

from backend.api.auth import authenticate_client
from backend.api.context import services
from backend.broker.errors import BrokerError
from backend.broker.events import Event, compare_ids, parse_id
from backend.core.errors import BadRequest, ServiceUnavailable
from backend.core.states import JobStatus
from backend.service.job_events import StreamClosed

bp = Blueprint("events", __name__)
bp.before_request(authenticate_client)

#: A comment line this often keeps proxies and clients from timing an idle stream out. A
#: stream whose client went away is only noticed at its next write, so this is also how long
#: a closed stream may keep its slot (EVENTS_MAX_STREAMS, EVENTS_MAX_STREAMS_PER_OWNER): 5 s.
KEEPALIVE_SECONDS = 5.0
#: EventSource waits this long before reconnecting (milliseconds).
RETRY_MS = 2000
#: A replay reads the history this many events at a time and sends each page before reading the
#: next: a client that reads nothing holds one page (<= 16 x 16 KiB outputs), not the history.
REPLAY_PAGE = 16
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@bp.get("/jobs/<job_id>/events")
def job_events(job_id: str):
    after = _last_event_id()
    reader, hub = services().job_reader, services().event_hub
    owner = g.principal.scope
    reader.json(job_id, owner=owner)  # 404 for an unknown job or another owner's
    watch = hub.watch(job_id, g.principal.owner)
    try:
        body = reader.json(job_id, owner=owner)
        hub.publish(job_id, body)
        # The end of the last status published (None while the job is live, or run again).
        final_end = hub.events.end_id(job_id) if JobStatus(json.loads(body)["status"]).is_terminal else None
        if after is not None and final_end is None and _ahead(hub.events, job_id, after):
            # An id past every event (a Redis that lost its data, a client's bug) would drop every
            # live event, `end` too, as seen: the stream would never end. Replay what there is.
            # (On an ended job such an id is past its end: the 204 below.)
            after = None
    except BrokerError as exc:
        hub.release(watch)
        raise ServiceUnavailable(f"Redis is unavailable for event streams: {type(exc).__name__}") from None
    except BaseException:
        hub.release(watch)
        raise
    if final_end is not None and after is not None and compare_ids(after, final_end) >= 0:
        hub.release(watch)  # the client saw the end already (whatever landed after it)
        return Response(status=204, headers=HEADERS)

    def stream():
        last = after
        try:
            yield f"retry: {RETRY_MS}\n\n"
            try:
                for event in _replay(hub.events, job_id, after, final_end):
                    # An `end` before the job was run again is not this stream's end.
                    if event.kind == "end" and event.id != final_end:
                        continue
                    yield _frame(event)
                    last = event.id
            except BrokerError:
                return  # Redis failed mid-replay: the client reconnects with Last-Event-ID
            if final_end is not None:
                if last != final_end:  # trimmed from the history by what came after it
                    yield _frame(Event(final_end, "end", body.decode()))
                return
            while True:
                try:
                    event = watch.next(KEEPALIVE_SECONDS)
                except queue.Empty:
                    yield ": keep-alive\n\n"
                    continue
                except StreamClosed:
                    return  # the client reconnects with Last-Event-ID
                if last is None or compare_ids(event.id, last) > 0:
                    yield _frame(event)
                    last = event.id
                    if event.kind == "end":
                        return
        finally:
            hub.release(watch)

    response = Response(stream(), mimetype="text/event-stream", headers=HEADERS)
    response.call_on_close(lambda: hub.release(watch))  # also when the body was never read
    return response


def _replay(events, job_id: str, after: str | None, final_end: str | None):
    """The history after ``after``, read a page at a time; on an ended job it stops at its end.

    Raises:
        BrokerError: Redis failed between pages.
    """
    last = after
    while True:
        page = events.page(job_id, after=last, count=REPLAY_PAGE)
        for event in page:
            if final_end is not None and compare_ids(event.id, final_end) > 0:
                return  # nothing after the end of an ended job
            yield event
            if event.id == final_end:
                return
        if len(page) < REPLAY_PAGE:
            return
        last = page[-1].id


def _ahead(events, job_id: str, after: str) -> bool:
    """Whether ``after`` is newer than the newest event of the job's history (or it has none).

    Raises:
        BrokerError: Redis did not answer or refused.
    """
    newest = events.last_id(job_id)
    return newest is None or compare_ids(after, newest) > 0


def _last_event_id() -> str | None:
    """The ``Last-Event-ID`` header, or ``?last_event_id=``; None when neither is given.

    Raises:
        BadRequest: it is not an event id (``<ms>-<seq>``).
    """
    raw = request.headers.get("Last-Event-ID") or request.args.get("last_event_id")
    if raw is None or raw.strip() == "":
        return None
    raw = raw.strip()
    try:
        parse_id(raw)
    except ValueError:
        raise BadRequest(
            f"Last-Event-ID must be an event id such as 1732912345678-0, got {raw[:64]!r}",
            details={"field": "Last-Event-ID"},
        ) from None
    return raw


def _frame(event: Event) -> str:
    # A JSON text holds a raw line break only as whitespace between tokens: a space does as well,
    # and a line break would end the SSE data line.
    data = event.data.replace("\r", " ").replace("\n", " ")
    return f"id: {event.id}\nevent: {event.kind}\ndata: {data}\n\n"
