"""The worker's synchronous start check: the store's answer before a task Redis cannot vouch for.

After a Redis failover (``backend/broker/fences.py``) a job's cancel fence may be one of the
writes lost, so its start is reported and answered before the task runs. Only a clear yes (the
store accepted the start) runs it; a refusal (409: cancelled, superseded, already ended; 404: the
job is gone) does not, and anything else (5xx, a per-report error, no answer) is asked again.

The wait is bounded well below RQ's own timers: the worker and job heartbeat TTL set as the job
starts (``min(timeout, 30) + 60`` s, at least 61: a simple worker does not heartbeat while it
waits, and past it RQ's cleanup would take the job for abandoned and a second run could start)
and the forking worker's kill of a work-horse at ``timeout + 60`` s. A start the store cannot
confirm within it is not run, since a cancelled attempt must not run just because the API was
away too: the run ends ``StartUnconfirmed``, reported ``"unstarted": true``, and the job gets a
new attempt after a short delay. Its task never ran, so it is no interruption: neither a retry
nor an interruption is spent (``Attempts.requeue_unstarted``).
"""

from __future__ import annotations

import logging
import os
import time
from enum import Enum

import requests

from backend.broker.fences import StartCheck, start_check, start_check_from
from backend.core import protocol
from backend.core.interruptions import START_UNCONFIRMED

log = logging.getLogger(__name__)

#: The longest a worker waits for the store's answer (and never longer than REPORT_RETRY_SECONDS).
MAX_WAIT_SECONDS = 30.0
#: Left between the end of the wait and the nearest of RQ's timers.
RQ_MARGIN_SECONDS = 15.0
_BACKOFF_START = 0.25
_BACKOFF_CAP = 5.0
#: Per request, and within half of the time left each: a request never outlasts the bound.
_CONNECT, _READ = 3.05, 10.0


class Verdict(Enum):
    ALLOWED = "allowed"
    REFUSED = "refused"
    UNANSWERED = "unanswered"


class AttemptRefused(Exception):
    """Raised before a task runs when the API refuses its attempt (cancelled or replaced)."""


class StartUnconfirmed(Exception):
    """The store did not answer a start check in time: the run is ended before its task, unstarted."""


def wait_bound(retry_seconds: float, heartbeat_ttl: float, timeout: float | None) -> float:
    """How long a start check may wait: within REPORT_RETRY_SECONDS, MAX_WAIT_SECONDS and RQ's
    timers (``heartbeat_ttl`` and, with a job timeout, the work-horse kill at ``timeout + 60``)."""
    rq_deadline = heartbeat_ttl if not timeout or timeout < 0 else min(heartbeat_ttl, timeout + 60)
    return max(0.0, min(retry_seconds, MAX_WAIT_SECONDS, rq_deadline - RQ_MARGIN_SECONDS))


def unconfirmed(job_id: str, attempt: int, waited: float) -> str:
    """The one-line error of a run whose start the store did not confirm."""
    return f"{START_UNCONFIRMED}: no answer to the start check of job {job_id} attempt {attempt} in {waited:.1f} s"


class StartGate:
    """Asks the API whether an attempt may start; one keep-alive session per process (a forked
    work-horse opens its own: a connection is never shared across a fork)."""

    def __init__(self, base_url: str, token: str):
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._session: requests.Session | None = None
        self._pid = 0

    def _http(self) -> requests.Session:
        if self._session is None or self._pid != os.getpid():
            self._session = requests.Session()
            self._session.headers[protocol.TOKEN_HEADER] = self._token
            self._pid = os.getpid()
        return self._session

    def ask(self, job_id: str, attempt: int, worker: str, *, within: float) -> Verdict:
        """Report the start and wait for the store's answer, for at most ``within`` seconds."""
        report = protocol.started(job_id, attempt, worker)
        deadline = time.monotonic() + within
        delay = _BACKOFF_START
        while True:
            left = deadline - time.monotonic()
            verdict = self._ask_once(report, left) if left > 0 else Verdict.UNANSWERED
            if verdict is not Verdict.UNANSWERED:
                return verdict
            if time.monotonic() + delay >= deadline:
                log.error("job %s: the API did not answer its start check within %.1f s; not run", job_id, within)
                return Verdict.UNANSWERED
            time.sleep(delay)
            delay = min(delay * 2, _BACKOFF_CAP)

    def _ask_once(self, report: dict, left: float) -> Verdict:
        job_id = report["job_id"]
        report["at"] = time.time()
        body = protocol.batch_body([report], sent_at=time.time())
        try:
            response = self._http().post(
                f"{self.base_url}{protocol.BATCH_PATH}",
                json=body,
                timeout=(min(_CONNECT, left / 2), min(_READ, left / 2)),
            )
            if response.status_code != 200:
                log.warning("job %s: start check answered %s", job_id, response.status_code)
                return Verdict.UNANSWERED
            status = response.json()["results"][0]["status"]
        except (requests.RequestException, ValueError, KeyError, IndexError, TypeError) as exc:
            self._session = None  # a broken keep-alive connection is not reused
            log.warning("job %s: start check not answered (%s)", job_id, exc)
            return Verdict.UNANSWERED
        if status == 200:
            return Verdict.ALLOWED
        if status in (404, 409):
            return Verdict.REFUSED
        log.warning("job %s: start check answered %s for the report; asking again", job_id, status)
        return Verdict.UNANSWERED


class StartChecks:
    """The worker's side (``ReportingMixin``): the fence, and the store's answer when Redis'
    history cannot vouch for a missing fence; run in the process that runs the task."""

    #: The error of a run ended before its task because its start was unconfirmed; reset by the
    #: worker at each job's start (``perform_job``, ``prepare_job_execution``) and here.
    _unstarted: str | None = None

    def check_start(self, job, job_id: str, attempt: int, *, checked: object = None) -> None:
        """Return when the task may run; raise AttemptRefused or StartUnconfirmed when not.

        ``checked``: the reply of the start check's script sent with RQ's writes
        (``fences.queue_start_check``); None: the check is made here."""
        self._unstarted = None
        if checked is None:
            check = start_check(self.connection, job.id, job.created_at)
        else:
            check = start_check_from(self.connection, checked, job.id, job.created_at)
        verdict = None
        # ASK_STORE: Redis failed over or restarted since this job was created, and its fence may be
        # one of the writes it lost. The store, the record, answers the start before the task runs.
        if check is StartCheck.ASK_STORE:
            within = wait_bound(self.reporter.retry_seconds, self.get_heartbeat_ttl(job), job.timeout)
            verdict = self.start_gate.ask(job_id, attempt, self.name, within=within)
            if verdict is Verdict.UNANSWERED:
                # No answer is no yes: not run, and no run cut (a new attempt after a short delay).
                # The start is reported first, so the store has an attempt to end when the API is back.
                self._unstarted = unconfirmed(job_id, attempt, within)
                if not self.reports_from_parent:
                    self.reporter.started(job_id, attempt, self.name)
                raise StartUnconfirmed(self._unstarted)
        if check is StartCheck.FENCED or verdict is Verdict.REFUSED:
            # Cancelled while it waited, or a newer attempt replaced it: do not run it.
            self.reporter.refused.add((job_id, attempt))
            raise AttemptRefused(f"attempt {attempt} of job {job_id} was cancelled or replaced")
        if not self.reports_from_parent and verdict is None:  # ALLOWED: the start check reported it
            self.reporter.started(job_id, attempt, self.name)

    def handle_job_failure(self, job, queue, started_job_registry=None, exc_string="", execution=None):
        """RQ records a run ended before its task by its reason alone (one line, no traceback): what
        the reconciler and the forking parent read as the worker's own unstarted run, not the task's."""
        if self._unstarted:
            exc_string = self._unstarted
        super().handle_job_failure(job, queue, started_job_registry, exc_string, execution)
