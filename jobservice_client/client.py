"""``Client``: the job service's HTTP API from Python, over one keep-alive ``requests.Session``.

Why retries live here: a 503 (Redis or the store down for a moment) and a 429 (a rate limit)
both say "not now, try again after Retry-After", and every caller would otherwise write the same
loop. Only those two answers are retried (and connection failures of reads): they say the
server did not act, so even a POST that starts a job is safe to send again. Any other failure of
a POST is raised at once, since the job may have been created.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from urllib.parse import quote

import requests

from jobservice_client import errors
from jobservice_client.job import Job

log = logging.getLogger("jobservice_client")

DEFAULT_URL = "http://127.0.0.1:5000"
USER_AGENT = "jobservice-client/0.1"
#: The submission options of ``POST /tasks/<name>``, besides args and kwargs.
SUBMIT_OPTIONS = (
    "priority",
    "idempotency_key",
    "run_at",
    "max_retries",
    "timeout",
    "webhook_url",
    "depends_on",
    "allow_failure",
    "max_interruptions",
    "max_snoozes",
)
#: GET /jobs filters a caller may pass to ``Client.jobs`` besides status, task and kwargs.
LIST_FILTERS = ("owner", "created_after", "created_before", "q", "batch_id", "schedule_id")
#: Lines per page of GET /jobs/<id>/logs (its maximum).
LOG_PAGE = 1000


class Client:
    """The job service at ``base_url``.

    Args:
        base_url: the API's address, e.g. ``http://127.0.0.1:5000``.
        api_key: sent as ``Authorization: Bearer <key>`` (None: a server without API_KEYS).
        timeout: seconds to connect and to wait for each answer.
        retries: how many times a 503 or 429 (and a read that could not connect) is tried
            again, after its Retry-After (or 0.5 s, 1 s, 2 s ... when it names none).
        max_retry_wait: the longest Retry-After honoured by waiting; a longer one is raised at
            once (``RateLimited.retry_after`` says how long), as sleeping minutes inside a call
            helps no one.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        retries: int = 3,
        max_retry_wait: float = 30.0,
    ):
        if retries < 0 or timeout <= 0 or max_retry_wait < 0:
            raise ValueError("retries and max_retry_wait must be >= 0 and timeout > 0")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.max_retry_wait = max_retry_wait
        self.session = requests.Session()
        self.session.headers["User-Agent"] = USER_AGENT
        # The API answers 415 to a write that sends neither JSON nor this header (its guard
        # against forms forged by web pages); a program is no browser, so every call says so.
        self.session.headers["X-Requested-With"] = USER_AGENT
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"

    @classmethod
    def from_env(cls, **options) -> Client:
        """A client for ``JOBSERVICE_URL`` (default http://127.0.0.1:5000) with ``JOBSERVICE_API_KEY``."""
        url = os.environ.get("JOBSERVICE_URL") or DEFAULT_URL
        return cls(url, os.environ.get("JOBSERVICE_API_KEY") or None, **options)

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.base_url!r})"

    # -- jobs ----------------------------------------------------------------------------

    def submit(
        self,
        task: str,
        args: Iterable | None = None,
        kwargs: Mapping | None = None,
        **options,
    ) -> Job:
        """Start a job of ``task``: ``POST /tasks/<task>``; the job as the API recorded it.

        ``args``/``kwargs`` are the task's arguments, and only they reach the task: a task
        parameter called ``priority`` travels in ``kwargs``, the option ``priority=`` is the
        job's. Options (keyword only): priority ("high", "default", "low"), idempotency_key,
        run_at (a datetime with a zone, or ISO text), max_retries, timeout (seconds), webhook_url,
        depends_on (a job id or Job, or a list of them), allow_failure, max_interruptions, max_snoozes.
        ``job.created`` is False when an idempotency key returned an existing live job.

        Raises:
            NotFound: no such task. BadRequest: arguments or options refused (422).
            RateLimited, Unavailable: still refused after the retries. TypeError: an unknown option.
            ValueError: a naive datetime, or arguments JSON cannot hold (NaN, Infinity).
        """
        unknown = sorted(set(options) - set(SUBMIT_OPTIONS))
        if unknown:
            raise TypeError(f"unknown submit options {unknown}; task arguments go in args= or kwargs=")
        body: dict = {}
        if args is not None:
            body["args"] = list(args)
        if kwargs is not None:
            body["kwargs"] = dict(kwargs)
        for name in SUBMIT_OPTIONS:
            value = options.get(name)
            if value is None:
                continue
            if isinstance(value, datetime):
                value = _instant(value, name)
            elif name == "depends_on":
                value = [item.id if isinstance(item, Job) else item for item in _listed(value)]
            body[name] = value
        response = self.request("POST", f"/tasks/{_segment(task)}", json_body=body)
        job = Job(self, _decoded(response))
        job.created = response.status_code == 202
        return job

    def job(self, job_id: str, *, deadline: float | None = None) -> Job:
        """``GET /jobs/<id>``, whole (arguments and result included). Raises NotFound.

        ``deadline`` (a ``time.monotonic()`` value) ends the call, its retries and their pauses."""
        return Job(self, _decoded(self.request("GET", f"/jobs/{_segment(job_id)}", deadline=deadline)))

    def jobs(
        self,
        *,
        status: str | None = None,
        task: str | None = None,
        kwargs: Mapping | None = None,
        fields: Iterable[str] | None = None,
        page_size: int | None = None,
        limit: int | None = None,
        **filters,
    ) -> Iterator[Job]:
        """Jobs newest first, matching every filter given, fetched a page at a time by cursor.

        ``kwargs={"document_id": 7}`` matches jobs whose top-level keyword argument
        ``document_id`` is 7 (or "7"); more filters: owner (admin keys), created_after,
        created_before (datetimes with a zone, or ISO text), q (a substring of task, error or
        progress message), batch_id, schedule_id. ``fields`` adds heavy fields (args, kwargs,
        result) to each listed job; ``limit`` stops after that many jobs (None: all of them).

        Raises (at once, before any page): TypeError (an unknown filter, a list as a kwargs
        value), ValueError (a naive datetime: the API would read it as UTC). While iterating:
        the request's errors, and ServerError when the API sends a cursor it sent before.
        """
        unknown = sorted(set(filters) - set(LIST_FILTERS))
        if unknown:
            raise TypeError(f"unknown job filters {unknown}; known: status, task, kwargs, {', '.join(LIST_FILTERS)}")
        params: dict[str, str] = {}
        for name, value in {"status": status, "task": task, **filters}.items():
            if value is not None:
                params[name] = _instant(value, name) if isinstance(value, datetime) else str(value)
        for name, value in (kwargs or {}).items():
            params[f"kwargs.{name}"] = query_text(value)
        if fields:
            params["fields"] = ",".join(fields)
        if page_size is not None:
            params["limit"] = str(page_size)
        return self._pages(params, limit)

    def _pages(self, params: dict[str, str], limit: int | None) -> Iterator[Job]:
        """The jobs of every page, following ``next_cursor``; a cursor seen before (a proxy's
        cached page, a server bug) would page forever through the same jobs: raised."""
        yielded, seen = 0, set()
        while limit is None or yielded < limit:
            page = self.get_json("/jobs", params=params)
            for data in page.get("jobs") or []:
                yield Job(self, data, partial=True)
                yielded += 1
                if limit is not None and yielded >= limit:
                    return
            cursor = page.get("next_cursor")
            if not cursor:
                return
            if cursor in seen:
                raise errors.ServerError(
                    f"the API repeated cursor {str(cursor)[:80]!r} of GET /jobs: it would page forever"
                )
            seen.add(cursor)
            params = {**params, "cursor": cursor}

    def cancel(self, job_id: str) -> Job:
        """``POST /jobs/<id>/cancel``: the job as cancelled. Raises Conflict once it has ended."""
        return Job(self, _decoded(self.request("POST", f"/jobs/{_segment(job_id)}/cancel", json_body={})))

    def retry(self, job_id: str) -> Job:
        """``POST /jobs/<id>/retry``: a FAILED or CANCELLED job runs again as a new attempt."""
        return Job(self, _decoded(self.request("POST", f"/jobs/{_segment(job_id)}/retry", json_body={})))

    def logs(self, job_id: str, *, after: int = 0) -> list[dict]:
        """The job's captured log lines after ``seq`` ``after``, oldest first, every page of them:
        each ``{"seq", "attempt", "at", "level", "message"}`` (the store keeps at most 1,000 per job)."""
        lines: list[dict] = []
        while True:
            page = self.get_json(f"/jobs/{_segment(job_id)}/logs", params={"after": after, "limit": LOG_PAGE})
            lines.extend(page.get("lines") or [])
            if page.get("next_after") is None or not page.get("lines"):
                return lines
            after = page["next_after"]

    # -- HTTP ----------------------------------------------------------------------------

    def get_json(self, path: str, *, params: Mapping | None = None):
        """``GET path`` decoded: for the routes this class has no method for."""
        return _decoded(self.request("GET", path, params=params))

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping | None = None,
        json_body: object = None,
        idempotent: bool | None = None,
        deadline: float | None = None,
    ) -> requests.Response:
        """One call with the retry rules of this class; the answer, when its status is below 300.

        ``idempotent`` (default: GET and HEAD are) also retries a call whose connection failed.
        ``deadline`` (a ``time.monotonic()`` value): no attempt waits for an answer past it, and
        a pause that would end past it is not taken (the error is raised).

        Raises:
            JobServiceError: the API's error as its subclass (NotFound, Conflict, ...), or
                Unavailable with ``status`` None when the service could not be reached;
                ServerError for a redirect (its message names where to: the client's URL is wrong).
            ValueError: ``json_body`` holds NaN or Infinity, which JSON cannot (nothing is sent).
        """
        idempotent = method in ("GET", "HEAD") if idempotent is None else idempotent
        url = self.base_url + path
        # Serialised here, strictly: requests' own failure to (NaN) would pass for a lost connection.
        data, headers = None, None
        if json_body is not None:
            try:
                data = json.dumps(json_body, allow_nan=False).encode()
            except ValueError as exc:
                raise ValueError(
                    f"{method} {path}: the body is not JSON ({exc}): NaN and Infinity cannot be sent"
                ) from None
            headers = {"Content-Type": "application/json"}
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            timeout = self.timeout if deadline is None else max(0.001, min(self.timeout, deadline - time.monotonic()))
            try:
                response = self.session.request(
                    method, url, params=params, data=data, headers=headers, timeout=timeout, allow_redirects=False
                )
            except requests.RequestException as exc:
                if idempotent and not last and _fits(_backoff(attempt), deadline):
                    self._pause(_backoff(attempt), f"{method} {path}: {type(exc).__name__}")
                    continue
                raise errors.Unavailable(f"{method} {url}: {_reason(exc)}") from exc
            if response.status_code < 300:
                return response
            if response.status_code < 400:
                raise errors.ServerError(
                    f"{method} {url} redirects to {response.headers.get('Location') or '(no Location)'}: "
                    "use the API's own address as the client's URL (JOBSERVICE_URL)",
                    status=response.status_code,
                )
            error = errors.from_response(response)
            if response.status_code in (429, 503) and not last:
                wait = error.retry_after if error.retry_after is not None else _backoff(attempt)
                if wait <= self.max_retry_wait and _fits(wait, deadline):
                    self._pause(wait, f"{method} {path}: {response.status_code}")
                    continue
            raise error
        raise AssertionError("unreachable")  # the last attempt returns or raises

    def open_events(self, job_id: str, *, last_event_id: str | None, read_timeout: float) -> requests.Response:
        """``GET /jobs/<id>/events`` streamed, whatever its status (the caller decides; no retry).

        Raises:
            requests.RequestException: the connection failed.
        """
        headers = {"Accept": "text/event-stream"}
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        return self.session.get(
            f"{self.base_url}/jobs/{_segment(job_id)}/events",
            headers=headers,
            stream=True,
            timeout=(self.timeout, read_timeout),
            allow_redirects=False,
        )

    def _pause(self, seconds: float, why: str) -> None:
        log.info("%s; trying again in %.1f s", why, seconds)
        time.sleep(seconds)


def query_text(value) -> str:
    """A kwargs filter value as the API compares it: text as is, numbers, booleans and None as
    their JSON text (``7`` -> ``"7"``, ``True`` -> ``"true"``, ``None`` -> ``"null"``).

    Raises:
        TypeError: a list or an object (the API indexes top-level scalar arguments only).
    """
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, bool | int | float):
        return json.dumps(value)
    raise TypeError(f"a kwargs filter matches a text, number, boolean or null, not {type(value).__name__}")


def _segment(value: str) -> str:
    """A path segment: a job id or task name with ``/`` or ``?`` cannot reach another route."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a non-empty id or name, got {value!r}")
    return quote(value, safe="")


def _decoded(response: requests.Response):
    """The answer's JSON.

    Raises:
        ServerError: it is not JSON (a proxy's error page answered 200, say).
    """
    try:
        return response.json()
    except ValueError:
        raise errors.ServerError(
            f"the answer to {response.request.method} {response.url} is not JSON: {response.text[:200]!r}",
            status=response.status_code,
        ) from None


def _instant(value: datetime, name: str) -> str:
    """A datetime as ISO text with its offset; ValueError when naive (the API reads a time
    without a zone as UTC: a local ``datetime.now()`` would be hours off; it refuses a naive run_at)."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name}: a datetime with a zone, e.g. datetime.now(UTC), not the naive {value.isoformat()}")
    return value.isoformat()


def _listed(value) -> list:
    """depends_on as a list: one id or Job is one parent (not a list of characters); else TypeError."""
    if isinstance(value, str | Job):
        return [value]
    try:
        return list(value)
    except TypeError:
        raise TypeError(f"depends_on takes a job id, a Job or a list of them, not {type(value).__name__}") from None


def _fits(seconds: float, deadline: float | None) -> bool:
    return deadline is None or time.monotonic() + seconds < deadline


def _reason(exc: requests.RequestException) -> str:
    """Why a request got no answer, in a few words (requests' own text nests urllib3's reprs)."""
    if isinstance(exc, requests.Timeout):
        return "no answer in time (timed out)"
    if "Connection refused" in str(exc):
        return "connection refused"
    return type(exc).__name__


def _backoff(attempt: int) -> float:
    return min(0.5 * 2**attempt, 8.0)
