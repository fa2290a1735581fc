"""``GET /jobs/<job_id>/events``: a job's live events as Server-Sent Events.

Same auth and isolation as ``GET /jobs/<job_id>``. The stream subscribes first (the hub), makes
sure the job's current status is published, replays the history after ``Last-Event-ID``, then
sends live events, comparing ids so that nothing goes out twice, and closes after ``end``.
A reconnect after ``end`` answers 204, which tells EventSource to stop.
"""

from __future__ import annotations

import json
import queue

from flask import Blueprint, Response, g, request

from backend.api.auth import authenticate_client
from backend.api.context import services, settings
from backend.broker.errors import BrokerError
from backend.broker.events import Event, compare_ids, parse_id
from backend.core.errors import BadRequest, ServiceUnavailable
from backend.core.states import JobStatus
from backend.service.job_events import StreamClosed

bp = Blueprint("events", __name__)
bp.before_request(authenticate_client)

#: A comment line this often keeps proxies and clients from timing an idle stream out.
KEEPALIVE_SECONDS = 15.0
#: EventSource waits this long before reconnecting (milliseconds).
RETRY_MS = 2000
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
        history = hub.events.history(job_id, after=after, limit=settings().events_history)
    except BrokerError as exc:
        hub.release(watch)
        raise ServiceUnavailable(f"Redis is unavailable for event streams: {type(exc).__name__}") from None
    except BaseException:
        hub.release(watch)
        raise
    terminal = JobStatus(json.loads(body)["status"]).is_terminal
    if terminal and after is not None and not history:
        hub.release(watch)  # the client saw the end already
        return Response(status=204, headers=HEADERS)
    # An `end` before the job was run again (POST /jobs/<id>/retry) is not this stream's end:
    # only the last one counts, and only while the job is ended.
    ends = [event.id for event in history if event.kind == "end"]
    final_end = ends[-1] if terminal and ends else None

    def stream():
        last = after
        try:
            yield f"retry: {RETRY_MS}\n\n"
            for event in history:
                if event.kind == "end" and event.id != final_end:
                    continue
                if last is None or compare_ids(event.id, last) > 0:
                    yield _frame(event)
                    last = event.id
                    if event.kind == "end":
                        return
            if terminal:
                return  # an ended job: its history, then the end (sent above unless seen before)
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
