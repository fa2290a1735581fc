"""One action applied to each of many jobs (``POST /jobs/cancel`` and ``POST /jobs/retry``): each
job's refusal is reported and the rest go on; a store that is down stops the whole request.

Its own module because the bulk cancel and the bulk retry answer alike, and one loop keeps them so.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from backend.core.errors import JobServiceError
from backend.store.errors import is_unavailable

log = logging.getLogger(__name__)


def act_on_each(
    job_ids: Iterable[str],
    act: Callable[[str], object],
    *,
    verb: str,
    done_after_all: Callable[[str], bool] | None = None,
) -> tuple[list[str], list[dict]]:
    """``act`` on each id; the ids it acted on and, for the others, why not.

    A ``JobServiceError`` is the job's answer (reason and message). Any other failure but a store
    that is down (re-raised: 503, the jobs acted on so far stay so) is logged and reported as
    ``<verb>_failed``, unless ``done_after_all`` says the action took effect before the failure.
    """
    done: list[str] = []
    skipped: list[dict] = []
    for job_id in job_ids:
        try:
            act(job_id)
            done.append(job_id)
        except JobServiceError as exc:
            skipped.append(refusal(job_id, exc))
        except Exception as exc:
            if is_unavailable(exc):
                raise
            # One job's unforeseen failure must not abort the rest of the request (the ids after
            # it would be neither acted on nor reported).
            log.exception("job %s: bulk %s failed", job_id, verb)
            if done_after_all is not None and done_after_all(job_id):
                done.append(job_id)
            else:
                skipped.append(
                    {"job_id": job_id, "reason": f"{verb}_failed", "message": f"the {verb} failed; try again"}
                )
    return done, skipped


def refusal(job_id: str, exc: JobServiceError) -> dict:
    """How a bulk action's answer says why it did not act on a job."""
    return {"job_id": job_id, "reason": exc.code, "message": exc.message}
