"""Reading and checking request bodies: every fault becomes a clear 4xx, never a 500."""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime, timedelta

from flask import current_app, g, request
from werkzeug.exceptions import RequestEntityTooLarge

from backend.api.context import settings
from backend.core.errors import BadRequest, UnsupportedMediaType, ValidationFailed
from backend.core.interruptions import DEFAULT_MAX_INTERRUPTIONS, MAX_INTERRUPTIONS
from backend.core.long_tasks import DEFAULT_MAX_SNOOZES, MAX_SNOOZES_LIMIT
from backend.core.settings import QUEUE_NAMES
from backend.core.size_caps import SizeCaps, TooLarge
from backend.service.job_manager import JobRequest
from backend.tasks import TaskSpec
from backend.webhooks.ssrf import check_webhook_url, submission_budget

SUBMIT_FIELDS = {
    "args",
    "kwargs",
    "priority",
    "timeout",
    "max_retries",
    "max_interruptions",
    "max_snoozes",
    "webhook_url",
    "idempotency_key",
    "depends_on",
    "allow_failure",
    "run_at",
}
MAX_DEPENDENCIES = 100
MAX_RUN_AT_DELAY = timedelta(days=366)
MAX_TIMEOUT = 7 * 24 * 3600
MAX_RETRIES = 100
MAX_IDEMPOTENCY_KEY = 200


def json_body(*, lone_surrogates: bool = False) -> dict:
    """The request's JSON object.

    Args:
        lone_surrogates: take strings with an unpaired surrogate escape (``"\\ud800"``): JSON
            allows them, Unicode text does not, so a client's is refused (it failed later, as
            a 500, wherever the string met UTF-8: the store, Redis). Workers' reports take them
            (a file name in a traceback) and replace them where they store them.

    Raises:
        UnsupportedMediaType: the body is not declared as JSON.
        RequestEntityTooLarge: the body is over MAX_CONTENT_LENGTH, chunked or not (413).
        BadRequest: the body is not valid JSON, holds a number that is not finite or a string
            that is not Unicode text, nests too deep, or is not an object.
    """
    if not request.is_json:
        raise UnsupportedMediaType(
            f"send the body as JSON (Content-Type: application/json), got {request.mimetype or 'none'!r}"
        )
    raw = request.get_data(cache=True)
    _refuse_cut_chunked_body(raw)
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw, parse_constant=_reject_constant, parse_float=_finite_float)
    except NotFinite as exc:
        raise BadRequest(str(exc), details={"number": exc.text}) from None
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from None
    max_depth = settings().max_json_depth
    if _depth(body) > max_depth:
        raise BadRequest(f"the body nests deeper than {max_depth} levels")
    not_text = None if lone_surrogates or not _may_hold_surrogates(raw) else _first_not_text(body)
    if not_text is not None:
        raise BadRequest(
            f"the body holds a string that is not Unicode text (an unpaired surrogate escape): {not_text[:40]!r}"
        )
    if not isinstance(body, dict):
        raise BadRequest(f"the body must be a JSON object, got {type(body).__name__}")
    return body


def _refuse_cut_chunked_body(raw: bytes) -> None:
    # A body with a Content-Length over the cap is refused (413) before it is read. A chunked
    # one has none: Werkzeug reads it up to MAX_CONTENT_LENGTH and silently stops there, so a
    # cut body reached the JSON parser and was answered 400. One more byte from the server's
    # own stream tells a body of exactly the cap from a longer one.
    limit = request.max_content_length
    cut = request.content_length is None and limit is not None and len(raw) >= limit
    if cut and request.environ["wsgi.input"].read(1):
        raise RequestEntityTooLarge(f"the body is over the {limit}-byte cap (MAX_CONTENT_LENGTH)")


def _reject_constant(name: str):
    # NaN and Infinity are not JSON: accepting them would echo invalid JSON back.
    raise ValueError(f"{name} is not valid JSON")


class NotFinite(ValueError):
    """A number in a body that is valid JSON but no finite float (``1e400``)."""

    def __init__(self, text: str):
        super().__init__(f"numbers must be finite, got {text[:40]} (beyond a double's range)")
        self.text = text[:40]


def _finite_float(text: str) -> float:
    # json.loads turns 1e400 into inf, which every later read would emit as Infinity: refuse
    # it here, for every route's whole body at once.
    value = float(text)
    if not math.isfinite(value):
        raise NotFinite(text)
    return value


def _depth(value: object) -> int:
    """How deep ``value`` nests: 1 for a scalar or an empty object or list, one more for each
    level of values within. Only containers are visited (json.loads makes exact dicts and lists)."""
    if type(value) is not dict and type(value) is not list:
        return 1
    deepest, stack = 1, [(value, 1)]
    while stack:
        item, level = stack.pop()
        children = item.values() if type(item) is dict else item
        if not children:
            continue
        level += 1
        if level > deepest:
            deepest = level
        stack.extend((child, level) for child in children if type(child) is dict or type(child) is list)
    return deepest


def _may_hold_surrogates(raw: bytes) -> bool:
    """Whether the body's strings may hold an unpaired surrogate: json.loads makes one only from a
    ``\\u`` escape, or from bytes it decodes with ``surrogatepass`` (UTF-8's 0xED lead byte of a
    surrogate, or UTF-16 and UTF-32 bodies). Most bodies have none of these: no string is checked."""
    return b"\\u" in raw or b"\xed" in raw or json.detect_encoding(raw) != "utf-8"


def _first_not_text(value: object) -> str | None:
    """The first string (or key) of ``value`` that UTF-8 cannot encode, if any."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
            stack.extend(item)
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str) and not _is_text(item):
            return item
    return None


def _is_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def job_request(spec: TaskSpec, body: dict, *, idempotency_header: str | None = None) -> JobRequest:
    """Check a submission body against the contract and the task's signature.

    Raises:
        ValidationFailed: an unknown field, a value of the wrong kind, or arguments the task
            does not accept; the message names the fault.
    """
    unknown = sorted(set(body) - SUBMIT_FIELDS)
    if unknown:
        raise ValidationFailed(f"unknown fields {unknown}", details={"allowed": sorted(SUBMIT_FIELDS)})
    args, kwargs = call_option("args", body.get("args")), call_option("kwargs", body.get("kwargs"))
    check_argument_size(args, kwargs)
    priority = call_option("priority", body.get("priority"))
    timeout = call_option("timeout", body.get("timeout"))
    max_retries = call_option("max_retries", body.get("max_retries"))
    # A job's own, not a schedule's: how many runs cut by the infrastructure it may survive.
    max_interruptions = _int_option(
        "max_interruptions", body.get("max_interruptions"), DEFAULT_MAX_INTERRUPTIONS, 0, MAX_INTERRUPTIONS
    )
    # How many times the task may snooze (``raise Snooze``) before the job ends FAILED.
    max_snoozes = _int_option("max_snoozes", body.get("max_snoozes"), DEFAULT_MAX_SNOOZES, 0, MAX_SNOOZES_LIMIT)
    key = _idempotency_key(body.get("idempotency_key"), idempotency_header)
    webhook_url = body.get("webhook_url")
    if webhook_url is not None:
        if "webhook_lookups" not in g:  # one lookup budget per request: a batch's jobs share it
            # Counted in the key owner's share of the lookup threads (see backend/webhooks/ssrf.py).
            g.webhook_lookups = submission_budget(settings(), current_app.extensions, owner=g.principal.owner)
        webhook_url = check_webhook_url(
            webhook_url, allow_loopback=settings().webhook_allow_loopback, budget=g.webhook_lookups
        )
    depends_on = body.get("depends_on")
    depends_on = [] if depends_on is None else depends_on  # false, 0 or "" are mistakes, not "none"
    if not isinstance(depends_on, list) or not all(isinstance(i, str) and i for i in depends_on):
        raise ValidationFailed(f"depends_on must be a list of job ids, got {depends_on!r}")
    if len(depends_on) > MAX_DEPENDENCIES:
        raise ValidationFailed(f"depends_on may name at most {MAX_DEPENDENCIES} jobs, got {len(depends_on)}")
    allow_failure = body.get("allow_failure", False)
    if not isinstance(allow_failure, bool):
        raise ValidationFailed(f"allow_failure must be true or false, got {allow_failure!r}")
    run_at = _run_at(body.get("run_at"))
    spec.check_arguments(args, kwargs)
    return JobRequest(
        task=spec,
        args=args,
        kwargs=kwargs,
        priority=priority,
        timeout=timeout,
        max_retries=max_retries,
        max_interruptions=max_interruptions,
        max_snoozes=max_snoozes,
        webhook_url=webhook_url,
        idempotency_key=key,
        depends_on=tuple(dict.fromkeys(depends_on)),
        allow_failure=allow_failure,
        run_at=run_at,
    )


def check_argument_size(args: object, kwargs: object) -> None:
    """Refuse arguments over ``MAX_ARGS_BYTES`` (for submissions and schedules alike).

    Raises:
        TooLarge: 413, naming the cap and the arguments' size.
    """
    caps = SizeCaps.from_settings(settings())
    problem = caps.arguments_problem(args, kwargs)
    if problem:
        raise TooLarge(problem, details={"setting": "MAX_ARGS_BYTES", "limit": caps.args_bytes})


def _run_at(value: object) -> datetime | None:
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise ValidationFailed(f"run_at must be an ISO 8601 time with a zone, like 2030-01-01T09:00:00Z, got {value!r}")
    try:
        when = when.astimezone(UTC)
    except OverflowError:
        raise ValidationFailed(f"run_at is out of range, got {value!r}") from None
    if when - datetime.now(UTC) > MAX_RUN_AT_DELAY:
        raise ValidationFailed(f"run_at may be at most a year ahead, got {value!r}")
    return when


#: The options a job and a schedule share, checked by ``call_option`` for both.
CALL_OPTIONS = ("args", "kwargs", "priority", "timeout", "max_retries")


def call_option(name: str, value: object) -> object:
    """Check one option that a submission and a schedule share (``CALL_OPTIONS``), with the
    same limits for both; None (absent or null) gives the default.

    Raises:
        ValidationFailed: the value is of the wrong kind or out of range (the message names it).
    """
    if name == "args":
        value = [] if value is None else value
        if not isinstance(value, list):
            raise ValidationFailed(f"args must be a list, got {type(value).__name__}")
    elif name == "kwargs":
        value = {} if value is None else value
        if not isinstance(value, dict):
            raise ValidationFailed(f"kwargs must be an object, got {type(value).__name__}")
    elif name == "priority":
        # Only null means "the default": 0, false or "" are mistakes, not a way to say it.
        value = "default" if value is None else value
        if not isinstance(value, str) or value not in QUEUE_NAMES:
            raise ValidationFailed(f"priority must be one of {list(QUEUE_NAMES)}, got {repr(value)[:40]}")
    elif name == "timeout":
        value = _int_option(name, value, settings().default_job_timeout, 1, MAX_TIMEOUT)
    elif name == "max_retries":
        value = _int_option(name, value, settings().default_max_retries, 0, MAX_RETRIES)
    else:
        raise ValueError(f"{name} is not a call option")
    return value


def _int_option(name: str, value: object, default: int, low: int, high: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValidationFailed(
            f"{name} must be an integer from {low} to {high}, got {str(value)[:40]}",
            details={"field": name, "minimum": low, "maximum": high},
        )
    return value


def _idempotency_key(from_body: object, from_header: str | None) -> str | None:
    if from_body is not None and from_header is not None and from_body != from_header:
        raise ValidationFailed("idempotency_key and the Idempotency-Key header differ")
    key = from_body if from_body is not None else from_header
    if key is None:
        return None
    if not isinstance(key, str) or not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY:
        raise ValidationFailed(
            f"idempotency_key must be a string of 1 to {MAX_IDEMPOTENCY_KEY} characters, got {key!r}"
        )
    return key


_ASCII_INT = re.compile(r"-?[0-9]+")


def query_int(name: str, default: int, low: int, high: int) -> int:
    """An integer query parameter within [low, high]."""
    raw = request.args.get(name)
    if raw is None:
        return default
    # int() also takes "1_0", " 10" and full-width digits ("１０"): only ASCII digits are a number here.
    if not _ASCII_INT.fullmatch(raw):
        raise ValidationFailed(f"{name} must be an integer written in ASCII digits, got {raw[:40]!r}")
    value = int(raw) if len(raw) <= 18 else high + 1
    if not low <= value <= high:
        raise ValidationFailed(f"{name} must be from {low} to {high}, got {raw[:40]}")
    return value


def query_fields(what: str, allowed: tuple[str, ...], heavy: tuple[str, ...]) -> frozenset[str]:
    """The heavy fields that ``?fields=`` asks a list to include (any field of ``what`` may be
    named; the others are always shown).

    Raises:
        ValidationFailed: a name that is no field of ``what``.
    """
    raw = request.args.get("fields")
    # Exactly the documented form: names joined by commas, no blanks or empty names.
    names = set(raw.split(",")) if raw is not None else set()
    unknown = sorted(names - set(allowed))
    if unknown:
        raise ValidationFailed(
            f"fields names no {what} field {unknown[0]!r}; list the fields to include, like fields={','.join(heavy)}",
            details={"allowed": list(allowed)},
        )
    return frozenset(names & set(heavy))
