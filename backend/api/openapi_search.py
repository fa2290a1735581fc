"""The OpenAPI parts of the search (``backend/api/job_filters.py``): GET /jobs's filter parameters
and the filter bodies of POST /jobs/cancel and POST /jobs/retry, from the same limits.

``kwargs.<name>=<value>`` parameters have no OpenAPI 3.0 form (a parameter's name is fixed): the
operation's description names them. A cursor is taken back only with the filters it was given
out for, which no schema can state either (tests/schemathesis.toml counts that 422 as expected).
"""

from __future__ import annotations

from backend.api.job_filters import FILTER_LENGTHS
from backend.api.openapi_schemas import LIVE_STATUSES, OBJECT, STATUSES, operation, query_param
from backend.core.job_filters import KWARG_NAME_PATTERN, MAX_KWARG_FILTERS, MAX_KWARG_VALUE, MAX_Q, MIN_Q
from backend.service.job_search import RETRYABLE

DATE_TIME = {"type": "string", "format": "date-time", "description": "ISO 8601; without a zone: UTC"}
Q = {"type": "string", "minLength": MIN_Q, "maxLength": MAX_Q}
#: An empty query value is no filter.
EMPTY = {"type": "string", "maxLength": 0}
LIST_DESCRIPTION = (
    "Jobs newest first, those matching every filter given (an empty value is no filter). Besides the "
    f"parameters below, up to {MAX_KWARG_FILTERS} `kwargs.<name>=<value>` (name {KWARG_NAME_PATTERN}, value up "
    f"to {MAX_KWARG_VALUE} characters) match a top-level keyword argument whose value is that text, or a "
    "number, boolean or null whose JSON text it is. `q`: a case-insensitive substring of the task name, the "
    "error or the progress message. `owner` is for admin keys (a tenant naming another owner: 403). An "
    "unknown parameter: 422. `next_cursor` goes on only with the same filters (else 422)."
)


def _text(name: str, minimum: int = 0) -> dict:
    return {"type": "string", "minLength": minimum, "maxLength": FILTER_LENGTHS[name]}


def search_params() -> list[dict]:
    """GET /jobs's filter parameters (an empty value is no filter; q: 3 characters at least)."""
    return [
        query_param("status", {"type": "string", "enum": [*STATUSES, ""]}),
        query_param("task", _text("task")),
        query_param("owner", _text("owner")),
        query_param("created_after", {"anyOf": [DATE_TIME, EMPTY]}),
        query_param("created_before", {"anyOf": [DATE_TIME, EMPTY]}),
        query_param("q", {"anyOf": [Q, EMPTY]}),
        query_param("batch_id", _text("batch_id")),
        query_param("schedule_id", _text("schedule_id")),
    ]


def _filter_body(statuses: list[str]) -> dict:
    """A bulk action's filter: at least one filter, each non-empty; ``dry_run`` only counts."""
    kwarg_value = {
        "oneOf": [
            {"type": "string", "maxLength": MAX_KWARG_VALUE, "nullable": True},
            {"type": "number"},
            {"type": "boolean"},
        ]
    }
    properties = {
        "status": {"type": "string", "enum": statuses},
        "task": _text("task", 1),
        "owner": _text("owner", 1),
        "created_after": DATE_TIME,
        "created_before": DATE_TIME,
        "q": Q,
        "batch_id": _text("batch_id", 1),
        "schedule_id": _text("schedule_id", 1),
        "kwargs": {
            "type": "object",
            "minProperties": 1,
            "maxProperties": MAX_KWARG_FILTERS,
            "description": f"keyword argument name ({KWARG_NAME_PATTERN}) -> value (null too)",
            "additionalProperties": kwarg_value,
        },
        "dry_run": {"type": "boolean", "description": "only count the jobs matched (at most the cap)"},
    }
    filters = [name for name in properties if name != "dry_run"]
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": properties,
        "anyOf": [{"required": [name]} for name in filters],
    }


def cancel_filter_body() -> dict:
    return _filter_body(LIVE_STATUSES)


def bulk_answer(verb: str) -> dict:
    done = "cancelled" if verb == "cancel" else "retried"
    return {
        "oneOf": [
            {
                "type": "object",
                "required": [done, "skipped", "more"],
                "properties": {
                    done: {"type": "array", "items": {"type": "string"}},
                    "skipped": {"type": "array", "items": OBJECT},
                    "more": {"type": "boolean"},
                },
            },
            {
                "type": "object",
                "required": ["matched", "more", "dry_run"],
                "properties": {
                    "matched": {"type": "integer", "minimum": 0},
                    "more": {"type": "boolean"},
                    "dry_run": {"type": "boolean", "enum": [True]},
                },
            },
        ]
    }


def retry_path_item(cap: int) -> dict:
    summary = (
        f"Retry the FAILED and CANCELLED jobs matching the filters, oldest first, at most {cap} "
        "(BULK_CANCEL_MAX_IDS) per request; `more` says if some are left"
    )
    return {"post": operation(summary, "200", bulk_answer("retry"), body=_filter_body(list(RETRYABLE)), tags=["jobs"])}
