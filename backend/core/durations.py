"""Durations as operators write them ("30d", "12h", "15m", "90s"; "0" for none).

Used by the RETENTION_* settings and `python -m backend prune --older-than`: one parser, so a
value the command line takes is a value the settings take, and the reverse.
"""

from __future__ import annotations

import re

_UNITS = {"d": 86_400, "h": 3_600, "m": 60, "s": 1}
_DURATION = re.compile(r"([0-9]{1,9})([dhms])")
#: The longest duration taken (100 years): past it a datetime subtraction would overflow.
MAX_SECONDS = 100 * 365 * 86_400


def parse_duration(text: str) -> float | None:
    """Seconds in ``text`` ("<n>d", "<n>h", "<n>m" or "<n>s"); None for "0" (no limit: keep for ever).

    Raises:
        ValueError: ``text`` is not one of those forms, or is longer than 100 years.
    """
    value = text.strip().lower() if isinstance(text, str) else None
    if value is None:
        raise ValueError(f"a duration must be text like '30d', got {text!r}")
    if value == "0":
        return None
    match = _DURATION.fullmatch(value)
    if match is None:
        raise ValueError(f"{text!r} is not a duration: write <n>d, <n>h, <n>m or <n>s (e.g. 30d), or 0 for none")
    seconds = int(match.group(1)) * _UNITS[match.group(2)]
    if seconds == 0:
        return None
    if seconds > MAX_SECONDS:
        raise ValueError(f"{text!r} is longer than 100 years")
    return float(seconds)
