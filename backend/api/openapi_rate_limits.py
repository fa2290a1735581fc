"""The paths of /openapi.json for rate limits per key: ``GET /rate-limits`` and setting and
clearing one key's limit (``backend.api.openapi`` adds them to the others; apart so that each
module stays short). Not the submission limiter's 429s, which every route documents."""

from __future__ import annotations

from backend.api.openapi_queues import RETRY_AFTER
from backend.api.openapi_schemas import INTEGER, NULLABLE_STRING, SCRIPTED, STRING, operation, ref
from backend.core.rate_spec import MAX_TEXT
from backend.service.rate_limits import KEY_PATTERN, LIMIT_PATTERN, MAX_KEY

KEY = {
    "name": "key",
    "in": "path",
    "required": True,
    "description": "a rate limit's key: the value of the argument a task's rate_key names (such as "
    "`openai`), or the task's name; may hold a slash, but does not begin with one nor hold `//` (no URL path "
    "carries them intact), no control characters (such a key is a 422, never a redirect)",
    "schema": {"type": "string", "minLength": 1, "maxLength": MAX_KEY, "pattern": KEY_PATTERN},
}
LIMIT = {
    "type": "string",
    "maxLength": MAX_TEXT,
    "pattern": LIMIT_PATTERN,
    "description": "N/second, N/minute, N/hour, N/day or N/<seconds>s (such as 10/5s); N is 1..1,000,000, "
    "the window 1 s..1 day; lower case, no spaces or leading zeros",
    "example": "100/minute",
}
_ERROR = {"application/json": {"schema": ref("Error")}}
_UNAVAILABLE = {
    "description": "the store recorded it but Redis did not answer (the limiter obeys it once Redis is back; "
    "sending it again is safe), or the store is unavailable",
    "headers": RETRY_AFTER,
    "content": _ERROR,
}


def rate_limit_paths() -> dict:
    """``/rate-limits`` and ``/rate-limits/{key}``."""
    overview = operation(
        "Rate limits per key: the limits tasks declare, the limits set per key, and the keys whose jobs wait "
        "for a slot (how many, when the next slot frees)",
        "200",
        ref("RateLimitList"),
        tags=["admin"],
        more={"503": {"description": "Redis or the store is unavailable", "headers": RETRY_AFTER, "content": _ERROR}},
    )
    put = operation(
        "Set a key's rate limit: it wins over the limit its tasks declare",
        "200",
        ref("RateLimitOverride"),
        body={
            "type": "object",
            "required": ["limit"],
            "additionalProperties": False,
            "properties": {"limit": LIMIT},
        },
        params=[KEY],
        tags=["admin"],
        more={
            "422": {"description": "an unknown field, or a limit or key that is not one", "content": _ERROR},
            "503": _UNAVAILABLE,
        },
    )
    put["description"] = (
        "Recorded in the store (it survives API, worker and Redis restarts), then set in Redis, where the "
        "limiter reads it at every job's admission: the key's next start obeys it. Jobs of the key already "
        "waiting for a slot are released at the new pace."
    )
    clear = operation(
        "Clear a key's rate limit: its jobs go back to the limit their task declares",
        "200",
        ref("RateLimitOverride"),
        params=[KEY, SCRIPTED],
        tags=["admin"],
        more={"503": _UNAVAILABLE},
    )
    clear["description"] = "Idempotent: clearing a key that has no limit set changes nothing (`changed: false`)."
    return {"/rate-limits": {"get": overview}, "/rate-limits/{key}": {"put": put, "delete": clear}}


def rate_limit_schemas() -> dict:
    """The component schemas of the rate limit routes."""
    return {
        "RateLimitOverride": {
            "type": "object",
            "required": ["key", "limit", "previous", "changed", "set_by", "set_at"],
            "properties": {
                "key": STRING,
                "limit": {**NULLABLE_STRING, "description": "the key's limit now (null: none set)"},
                "previous": {**NULLABLE_STRING, "description": "the limit set before this request"},
                "changed": {"type": "boolean", "description": "whether this request changed the key's limit"},
                "set_by": NULLABLE_STRING,
                "set_at": NULLABLE_STRING,
            },
        },
        "RateLimitList": {
            "type": "object",
            "required": ["tasks", "overrides", "held"],
            "properties": {
                "tasks": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["task", "rate_limit", "rate_key"],
                        "properties": {"task": STRING, "rate_limit": STRING, "rate_key": NULLABLE_STRING},
                    },
                },
                "overrides": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["key", "limit", "set_by", "set_at"],
                        "properties": {"key": STRING, "limit": STRING, "set_by": STRING, "set_at": STRING},
                    },
                },
                "held": {
                    "type": "array",
                    "description": "the keys whose jobs wait for a slot, the soonest first (at most 100)",
                    "items": {
                        "type": "object",
                        "required": ["key", "held", "limit", "next_slot_at"],
                        "properties": {
                            "key": STRING,
                            "held": INTEGER,
                            "limit": NULLABLE_STRING,
                            "next_slot_at": STRING,
                        },
                    },
                },
            },
        },
    }
