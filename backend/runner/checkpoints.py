"""A task's checkpoints, saved and read through the API, synchronously: the task must know its
state is saved before it goes on (a report queued for later would not tell it).

``PUT``/``GET`` ``protocol.CHECKPOINT_PATH`` with the internal token. 409 (the attempt was
replaced, or the job cancelled or ended) and 404 (the job is gone) stop the task with
``JobCancelled``; a 413 is the API's cap, smaller than the worker's (ValueError). While the API
is unreachable or failing, the call is tried again with backoff for up to ``patience`` seconds,
then fails the attempt with ``CheckpointUnavailable`` (retried like any failure): going on from
a state it could not read, or past one it could not save, could undo work when it runs again.
"""

from __future__ import annotations

import logging
import os
import time

import requests

from backend.core import protocol
from backend.tasks.context import CheckpointUnavailable, JobCancelled

log = logging.getLogger(__name__)

_TIMEOUT = (3.05, 10.0)
_BACKOFF_START = 0.25
_BACKOFF_CAP = 5.0
#: The longest a checkpoint call waits for an API that does not answer.
MAX_PATIENCE_SECONDS = 30.0


class CheckpointClient:
    """Saves and reads checkpoints; one keep-alive session per process (a work-horse opens its own)."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        patience: float = MAX_PATIENCE_SECONDS,
    ):
        self.base_url = base_url.rstrip("/")
        self.patience = min(patience, MAX_PATIENCE_SECONDS)
        self._token = token
        self._session: requests.Session | None = None
        self._pid = 0

    def load(self, job_id: str, attempt: int) -> object:
        """The newest state an earlier attempt of the job saved, or None."""
        response = self._call("GET", job_id, attempt, params={"attempt": attempt})
        try:
            body = response.json()
        except ValueError:
            raise CheckpointUnavailable(f"job {job_id}: the API's checkpoint answer is not JSON") from None
        state = body.get("state") if isinstance(body, dict) else None
        saved_by = body.get("attempt") if isinstance(body, dict) else None
        # Only an earlier attempt's: this attempt reads before its own first save.
        return state if isinstance(saved_by, int) and saved_by < attempt else None

    def save(self, job_id: str, attempt: int, state: object) -> None:
        self._call("PUT", job_id, attempt, json={"attempt": attempt, "state": state})

    def _http(self) -> requests.Session:
        if self._session is None or self._pid != os.getpid():
            self._session = requests.Session()
            self._session.headers[protocol.TOKEN_HEADER] = self._token
            self._pid = os.getpid()
        return self._session

    def _call(self, method: str, job_id: str, attempt: int, **kwargs) -> requests.Response:
        url = self.base_url + protocol.checkpoint_path(job_id)
        deadline = time.monotonic() + self.patience
        delay = _BACKOFF_START
        while True:
            try:
                response = self._http().request(method, url, timeout=_TIMEOUT, **kwargs)
            except requests.RequestException as exc:
                self._session = None  # a broken keep-alive connection is not reused
                problem = f"the API is unreachable ({type(exc).__name__})"
            else:
                status = response.status_code
                if status == 200:
                    return response
                if status in (404, 409):
                    raise JobCancelled(f"job {job_id} attempt {attempt} was cancelled, ended or replaced ({status})")
                if status == 413:
                    raise ValueError(f"the API refused the checkpoint as too large: {_error(response)}")
                if status < 500 and status != 429:
                    raise CheckpointUnavailable(f"the API refused the checkpoint call ({status}): {_error(response)}")
                problem = f"the API answered {status}"
            if time.monotonic() + delay > deadline:
                raise CheckpointUnavailable(
                    f"job {job_id}: checkpoint {'read' if method == 'GET' else 'save'} failed for "
                    f"{self.patience:.0f} s: {problem}"
                )
            log.warning("job %s: checkpoint call failed (%s); trying again in %.2f s", job_id, problem, delay)
            time.sleep(delay)
            delay = min(delay * 2, _BACKOFF_CAP)


def _error(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):  # the API's {"error": {"code", "message", "details"}}
        error = error.get("message")
    return str(error or body)[:300]
