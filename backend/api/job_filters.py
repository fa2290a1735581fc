"""The search filters of ``GET /jobs`` (query string) and of ``POST /jobs/cancel`` and
``POST /jobs/retry`` (JSON body), read and checked: any fault is a 422 naming the parameter, an
owner filter a tenant may not use a 403, never a 500 from the store (a value holding a NUL is
taken, and matches nothing on both stores: ``backend/store/job_search.py``)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from flask import g, request

from backend.core.errors import Forbidden, ValidationFailed
from backend.core.job_filters import (
    KWARG_NAME,
    MAX_KWARG_FILTERS,
    MAX_KWARG_VALUE,
    MAX_Q,
    MIN_Q,
    JobFilter,
    kwarg_text,
)
from backend.core.states import JobStatus

#: The filters, with the longest value each takes (characters).
FILTER_LENGTHS = {
    "task": 200,
    "status": 16,
    "owner": 100,
    "created_after": 64,
    "created_before": 64,
    "q": MAX_Q,
    "batch_id": 40,
    "schedule_id": 40,
}
#: GET /jobs: the parameters besides the filters.
PAGE_PARAMS = ("limit", "cursor", "fields")
KWARGS_PREFIX = "kwargs."


def from_query(args: Mapping | None = None) -> JobFilter:
    """The filters of ``GET /jobs``'s query string (an empty value is no filter).

    Raises:
        ValidationFailed: an unknown parameter, one given twice, or a bad value (422).
        Forbidden: a tenant's owner filter naming another owner (403).
    """
    args = request.args if args is None else args
    values: dict[str, str] = {}
    pairs: list[tuple[str, str]] = []
    for name in args:
        given = args.getlist(name)
        if len(given) > 1:
            raise ValidationFailed(f"{name} is given {len(given)} times; give each parameter once")
        value = given[0]
        if name.startswith(KWARGS_PREFIX):
            pairs.append((_kwarg_name(name[len(KWARGS_PREFIX) :]), _kwarg_value(name, value)))
        elif name in FILTER_LENGTHS:
            if value != "":
                values[name] = value
        elif name not in PAGE_PARAMS:
            known = [*FILTER_LENGTHS, "kwargs.<name>", *PAGE_PARAMS]
            raise ValidationFailed(f"unknown parameter {name[:100]!r}; the parameters are {known}")
    return _build(values, pairs)


def from_body(body: dict, *, allowed: tuple[str, ...]) -> JobFilter:
    """The filters of a bulk action's JSON body (``kwargs``: an object of name -> value); the
    fields besides the filters that the caller reads itself are named in ``allowed``.

    Raises:
        ValidationFailed: an unknown field or a bad value (422).
        Forbidden: a tenant's owner filter naming another owner (403).
    """
    unknown = sorted(set(body) - set(FILTER_LENGTHS) - {"kwargs"} - set(allowed))
    if unknown:
        raise ValidationFailed(f"unknown fields {unknown}; the filters are {[*FILTER_LENGTHS, 'kwargs']}")
    values: dict[str, str] = {}
    for name in FILTER_LENGTHS:
        if name in body:
            value = body[name]
            if not isinstance(value, str) or value == "":
                raise ValidationFailed(f"{name} must be a non-empty string, got {value!r:.100}")
            values[name] = value
    pairs: list[tuple[str, str]] = []
    if "kwargs" in body:
        kwargs = body["kwargs"]
        if not isinstance(kwargs, dict) or not kwargs:
            raise ValidationFailed("kwargs must be an object of keyword argument names and values")
        for name, value in kwargs.items():
            # A text with a NUL is taken (it matches nothing: no indexed value holds one).
            text = value if isinstance(value, str) and len(value) <= MAX_KWARG_VALUE else kwarg_text(value)
            if text is None:
                raise ValidationFailed(
                    f"kwargs.{str(name)[:100]} must be a string, number, boolean or null of at most "
                    f"{MAX_KWARG_VALUE} characters"
                )
            pairs.append((_kwarg_name(name), text))
    return _build(values, pairs)


def names_a_filter(body: dict) -> bool:
    """Whether a bulk action's body names a filter (each is refused empty, so naming one narrows;
    a tenant naming its own owner chooses all its jobs)."""
    return any(name in body for name in (*FILTER_LENGTHS, "kwargs"))


def _build(values: dict[str, str], pairs: list[tuple[str, str]]) -> JobFilter:
    for name, value in values.items():
        if len(value) > FILTER_LENGTHS[name]:
            raise ValidationFailed(f"{name} may be at most {FILTER_LENGTHS[name]} characters, got {len(value)}")
    if len(pairs) > MAX_KWARG_FILTERS:
        raise ValidationFailed(f"at most {MAX_KWARG_FILTERS} kwargs filters per request, got {len(pairs)}")
    q = values.get("q")
    if q is not None and len(q) < MIN_Q:
        raise ValidationFailed(f"q must be {MIN_Q} to {MAX_Q} characters (a substring to search for), got {len(q)}")
    return JobFilter(
        owner=_owner(values.get("owner")),
        task=values.get("task"),
        status=_status(values.get("status")),
        created_after=_moment("created_after", values.get("created_after")),
        created_before=_moment("created_before", values.get("created_before")),
        # Sorted: the same filters in another order are the same filter (and cursor).
        kwargs=tuple(sorted(dict(pairs).items())),
        q=q,
        batch_id=values.get("batch_id"),
        schedule_id=values.get("schedule_id"),
    )


def _owner(requested: str | None) -> str | None:
    """The owner the jobs must have: a tenant's own, whatever it asks; an admin's filter."""
    principal = g.principal
    if principal.is_admin:
        return requested
    if requested is not None and requested != principal.owner:
        raise Forbidden("the owner filter is for admin keys; a tenant's key sees only its own jobs")
    return principal.owner


def _status(raw: str | None) -> str | None:
    if raw is None:
        return None
    try:
        return JobStatus(raw.upper()).value
    except ValueError:
        raise ValidationFailed(f"status must be one of {[s.value for s in JobStatus]}, got {raw!r}") from None


def _moment(name: str, raw: str | None) -> datetime | None:
    """An ISO 8601 time, UTC when it names no zone."""
    if raw is None:
        return None
    try:
        when = datetime.fromisoformat(raw)
    except ValueError:
        raise ValidationFailed(f"{name} must be an ISO 8601 time, like 2030-01-01T09:00:00Z, got {raw!r}") from None
    if when.tzinfo is None:
        return when.replace(tzinfo=UTC)
    try:
        return when.astimezone(UTC)
    except OverflowError:
        # Within a day of year 1 or 9999: as far as any stored time is.
        return (datetime.min if when.year == 1 else datetime.max).replace(tzinfo=UTC)


def _kwarg_name(name: object) -> str:
    if not isinstance(name, str) or not KWARG_NAME.fullmatch(name):
        raise ValidationFailed(
            f"a kwargs filter names a keyword argument: [A-Za-z_][A-Za-z0-9_]{{0,99}}, got {str(name)[:100]!r}"
        )
    return name


def _kwarg_value(param: str, value: str) -> str:
    if len(value) > MAX_KWARG_VALUE:
        raise ValidationFailed(f"{param[:110]} may be at most {MAX_KWARG_VALUE} characters")
    return value
