"""A Python client for the job service's HTTP API, and its command line (``python -m jobservice_client``).

    from jobservice_client import Client

    client = Client("http://127.0.0.1:5000", api_key=None)
    job = client.submit("sleep", kwargs={"seconds": 2}, priority="high")
    job.wait(on_progress=lambda j: print(j.progress, j.progress_message))
    print(job.status, job.result)

It imports nothing of ``backend`` (an .importlinter contract says so): it speaks HTTP only, so it
can be copied into, or installed beside, any Python program that calls the service.
"""

from __future__ import annotations

from jobservice_client.client import Client
from jobservice_client.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    JobCancelled,
    JobError,
    JobFailed,
    JobServiceError,
    NotFound,
    RateLimited,
    ServerError,
    Unauthorized,
    Unavailable,
    WaitTimeout,
)
from jobservice_client.events import Event
from jobservice_client.job import Job

__all__ = [
    "BadRequest",
    "Client",
    "Conflict",
    "Event",
    "Forbidden",
    "Job",
    "JobCancelled",
    "JobError",
    "JobFailed",
    "JobServiceError",
    "NotFound",
    "RateLimited",
    "ServerError",
    "Unauthorized",
    "Unavailable",
    "WaitTimeout",
]
