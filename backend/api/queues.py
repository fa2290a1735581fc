"""Queue routes (admin only): ``GET /queues``, ``POST /queues/<name>/pause`` and ``/resume``.

A pause stops workers from starting the queue's jobs (running ones finish, the other queues are
served); it is recorded in the store, so it survives restarts (backend/service/queue_pauses.py).
Both commands are idempotent; an unknown queue is a 404.
"""

from __future__ import annotations

from flask import Blueprint, g, jsonify

from backend.api.auth import require_admin
from backend.api.context import services
from backend.service.queue_pauses import PauseOutcome
from backend.service.representations import iso

bp = Blueprint("queues", __name__, url_prefix="/queues")
bp.before_request(require_admin)


def _outcome(outcome: PauseOutcome):
    return jsonify(
        {
            "queue": outcome.queue,
            "paused": outcome.paused,
            "changed": outcome.changed,
            "paused_at": iso(outcome.paused_at),
            "paused_by": outcome.paused_by,
        }
    )


@bp.get("")
def list_queues():
    """Per queue: depth, paused (since when, by whom), live workers listening, completed in the last minute."""
    queues = services().pauses.overview()
    for queue in queues:
        queue["paused_at"] = iso(queue["paused_at"])
    return jsonify({"queues": queues})


@bp.post("/<name>/pause")
def pause(name: str):
    """Workers stop starting this queue's jobs within seconds; running jobs finish."""
    return _outcome(services().pauses.pause(name, by=g.principal.owner))


@bp.post("/<name>/resume")
def resume(name: str):
    return _outcome(services().pauses.resume(name, by=g.principal.owner))
