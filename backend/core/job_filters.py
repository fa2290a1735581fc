"""The search filters of ``GET /jobs`` and of the bulk actions (``POST /jobs/cancel``, ``/jobs/retry``).

One value, ``JobFilter``, travels from the API (which parses and checks it) through the service
to the store (which turns it into a query answered from indexes). What a job's keyword argument
looks like in the search index (``kwarg_text``) is decided here too, so that the submission
path that writes the index and the filter that reads it can never disagree.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, fields
from datetime import datetime

#: ``kwargs.<name>=<value>`` filters one request may hold.
MAX_KWARG_FILTERS = 5
#: Keyword arguments of one job written to the search index (the rest are not searchable).
MAX_INDEXED_KWARGS = 20
KWARG_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,99}$"
KWARG_NAME = re.compile(KWARG_NAME_PATTERN)
#: Longest kwarg value indexed and filtered on (characters).
MAX_KWARG_VALUE = 200
#: ``q``: a substring of the task name, the error or the progress message; the trigram
#: indexes need three characters to narrow anything down.
MIN_Q, MAX_Q = 3, 200


def kwarg_text(value: object) -> str | None:
    """How a top-level keyword argument is indexed: a string as itself, a number, bool or null as
    its JSON text (so ``kwargs.document_id=7`` finds 7 and "7"); None for what is not indexed (a
    list, an object, a text over ``MAX_KWARG_VALUE`` characters or holding a NUL)."""
    if isinstance(value, str):
        text = value
    elif value is None or isinstance(value, bool | int | float):
        text = json.dumps(value)
    else:
        return None
    if len(text) > MAX_KWARG_VALUE or "\x00" in text:
        return None
    return text


def indexed_kwargs(kwargs: dict | None) -> list[tuple[str, str]]:
    """The (name, text) pairs of a job's kwargs the search index holds: at most ``MAX_INDEXED_KWARGS``."""
    if not kwargs:
        return []
    out = []
    for name, value in kwargs.items():
        if not isinstance(name, str) or not KWARG_NAME.fullmatch(name):
            continue
        text = kwarg_text(value)
        if text is not None:
            out.append((name, text))
            if len(out) == MAX_INDEXED_KWARGS:
                break
    return out


@dataclass(frozen=True)
class JobFilter:
    """What a listing or a bulk action is narrowed to; every field optional, all combined (AND).

    ``owner`` is the owner the jobs must have: a tenant's own scope, or an admin's filter.
    """

    owner: str | None = None
    task: str | None = None
    status: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    kwargs: tuple[tuple[str, str], ...] = ()
    q: str | None = None
    batch_id: str | None = None
    schedule_id: str | None = None

    def digest(self) -> str:
        """Eight hex digits naming the filter: a page cursor carries them, so that a cursor is only
        taken back with the filters it was given out for. Empty for no filter (plain cursors)."""
        parts = [(f.name, getattr(self, f.name)) for f in fields(self)]
        shown = [(name, value.isoformat() if isinstance(value, datetime) else value) for name, value in parts]
        if all(value in (None, ()) for _, value in shown):
            return ""
        return hashlib.sha256(json.dumps(shown).encode()).hexdigest()[:8]
