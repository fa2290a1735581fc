"""Rate limit routes (admin only): ``GET /rate-limits``, ``PUT`` and ``DELETE /rate-limits/<key>``.

A task declares a limit per key for its outbound work (``@task(..., rate_limit="60/minute",
rate_key="provider")``); these routes set a key's limit at run time, which wins over the declared
one, and show the keys whose jobs wait for a slot (backend/service/rate_limits.py). Not the
per-API-key submission limiter, which is backend/api/rate_limits.py.
"""

from __future__ import annotations

from flask import Blueprint, g, jsonify
from werkzeug.routing import PathConverter

from backend.api.auth import require_admin
from backend.api.context import services
from backend.api.payloads import json_body
from backend.core.errors import ValidationFailed
from backend.service.rate_limits import OverrideOutcome
from backend.service.representations import iso

bp = Blueprint("key_limits", __name__, url_prefix="/rate-limits")
bp.before_request(require_admin)


class AnyKeyConverter(PathConverter):
    """Every rest of the path, a leading or a doubled "/" too: Werkzeug's ``path`` cannot begin
    with "/", and a merged "//" answered a 308 to another key, which a following client then set.
    Such a key reaches the view whole and the service refuses it (422)."""

    regex = ".+"
    part_isolating = False  # it spans "/" (Werkzeug guesses True for a regex without one)


# Registered before the rules below are (a blueprint's deferred functions run in order).
bp.record_once(lambda state: state.app.url_map.converters.setdefault("rate_key", AnyKeyConverter))

#: The fields a PUT's body may hold.
PUT_FIELDS = frozenset({"limit"})


def _outcome(outcome: OverrideOutcome):
    return jsonify(
        {
            "key": outcome.key,
            "limit": outcome.limit,
            "previous": outcome.previous,
            "changed": outcome.changed,
            "set_by": outcome.set_by,
            "set_at": iso(outcome.set_at),
        }
    )


@bp.get("")
def list_limits():
    """Declared limits per task, overrides per key, and the keys holding jobs (how many, next slot)."""
    overview = services().rate_limits.overview()
    for entry in overview["overrides"]:
        entry["set_at"] = iso(entry["set_at"])
    for entry in overview["held"]:
        entry["next_slot_at"] = iso(entry["next_slot_at"])
    return jsonify(overview)


# A key may hold a slash (a provider's host and path); the service checks every character.
# merge_slashes=False: "//" is the key's to answer for (422), never a redirect to another key.
@bp.put("/<rate_key:key>", merge_slashes=False)
def set_limit(key: str):
    """Set ``key``'s limit; it wins over the declared one for every job of the key, at its next admission."""
    body = json_body()
    unknown = sorted(set(body) - PUT_FIELDS)
    if unknown:
        raise ValidationFailed(f"unknown fields {unknown}", details={"allowed": sorted(PUT_FIELDS)})
    if "limit" not in body:
        raise ValidationFailed('"limit" is required, e.g. {"limit": "100/minute"}')
    return _outcome(services().rate_limits.set(key, body["limit"], by=g.principal.owner))


@bp.delete("/<rate_key:key>", merge_slashes=False)
def clear_limit(key: str):
    """Clear ``key``'s override (idempotent): its jobs go back to the limit their task declares."""
    return _outcome(services().rate_limits.clear(key))
