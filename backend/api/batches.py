"""Client routes for batches: progress and cancel."""

from __future__ import annotations

from flask import Blueprint, g, jsonify

from backend.api.auth import authenticate_client
from backend.api.context import services

bp = Blueprint("batches", __name__)
bp.before_request(authenticate_client)


@bp.get("/batches/<batch_id>")
def get_batch(batch_id: str):
    return jsonify(services().jobs.batch_summary(batch_id, owner=g.principal.scope))


@bp.post("/batches/<batch_id>/cancel")
def cancel_batch(batch_id: str):
    manager = services().jobs
    summary = manager.batch_summary(batch_id, owner=g.principal.scope)
    live = manager.live_job_ids(owner=g.principal.scope, status=None, task=None, batch_id=batch_id)
    # The bulk cancel's per-job handling: one job's failure is reported, never aborts the rest.
    cancelled, skipped = manager.cancel_many(live, owner=g.principal.scope, by=g.principal.owner)
    return jsonify({"batch_id": summary["batch_id"], "cancelled": cancelled, "skipped": skipped})
