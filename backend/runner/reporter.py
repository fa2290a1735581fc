"""Worker -> API reports over HTTP, with the internal token, sent in batches off the job's path.

A job never waits for the API: ``started``, ``completed`` and ``failed`` are put on a queue
that one background thread sends to ``POST /internal/reports`` over a keep-alive connection:
everything gathered so far in one request, at once after a quiet spell or when the worker finds
nothing more to run (``hurry``), else at most one request per ``LINGER_SECONDS``. A start is held
up to ``START_HOLD_SECONDS`` for its attempt's end (a fast job's start and end travel together),
so the thread's JSON and HTTP never compete with the task's start; a flush sends it at once. While the
API is unreachable the thread retries with exponential backoff, each report for up to
``REPORT_RETRY_SECONDS``; past that, the API's reconciler settles the job from RQ. The API's
refusals (409: the attempt was cancelled or replaced) are kept in ``refused`` (the latest
``REFUSED_KEPT`` of them: a refusal matters only while its attempt may still run here), which
the running task sees at its next progress report.

Progress is best effort and coalesced: at most one report per ``PROGRESS_MIN_INTERVAL``, the
latest value wins, and a pending value is flushed by a timer, or before the attempt's end (so
the task's last message is the one the job keeps: a finished ``sleep`` shows "step 10 of 10").
Log lines (``log_lines``) are queued like ends; a snooze (``snoozed``) ends an attempt.

What a report carries is kept within the size caps (``backend/core/size_caps.py``): an error keeps
its tail, a progress message its beginning. The caps start as the worker's settings and follow
the ones the API announces in every answer. A result the API still refuses (its caps changed,
or a body over its request cap) is never dropped: the attempt is reported failed with the
API's reason instead, so the job is retried or ends FAILED rather than staying PROCESSING.

A forked work-horse calls ``reset()``: it has no sender thread, so it posts progress and log lines
directly with its own connection (its start and end are reported by the worker process).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

import requests

from backend.core import protocol
from backend.core.size_caps import SizeCaps
from backend.runner.recent import REFUSED_KEPT, RecentSet

__all__ = ["REFUSED_KEPT", "RecentSet", "Reporter"]

log = logging.getLogger(__name__)

_BACKOFF_START, _BACKOFF_CAP = 0.25, 5.0
#: Request timeouts: a batch; a work-horse's progress (posted in the task's own thread: never long);
#: a work-horse's log lines (posted every ~0.5 s off the task's thread, and once at its end).
_TIMEOUT, _PROGRESS_TIMEOUT, _LOG_TIMEOUT = (3.05, 10), (0.5, 1.0), (1.0, 3.0)
#: Reports per request, within the API's ``protocol.MAX_BATCH``.
BATCH_SIZE = 500
#: While reports keep coming, at most one request per this many seconds (the store learns of them up
#: to that much later): each costs the worker, the API and the store a few ms of CPU whatever it
#: carries (issue 17: 0.1 s left a forking worker's batches at ~3 jobs). Quiet or idle: at once.
LINGER_SECONDS = 0.25
#: A start report alone waits this long before it is sent (an end, or any other report, sends it
#: at once): the store learns of a start at most this much later, the task starts sooner.
START_HOLD_SECONDS = 0.1


class Reporter:
    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        retry_seconds: float = 120.0,
        progress_interval: float = 0.25,
        caps: SizeCaps | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        self.retry_seconds = retry_seconds
        self.progress_interval = progress_interval
        #: The size caps, replaced by the API's as soon as it answers (kept in a work-horse).
        self.caps = caps or SizeCaps()
        self._token = token
        self._direct = False
        self._start_afresh()

    def _start_afresh(self) -> None:
        """No connection, lock, thread or report of another process (a forked work-horse's too)."""
        self._session: requests.Session | None = None
        self._lock = threading.Lock()
        self._last_progress_at = 0.0
        self._pending: tuple[str, int, int, str | None] | None = None
        self._timer: threading.Timer | None = None
        #: (job_id, attempt) pairs the API refused (409): cancelled or replaced.
        self.refused = RecentSet()
        #: (job_id, attempt) pairs whose refused end was already reported again in another form.
        self._replaced = RecentSet()
        # The outbox: (deadline, report, due) triples, sent in order by one thread once one is due.
        self._outbox: deque[tuple[float, dict, float]] = deque()
        self._wakeup = threading.Condition(threading.Lock())
        self._next_due = float("inf")
        self._urgent = self._closed = False
        self._in_flight = 0
        self._sender: threading.Thread | None = None

    def _http(self) -> requests.Session:
        if self._session is None:
            self._session = requests.Session()
            self._session.headers[protocol.TOKEN_HEADER] = self._token
        return self._session

    def reset(self) -> None:
        """Start afresh in a forked work-horse: no inherited connection, lock or thread; progress
        and log lines posted directly (it has no sender thread)."""
        self._start_afresh()
        self._direct = True

    # -- reports ------------------------------------------------------------------------

    def started(self, job_id: str, attempt: int, worker: str) -> None:
        """Queue an attempt's start: sent with its end, or alone after ``START_HOLD_SECONDS``."""
        self._put(protocol.started(job_id, attempt, worker), hold=START_HOLD_SECONDS)

    def end(self, report: dict) -> None:
        """Queue an attempt's end, as ``protocol`` builds it (its last progress first)."""
        self.finish_progress()
        self._put(report)

    def completed(self, job_id: str, attempt: int, result: object) -> None:
        self.end(protocol.completed(job_id, attempt, result))

    def snoozed(self, job_id: str, attempt: int, seconds: float, reason: str) -> None:
        """Report an attempt that asked to run again after ``seconds`` (no failure)."""
        self.end(protocol.snoozed(job_id, attempt, seconds, self.caps.shorten_message(reason)))

    def log_lines(self, job_id: str, attempt: int, lines: list[protocol.LogLine]) -> None:
        """Send a run's log lines (at most MAX_LOG_LINES_PER_REPORT): queued, or posted at once
        from a work-horse."""
        report = protocol.log_lines(job_id, attempt, lines)
        if self._direct:
            report["at"] = time.time()
            self._post_now(report, timeout=_LOG_TIMEOUT)
        else:
            self._put(report)

    def failed(
        self, job_id: str, attempt: int, error: str, *, interrupted: bool = False, unstarted: bool = False
    ) -> None:
        """Report an attempt's end in failure; ``interrupted``: the worker's own (never a task's);
        ``unstarted``: its task never ran (the store did not confirm the start)."""
        self.end(self._failure(job_id, attempt, error, interrupted=interrupted, unstarted=unstarted))

    def _failure(
        self, job_id: str, attempt: int, error: str, *, interrupted: bool = False, unstarted: bool = False
    ) -> dict:
        # An error over the cap keeps its tail: where a traceback names the fault.
        error = self.caps.shorten_error(error)
        return protocol.failed(job_id, attempt, error, interrupted=interrupted, unstarted=unstarted)

    def progress(self, job_id: str, attempt: int, percent: int, message: str | None) -> bool:
        """Report progress (coalesced). Returns False once the API has refused this attempt."""
        if (job_id, attempt) in self.refused:
            return False
        if message is not None:
            message = self.caps.shorten_message(message)
        with self._lock:
            self._pending = (job_id, attempt, percent, message)
            wait = self._last_progress_at + self.progress_interval - time.monotonic()
            if wait > 0:
                if self._timer is None:
                    self._timer = threading.Timer(wait, self._flush_progress)
                    self._timer.daemon = True
                    self._timer.start()
                return True
        self._flush_progress()
        return (job_id, attempt) not in self.refused

    def _flush_progress(self, *, last: bool = False) -> None:
        with self._lock:
            pending, self._pending = self._pending, None
            if last and self._timer is not None:
                self._timer.cancel()
            self._timer = None
            if pending is None:
                return
            self._last_progress_at = time.monotonic()
            job_id, attempt, percent, message = pending
            report = protocol.progress(job_id, attempt, percent, message)
            if self._direct:
                self._post_now(report)
            else:
                # The last one goes with the attempt's end, delivered like it: its message stays.
                self._put(report, best_effort=not last)

    def finish_progress(self) -> None:
        """Send the progress still coalesced (a run's last report) now, ahead of its end.

        Always under the lock, also with nothing pending: the timer may have taken the last value
        and be posting it (a work-horse) or queueing it; returning before it is done would let a
        work-horse exit mid-post, or queue the end ahead of it (the job would keep an earlier
        message)."""
        self._flush_progress(last=True)

    def check(self) -> int | None:
        """Send an empty batch from this thread; the API's status code, or None if unreachable.

        Called before the worker forks any work-horse: the first request imports modules
        lazily (netrc, codecs), and a work-horse forked while the sender thread held such an
        import's lock would hang at its own first request.
        """
        try:
            response = self._post_batch([])
        except requests.RequestException as exc:
            self._session = None
            log.warning("reporter: the API at %s is unreachable (%s)", self.base_url, exc)
            return None
        if response.status_code == 401:
            log.error("reporter: the API at %s refuses this worker's INTERNAL_SERVICE_TOKEN", self.base_url)
        elif response.status_code == 200:
            self._adopt_caps(response)
        return response.status_code

    def _adopt_caps(self, response: requests.Response) -> None:
        try:
            announced = response.json().get("limits")
        except (ValueError, AttributeError):
            return
        caps = self.caps.adopt(announced)
        if caps != self.caps:
            log.info("reporter: the API's size caps are %s", caps.as_settings())
            self.caps = caps

    # -- the outbox ---------------------------------------------------------------------

    def _put(self, report: dict, *, best_effort: bool = False, at: float | None = None, hold: float = 0.0) -> None:
        report["at"] = at if at is not None else time.time()
        now = time.monotonic()
        deadline = now + (0.0 if best_effort else self.retry_seconds)
        with self._wakeup:
            self._outbox.append((deadline, report, now + hold))
            self._closed = False
            if self._sender is None or not self._sender.is_alive():
                self._sender = threading.Thread(target=self._send_forever, name="reporter", daemon=True)
                self._sender.start()
            if now + hold < self._next_due:
                # Sooner than what the sender waits for: it looks again (a held start, not at once).
                self._next_due = now + hold
                self._wakeup.notify()

    def hurry(self) -> None:
        """Send what is queued now, linger and holds cut short (the worker has nothing to run)."""
        with self._wakeup:
            self._urgent = self._urgent or bool(self._outbox)
            self._wakeup.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued report was answered or given up; False on timeout."""
        end = None if timeout is None else time.monotonic() + timeout
        with self._wakeup:
            self._urgent = True  # held starts go now
            self._wakeup.notify_all()
            while self._outbox or self._in_flight:
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._wakeup.wait(left)
        return True

    def _send_forever(self) -> None:
        delay = _BACKOFF_START
        last_sent = 0.0
        while True:
            if not self._wait_for_due():
                return
            wait = last_sent + LINGER_SECONDS - time.monotonic()
            if wait > 0:
                with self._wakeup:  # a flush or close cuts the linger short
                    self._wakeup.wait_for(lambda: self._urgent or self._closed, timeout=wait)
            last_sent = time.monotonic()
            with self._wakeup:
                batch = [self._outbox.popleft() for _ in range(min(len(self._outbox), BATCH_SIZE))]
                self._next_due = min((item[2] for item in self._outbox), default=float("inf"))
                self._in_flight = len(batch)
            try:
                undelivered = self._deliver([item[1] for item in batch])
            except Exception:  # never let the sender die: the worker would report nothing more
                log.exception("reporter: sending %d reports failed", len(batch))
                undelivered = []
            with self._wakeup:
                if undelivered:
                    now = time.monotonic()
                    again = {id(report) for report in undelivered}
                    kept = [item for item in batch if id(item[1]) in again and item[0] > now]
                    for deadline, report, _ in batch:
                        if id(report) in again and deadline <= now and report["event"] != protocol.PROGRESS:
                            log.error("job %s: %s report abandoned after %.0f s", report["job_id"],
                                      report["event"], self.retry_seconds)  # fmt: skip
                    self._outbox.extendleft(reversed(kept))
                    self._next_due = min(self._next_due, *(item[2] for item in kept), float("inf"))
                self._in_flight = 0
                if not self._outbox:
                    self._urgent = False
                self._wakeup.notify_all()
                if self._closed and not self._outbox:
                    return
            if undelivered:
                time.sleep(delay)
                delay = min(delay * 2, _BACKOFF_CAP)
            else:
                delay = _BACKOFF_START

    def _wait_for_due(self) -> bool:
        """Wait until a report in the outbox is due (any, once flushing or closing); False when the
        reporter is closed and nothing is left to send."""
        with self._wakeup:
            while True:
                if not self._outbox:
                    if self._closed:
                        return False
                    self._wakeup.wait()
                    continue
                wait = self._next_due - time.monotonic()
                if wait <= 0 or self._urgent or self._closed:
                    return True
                self._wakeup.wait(wait)

    def close(self) -> None:
        """End the sender thread once the outbox is empty (call ``flush`` first to wait for it)."""
        with self._wakeup:
            self._closed = True
            self._wakeup.notify_all()

    def _deliver(self, reports: list[dict]) -> list[dict]:
        """POST ``reports``; the ones to send again later (the API unreachable or failing).

        A batch the API refuses as a whole (400: one bad report; 413: too large) is split in
        halves until the culprit stands alone and is dropped, so it never holds back the others
        (an attempt's end is then reported once more, as a failure: see _report_refused_end).
        """
        try:
            response = self._post_batch(reports)
        except requests.RequestException as exc:
            self._session = None  # a broken keep-alive connection is not reused
            log.warning("reporter: %d reports not delivered (%s); will retry", len(reports), exc)
            return reports
        status = response.status_code
        if status >= 500 or status in (404, 405):
            # 404/405: an API that does not know batches yet, e.g. mid-way through an upgrade.
            log.warning("reporter: %d reports answered %s; will retry", len(reports), status)
            return reports
        if status in (400, 413) and len(reports) > 1:
            middle = len(reports) // 2
            return self._deliver(reports[:middle]) + self._deliver(reports[middle:])
        if status != 200:
            log.error("reporter: %d reports refused (%s): %s", len(reports), status, response.text[:300])
            if status in (400, 413, 422):
                self._report_refused_end(reports[0], f"the API refused the report ({status}): {response.text[:300]}")
            return []
        self._adopt_caps(response)
        for report, answer in zip(reports, response.json()["results"], strict=True):
            if answer["status"] == 409:
                self.refused.add((report["job_id"], report["attempt"]))
            if answer["status"] >= 400:
                log.info("job %s attempt %s: %s report refused (%s): %s", report["job_id"], report["attempt"],
                         report["event"], answer["status"], answer.get("error"))  # fmt: skip
            if answer["status"] == 422:
                self._report_refused_end(report, answer.get("error") or "the API refused the report (422)")
        return []

    def _report_refused_end(self, report: dict, reason: str) -> None:
        """An attempt's end that the API refused as too large (its caps differ from the ones this
        worker knew) is reported once more, within the API's caps, so the job never stays
        PROCESSING: a refused result fails the attempt with the API's reason, a refused error is
        cut to the API's cap."""
        key = (report["job_id"], report["attempt"])
        if report["event"] not in protocol.ENDS or key in self._replaced:
            return
        self._replaced.add(key)
        if report["event"] == protocol.COMPLETED:
            error = reason if reason.startswith("Result") else f"ResultRefused: {reason}"
        elif report["event"] == protocol.SNOOZED:
            error = f"SnoozeRefused: {reason}"
        else:
            error = report["error"]
        # The worker's marks outlive the shortening.
        marks = {"interrupted": bool(report.get("interrupted")), "unstarted": bool(report.get("unstarted"))}
        failure = self._failure(report["job_id"], report["attempt"], error, **marks)
        # Not through failed(): that would send the pending progress of whichever job runs now first.
        self._put(failure, at=report["at"])

    def _post_batch(self, reports: list[dict]) -> requests.Response:
        body = protocol.batch_body(reports, sent_at=time.time())
        return self._http().post(f"{self.base_url}{protocol.BATCH_PATH}", json=body, timeout=_TIMEOUT)

    def _post_now(self, report: dict, *, timeout: tuple = _PROGRESS_TIMEOUT) -> None:
        """Send one progress or log report from a work-horse, at once, without retries, waiting at
        most ``timeout`` (both are best effort there; the task may wait for this call)."""
        url = self.base_url + protocol.one_report_path(report["job_id"], report["event"])
        try:
            response = self._http().post(url, json=report, timeout=timeout)
        except requests.RequestException as exc:
            self._session = None
            log.warning("job %s: %s report not delivered: %s", report["job_id"], report["event"], exc)
            return
        if response.status_code == 409:
            self.refused.add((report["job_id"], report["attempt"]))
