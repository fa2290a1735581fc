"""``Job``: one job of the service as the client last saw it, and how to wait for its end.

``wait`` follows the job's event stream (``GET /jobs/<id>/events``): the end arrives within
moments, with no polling load on the service. When the stream is not there (a server or proxy
without it, a 404/429/503 on it, a stream that keeps dropping) it polls ``GET /jobs/<id>``
instead, so waiting works against any deployment.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import requests
import urllib3

from jobservice_client import errors
from jobservice_client.events import Event, StreamError, read_events

log = logging.getLogger("jobservice_client")

TERMINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED"})
#: The server sends a keep-alive every 5 s: three missed means the stream is dead.
STREAM_READ_TIMEOUT = 15.0
#: Connections in a row that bring no event before ``wait`` gives up the stream for polling.
MAX_EMPTY_CONNECTIONS = 3
#: Wait between two connections that failed, so a refused stream is not hammered.
RECONNECT_PAUSE = 0.5
#: What reading a dropped or cut stream can raise (urllib3's own errors reach read1's caller).
#: The events that change the job's fields (``output`` and ``log`` go to ``on_event`` only).
APPLIED = frozenset({"status", "progress", "end"})
STREAM_ERRORS = (requests.RequestException, urllib3.exceptions.HTTPError, OSError, StreamError, ValueError)


class Job:
    """A job: its fields as ``GET /jobs/<id>`` shows them (``data``), and what can be done with it.

    The common fields are attributes (``id``, ``status``, ``progress``, ``result``, ``error``
    ...); any other is ``job["field"]``. A job from ``Client.jobs`` is a listed one: its args,
    kwargs and result are fetched on first use unless ``fields=`` asked for them.
    """

    def __init__(self, client, data: dict, *, partial: bool = False):
        self._client = client
        self.data = dict(data)
        self.partial = partial
        #: False when ``submit`` returned an existing live job for its idempotency key.
        self.created = True

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.task} {self.status} {self.progress}%>"

    def __getitem__(self, name: str):
        return self.data[name]

    @property
    def id(self) -> str:
        return self.data["job_id"]

    @property
    def task(self) -> str:
        return self.data.get("task")

    @property
    def status(self) -> str:
        return self.data.get("status")

    @property
    def priority(self) -> str | None:
        return self.data.get("priority")

    @property
    def progress(self) -> int:
        return self.data.get("progress") or 0

    @property
    def progress_message(self) -> str | None:
        return self.data.get("progress_message")

    @property
    def error(self) -> str | None:
        return self.data.get("error")

    @property
    def attempt(self) -> int | None:
        return self.data.get("attempt")

    @property
    def waiting_reason(self) -> str | None:
        return self.data.get("waiting_reason")

    @property
    def args(self) -> list | None:
        return self._heavy("args")

    @property
    def kwargs(self) -> dict | None:
        return self._heavy("kwargs")

    @property
    def result(self):
        return self._heavy("result")

    @property
    def done(self) -> bool:
        """Whether it has ended: COMPLETED, FAILED or CANCELLED."""
        return self.status in TERMINAL

    @property
    def ok(self) -> bool:
        return self.status == "COMPLETED"

    def _heavy(self, name: str):
        if name not in self.data and self.partial:
            self.refresh()
        return self.data.get(name)

    # -- calls ---------------------------------------------------------------------------

    def refresh(self) -> Job:
        """Read it again (``GET /jobs/<id>``), whole. Raises NotFound once it is gone."""
        self.data = self._client.job(self.id).data
        self.partial = False
        return self

    def cancel(self) -> Job:
        """Cancel it; raises Conflict when it has ended already."""
        self.data = self._client.cancel(self.id).data
        return self

    def retry(self) -> Job:
        """Run a FAILED or CANCELLED job again, as a new attempt."""
        self.data = self._client.retry(self.id).data
        return self

    def logs(self, *, after: int = 0) -> list[dict]:
        """The lines its task logged, oldest first (``Client.logs``)."""
        return self._client.logs(self.id, after=after)

    def raise_for_status(self) -> Job:
        """Itself when COMPLETED or still live; raises JobFailed or JobCancelled for those ends."""
        if self.status == "FAILED":
            raise errors.JobFailed(self, f"job {self.id} ({self.task}) failed: {self.error}")
        if self.status == "CANCELLED":
            raise errors.JobCancelled(self, f"job {self.id} ({self.task}) was cancelled")
        return self

    def wait(
        self,
        timeout: float | None = None,
        on_progress: Callable[[Job], object] | None = None,
        *,
        on_event: Callable[[Event], object] | None = None,
        poll_interval: float = 0.5,
    ) -> Job:
        """Block until the job ends; itself, ended (FAILED and CANCELLED too: see raise_for_status).

        Args:
            timeout: seconds at most (None: as long as it takes).
            on_progress: called with this job whenever its status, progress or progress message
                changes (from the stream, which replays the job's history first, or a poll).
            on_event: called with every stream event (``output``, ``log``, ...); not when polling.
            poll_interval: seconds between two reads when polling.

        Raises:
            WaitTimeout: ``timeout`` passed first (the job goes on).
            JobServiceError: the job is gone (NotFound), the key may not read it, the service
                stayed unavailable while polling.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        watch = _Watch(self, on_progress)
        if not self.done and not self._follow(deadline, timeout, watch, on_event):
            self._poll(deadline, timeout, watch, poll_interval)
        return self

    def _follow(self, deadline, timeout, watch, on_event) -> bool:
        """Follow the event stream to the job's end (True); False when polling should take over."""
        last_id, empty = None, 0
        while empty < MAX_EMPTY_CONNECTIONS:
            read_timeout = min(STREAM_READ_TIMEOUT, self._left(deadline, timeout))
            try:
                response = self._client.open_events(self.id, last_event_id=last_id, read_timeout=read_timeout)
            except requests.RequestException as exc:
                log.debug("job %s: event stream did not connect (%s)", self.id, exc)
                empty += 1
                time.sleep(min(RECONNECT_PAUSE, self._left(deadline, timeout)))
                continue
            got = 0
            with response:
                usable = self._usable(response)
                if usable is not None:
                    return usable
                events = read_events(response, read_timeout=lambda: min(STREAM_READ_TIMEOUT, _remaining(deadline)))
                while True:
                    # Only reading is guarded: what the callbacks raise is the caller's.
                    try:
                        event = next(events, None)
                        data = event.json() if event is not None and event.kind in APPLIED else None
                    except STREAM_ERRORS as exc:
                        log.debug("job %s: event stream dropped (%s)", self.id, type(exc).__name__)
                        break
                    if event is None:
                        break
                    got += 1
                    last_id = event.id or last_id
                    if on_event is not None:
                        on_event(event)
                    if self._apply(event.kind, data, watch):
                        return True
                    self._left(deadline, timeout)
            self._left(deadline, timeout)
            empty = 0 if got else empty + 1
        log.debug("job %s: %d event streams in a row brought nothing; polling", self.id, empty)
        return False

    def _usable(self, response) -> bool | None:
        """None: the answer is a stream to read; else what ``_follow`` returns without one."""
        content_type = response.headers.get("Content-Type", "")
        if response.status_code == 200 and content_type.startswith("text/event-stream"):
            return None
        if response.status_code in (401, 403):
            raise errors.from_response(response)
        if response.status_code == 204:  # the end was seen already: the job holds it
            self.refresh()
            return self.done
        if response.status_code == 404:
            self.refresh()  # NotFound when the job is gone; else the server has no stream route
        log.info("job %s: no event stream (HTTP %d %s); polling", self.id, response.status_code, content_type)
        return False

    def _apply(self, kind: str, data, watch: _Watch) -> bool:
        """Take one event (its kind, its decoded data) into the job's fields; True at its end."""
        if kind == "end":
            self.data, self.partial = data, False
            watch.check()
            return True
        if kind == "status":
            # The job without args, kwargs and result, as the store held it: its progress can lag
            # the progress events (they go from the worker straight to the stream), so within one
            # attempt the newer, higher progress stays; a new attempt starts again from its own.
            if data.get("attempt") == self.attempt and (data.get("progress") or 0) < self.progress:
                data = {**data, "progress": self.progress, "progress_message": self.progress_message}
            self.data.update(data)
        elif kind == "progress":
            self.data["progress"], self.data["progress_message"] = data.get("progress"), data.get("message")
        watch.check()
        return False

    def _poll(self, deadline, timeout, watch, interval: float) -> None:
        while True:
            try:
                # a read, its retries and their pauses end with the wait: no waiting past it
                self.data = self._client.job(self.id, deadline=deadline).data
                self.partial = False
            except errors.JobServiceError as exc:
                if exc.status is None and _remaining(deadline) <= 0:
                    raise errors.WaitTimeout(self, timeout) from exc  # timed out by the deadline
                raise
            watch.check()
            if self.done:
                return
            time.sleep(min(interval, self._left(deadline, timeout)))

    def _left(self, deadline: float | None, timeout: float | None) -> float:
        """Seconds left before ``deadline`` (a day when there is none).

        Raises:
            WaitTimeout: none are left.
        """
        if deadline is None:
            return 86400.0
        left = deadline - time.monotonic()
        if left <= 0:
            raise errors.WaitTimeout(self, timeout)
        return left


def _remaining(deadline: float | None) -> float:
    """Seconds left before ``deadline``, at least 0 (a day when there is none)."""
    return 86400.0 if deadline is None else max(0.0, deadline - time.monotonic())


class _Watch:
    """Calls ``on_progress`` when what a person watching would see has changed."""

    def __init__(self, job: Job, on_progress):
        self.job, self.on_progress = job, on_progress
        self.seen = self._state()

    def _state(self) -> tuple:
        job = self.job
        return job.status, job.progress, job.progress_message, job.attempt

    def check(self) -> None:
        state = self._state()
        if state != self.seen:
            self.seen = state
            if self.on_progress is not None:
                self.on_progress(self.job)
