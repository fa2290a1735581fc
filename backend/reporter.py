"""Worker -> API reports over HTTP, with the internal token.

One keep-alive ``requests.Session`` per process. ``started``/``completed``/``failed`` are
retried with exponential backoff while the API is unreachable (up to
``REPORT_RETRY_SECONDS``; past that, the API's reconciler settles the job from RQ).
Progress is best effort and coalesced: at most one report per ``PROGRESS_MIN_INTERVAL``,
the latest value wins, and a pending value is flushed by a timer.
"""

from __future__ import annotations

import logging
import threading
import time

import requests

log = logging.getLogger(__name__)

_BACKOFF_START = 0.25
_BACKOFF_CAP = 5.0
_TIMEOUT = (3.05, 10)
STARTED_RETRY_SECONDS = 5.0


class Reporter:
    def __init__(self, base_url: str, token: str, *, retry_seconds: float = 120.0, progress_interval: float = 0.25):
        self.base_url = base_url.rstrip("/")
        self.retry_seconds = retry_seconds
        self.progress_interval = progress_interval
        self._token = token
        self._session: requests.Session | None = None
        self._lock = threading.Lock()
        self._last_progress_at = 0.0
        self._pending: tuple[str, int, int, str | None] | None = None
        self._timer: threading.Timer | None = None
        #: (job_id, attempt) pairs the API refused (409): cancelled or replaced.
        self.refused: set[tuple[str, int]] = set()

    def _http(self) -> requests.Session:
        # Created lazily so that a forked work-horse opens its own connection.
        if self._session is None:
            self._session = requests.Session()
            self._session.headers["X-Internal-Token"] = self._token
        return self._session

    def reset(self) -> None:
        """Forget the inherited connection (called in a freshly forked process)."""
        self._session = None
        self._lock = threading.Lock()
        self._timer = None
        self._pending = None
        self._last_progress_at = 0.0
        self.refused = set()

    # -- reports ------------------------------------------------------------------------

    def started(self, job_id: str, attempt: int, worker: str) -> int | None:
        # Briefly retried only: a job must not wait on the API to start (the reconciler
        # learns of it from RQ if this report never lands).
        return self._post_reliably(
            job_id,
            "started",
            {"attempt": attempt, "worker": worker},
            within=min(self.retry_seconds, STARTED_RETRY_SECONDS),
        )

    def completed(self, job_id: str, attempt: int, result: object) -> int | None:
        self._drop_pending_progress()
        return self._post_reliably(job_id, "completed", {"attempt": attempt, "result": result})

    def failed(self, job_id: str, attempt: int, error: str) -> int | None:
        self._drop_pending_progress()
        return self._post_reliably(job_id, "failed", {"attempt": attempt, "error": error})

    def progress(self, job_id: str, attempt: int, percent: int, message: str | None) -> bool:
        """Report progress (coalesced). Returns False once the API has refused this attempt."""
        if (job_id, attempt) in self.refused:
            return False
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

    def _flush_progress(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, None
            self._timer = None
            if pending is None:
                return
            self._last_progress_at = time.monotonic()
            job_id, attempt, percent, message = pending
            status = self._post_once(job_id, "progress", {"attempt": attempt, "progress": percent, "message": message})
            if status == 409:
                self.refused.add((job_id, attempt))

    def _drop_pending_progress(self) -> None:
        with self._lock:
            self._pending = None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    # -- transport ----------------------------------------------------------------------

    def _url(self, job_id: str, event: str) -> str:
        return f"{self.base_url}/internal/jobs/{job_id}/{event}"

    def _post_once(self, job_id: str, event: str, body: dict) -> int | None:
        try:
            response = self._http().post(self._url(job_id, event), json=body, timeout=_TIMEOUT)
        except requests.RequestException as exc:
            log.warning("job %s: %s report not delivered: %s", job_id, event, exc)
            return None
        if response.status_code >= 400:
            log.info("job %s: %s report answered %s", job_id, event, response.status_code)
        return response.status_code

    def _post_reliably(self, job_id: str, event: str, body: dict, *, within: float | None = None) -> int | None:
        """POST until the API answers something other than a 5xx, or the retry window ends.

        Returns the final status code, or None when the API never answered.
        """
        window = self.retry_seconds if within is None else within
        deadline = time.monotonic() + window
        delay = _BACKOFF_START
        while True:
            try:
                response = self._http().post(self._url(job_id, event), json=body, timeout=_TIMEOUT)
                if response.status_code < 500:
                    if response.status_code >= 400:
                        # 409: an older attempt, or the job ended (e.g. cancelled). Nothing to retry.
                        log.info(
                            "job %s attempt %s: %s report refused (%s): %s",
                            job_id, body.get("attempt"), event, response.status_code, response.text[:200],
                        )  # fmt: skip
                    return response.status_code
                problem = f"HTTP {response.status_code}"
            except requests.RequestException as exc:
                problem = str(exc)
                self._session = None  # a broken keep-alive connection is not reused
            if time.monotonic() + delay > deadline:
                log.error("job %s: %s report abandoned after %.0f s: %s", job_id, event, window, problem)
                return None
            log.warning("job %s: %s report failed (%s); retrying in %.2f s", job_id, event, problem, delay)
            time.sleep(delay)
            delay = min(delay * 2, _BACKOFF_CAP)
