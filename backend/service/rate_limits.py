"""Rate limits per key set at run time (``PUT /rate-limits/<key>``), and the overview of
``GET /rate-limits``. Not the API's submission limiter (backend/api/rate_limits.py).

An override is recorded in the store first (the record every restart keeps), then the hash in Redis
that the limiter's script reads at each admission is written from the store as it stands after that
commit (so of two commands racing, the one committed last is what both hold); clearing likewise. A Redis
that did not answer the second step gets it from the reconciler's next pass (``sync``), which makes
the hash hold exactly what the store records. An override wins over the limit a task declares
(``@task(..., rate_limit=..., rate_key=...)``) for every job of that key.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from backend.broker import limit_overrides as broker_overrides
from backend.broker.errors import BrokerError
from backend.core.errors import ServiceUnavailable, ValidationFailed
from backend.core.rate_spec import parse_rate
from backend.store import rate_limit_overrides as store_overrides
from backend.store.jobs import Sessions
from backend.tasks.registry import all_tasks

if TYPE_CHECKING:  # the type only, as the broker names it (it alone imports redis)
    from backend.broker.connection import Redis

log = logging.getLogger(__name__)
#: Tries of a command's write of Redis's hash; each lost try means a newer writer's write landed.
MIRROR_ATTEMPTS = 5

#: The longest key (the same cap as a key a task's argument names, backend/tasks/registry.py).
MAX_KEY = 200
#: A key: no control characters, not beginning with "/" nor holding "//" (no URL path carries
#: them: servers and proxies merge slashes, and Werkzeug answered them with a redirect to ANOTHER
#: key); written without lookarounds, so ECMA, Python and schemathesis read it alike.
KEY_PATTERN = "^[^/\\u0000-\\u001f\\u007f]+(/[^/\\u0000-\\u001f\\u007f]+)*/?$"
_CONTROL = re.compile("[\\u0000-\\u001f\\u007f]")
#: A limit as an operator writes it, exactly what parse_rate takes in range: count 1..1,000,000,
#: a named window or 1..86,400 seconds; lower case, no spaces, no leading zeros (/openapi.json
#: shows the same pattern, so a request the document calls valid is never refused).
LIMIT_PATTERN = (
    "^([1-9][0-9]{0,5}|1000000)/(second|minute|hour|day|"
    "([1-9][0-9]{0,3}|[1-7][0-9]{4}|8[0-5][0-9]{3}|86[0-3][0-9]{2}|86400)s)$"
)
_KEY, _LIMIT = re.compile(KEY_PATTERN), re.compile(LIMIT_PATTERN)


@dataclass(frozen=True)
class OverrideOutcome:
    """What a PUT or DELETE did: the key's override after it (None: none), the one before, and
    whether this call changed it."""

    key: str
    limit: str | None
    previous: str | None
    set_by: str | None = None
    set_at: datetime | None = None

    @property
    def changed(self) -> bool:
        return self.limit != self.previous


def check_key(key: str) -> str:
    """``key`` when it may name a rate limit, else ValidationFailed (422)."""
    if not key or len(key) > MAX_KEY:
        raise ValidationFailed(f"a rate limit's key is 1 to {MAX_KEY} characters, got {len(key)}")
    if _CONTROL.search(key):
        raise ValidationFailed("a rate limit's key holds no control characters")
    if not _KEY.fullmatch(key):
        raise ValidationFailed(
            'a rate limit\'s key does not begin with "/" nor hold "//" (no URL path carries it intact)'
        )
    return key


def check_limit(limit: object) -> str:
    """The canonical limit text when ``parse_rate`` takes it, else ValidationFailed (422) saying why."""
    if not isinstance(limit, str):
        raise ValidationFailed('"limit" is a string such as "100/minute" or "10/5s"')
    try:
        rate = parse_rate(limit)
    except ValueError as exc:
        raise ValidationFailed(f'"limit": {exc}') from None
    if not _LIMIT.fullmatch(limit):
        raise ValidationFailed(f'"limit": write it as {rate.text!r} (lower case, no spaces or leading zeros)')
    # Stored as the canonical text ("10/60s" -> "10/minute"), the form the limiter reads.
    return rate.text


class RateLimits:
    """The override commands over the store's record and Redis's mirror."""

    def __init__(self, sessions: Sessions, redis: Redis):
        self.sessions = sessions
        self.redis = redis

    def set(self, key: str, limit: object, *, by: str) -> OverrideOutcome:
        """Set ``key``'s limit (setting the same again changes nothing but its time and author).

        Raises:
            ValidationFailed: the key or the limit is not one.
            ServiceUnavailable: recorded, but Redis did not take it (the next pass puts it there).
        """
        check_key(key)
        text = check_limit(limit)
        recorded, previous = store_overrides.set_limit(self.sessions, key, text, by)
        self._mirror(key, f"set to {text}")
        return OverrideOutcome(key, recorded.limit, previous, recorded.set_by, recorded.set_at)

    def clear(self, key: str) -> OverrideOutcome:
        """Remove ``key``'s override (idempotent); its jobs go back to their task's limit."""
        check_key(key)
        previous = store_overrides.clear(self.sessions, key)
        self._mirror(key, "cleared")
        return OverrideOutcome(key, None, previous)

    def _mirror(self, key: str, what: str) -> None:
        """Write Redis's hash from the store as it stands after this command's commit (and wake
        ``key``'s held jobs); a writer that raced this one and read the store later wins instead."""
        recorded = lambda: {name: row.limit for name, row in self.overrides().items()}  # noqa: E731
        try:
            for _ in range(MIRROR_ATTEMPTS):
                if broker_overrides.replace(self.redis, recorded, force=True, wake=key) is not None:
                    return
        except BrokerError as exc:
            raise ServiceUnavailable(
                f"the rate limit of key {key!r} is {what} in the store, but Redis did not answer ({exc}); "
                "workers obey it once Redis is back (the reconciler's next pass writes it), or send this request again"
            ) from None
        # Only under a storm of commands: every attempt lost to a newer writer, whose write stands.
        log.warning(
            "rate limit of key %r %s: Redis's copy left to the writers that raced it and the next pass", key, what
        )

    def overrides(self) -> dict[str, store_overrides.Override]:
        """The recorded overrides, by key."""
        return store_overrides.overrides(self.sessions)

    def sync(self) -> bool | None:
        """Make Redis's hash hold what the store records (the reconciler's pass calls this): True
        when it changed the hash, False when it held that, None when a PUT or DELETE raced it (left
        for the next pass). Raises BrokerError / StoreUnavailable as they come."""
        changed = broker_overrides.replace(
            self.redis, lambda: {key: row.limit for key, row in self.overrides().items()}
        )
        if changed:
            log.warning("rate limit overrides in Redis differed from the store's record; put back from the store")
        return changed

    def overview(self) -> dict:
        """``GET /rate-limits``: the limits tasks declare, the overrides, and the keys holding jobs.

        Raises:
            ServiceUnavailable: Redis does not answer (held jobs live there).
        """
        overrides = self.overrides()
        try:
            held = broker_overrides.held_keys(self.redis)
        except BrokerError as exc:
            raise ServiceUnavailable(f"Redis unreachable: {exc}") from None
        now = time.time()
        declared = [
            {"task": spec.name, "rate_limit": spec.rate_limit, "rate_key": spec.rate_key}
            for spec in all_tasks()
            if getattr(spec, "rate_limit", None)
        ]
        return {
            "tasks": sorted(declared, key=lambda entry: entry["task"]),
            "overrides": [
                {"key": row.key, "limit": row.limit, "set_by": row.set_by, "set_at": row.set_at}
                for row in overrides.values()
            ],
            "held": [
                {
                    "key": entry.key,
                    "held": entry.held,
                    "limit": entry.limit,
                    # Never before now: a key an override woke is due at 0 until a worker's release.
                    "next_slot_at": datetime.fromtimestamp(max(entry.next_slot_at, now), UTC),
                }
                for entry in held
            ],
        }
