"""Checkpoints: the state a task saves (``current_job().checkpoint(state)``) for its job's next attempt.

A worker saves synchronously (``PUT /internal/jobs/<job_id>/checkpoint``: the task must know it
is saved) for its own attempt of a live job only, so a stale worker (its job moved on to a new
attempt) or an ended job cannot overwrite what the current attempt relies on. The next attempt
reads it back (after a crash, a kill, a timeout or a retry) as ``checkpoint_state``.
"""

from __future__ import annotations

from datetime import datetime

from backend.core.errors import Conflict, NotFound
from backend.core.long_tasks import MAX_CHECKPOINT_BYTES
from backend.core.size_caps import TooLarge, json_size
from backend.core.states import decide
from backend.service.representations import iso
from backend.store import checkpoints
from backend.store.jobs import Sessions


def save(sessions: Sessions, job_id: str, *, attempt: int, state: object) -> datetime:
    """Save ``state`` for the job's attempt ``attempt``; when it was saved.

    Raises:
        TooLarge: ``state`` is over ``MAX_CHECKPOINT_BYTES`` as compact JSON (413).
        NotFound: no such job.
        StaleAttempt: ``attempt`` is not the job's current attempt (409).
        InvalidTransition: the job has ended (409).
    """
    size = json_size(state)
    if size > MAX_CHECKPOINT_BYTES:
        raise TooLarge(
            f"the checkpoint is {size:,} bytes as JSON, over the {MAX_CHECKPOINT_BYTES:,}-byte cap",
            details={"limit": MAX_CHECKPOINT_BYTES, "size": size},
        )
    at = checkpoints.save(sessions, job_id, attempt=attempt, state=state)
    if at is not None:
        return at
    row = checkpoints.read(sessions, job_id)
    if row is None:
        raise NotFound(f"no job {job_id!r}")
    # Not written: another attempt, or an ended job.
    move = decide(row.status, row.attempt, None, attempt)
    if move.refused:
        raise move.error(job_id)
    raise Conflict(f"job {job_id} changed while its checkpoint was saved; nothing was saved")


def read(sessions: Sessions, job_id: str, *, attempt: int | None = None) -> dict:
    """The job's newest checkpoint: ``{"state", "attempt", "checkpoint_at"}`` (all null for none);
    with ``attempt``, only one an earlier attempt saved.

    Raises:
        NotFound: no such job.
    """
    row = checkpoints.read(sessions, job_id)
    if row is None:
        raise NotFound(f"no job {job_id!r}")
    saved = row.checkpoint_attempt
    if saved is None or (attempt is not None and saved >= attempt):
        return {"state": None, "attempt": None, "checkpoint_at": None}
    return {"state": row.checkpoint, "attempt": saved, "checkpoint_at": iso(row.checkpoint_at)}
