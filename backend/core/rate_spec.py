"""Rate limit texts: ``"60/minute"``, ``"5/second"``, ``"1000/hour"``, ``"10/5s"``.

One parser for every place a limit is written (a task's declaration, an operator's override),
so that the text stored in Redis is always the canonical ``Rate.text`` the limiter's Lua reads
(backend/broker/key_limits.py parses the same grammar).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

#: The named windows, in seconds.
UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
MAX_COUNT = 1_000_000
MAX_WINDOW = 86400
#: Longer texts are refused before the regular expression looks at them.
MAX_TEXT = 40

_PATTERN = re.compile(r"(\d{1,7})/(?:(second|minute|hour|day)|(\d{1,5})s)")


@dataclass(frozen=True)
class Rate:
    """At most ``count`` starts in any ``window_seconds``."""

    count: int
    window_seconds: int

    @property
    def text(self) -> str:
        """The canonical text: a named unit when the window is one, else ``"<count>/<window>s"``."""
        for name, seconds in UNITS.items():
            if seconds == self.window_seconds:
                return f"{self.count}/{name}"
        return f"{self.count}/{self.window_seconds}s"


def parse_rate(text: str) -> Rate:
    """The rate ``text`` names (surrounding spaces and case ignored).

    Raises:
        ValueError: not a text (a list, a number: still ValueError, never TypeError), not
            ``N/second|minute|hour|day`` or ``N/<seconds>s``, or the count is not 1..1,000,000,
            or the window not 1 s..1 day; the message says which.
    """
    if not isinstance(text, str) or len(text) > MAX_TEXT:
        raise ValueError(f"a rate limit is a short text such as '60/minute' or '10/5s', got {text!r:.60}")
    return _parse(text)


@functools.lru_cache(maxsize=256)
def _parse(text: str) -> Rate:
    match = _PATTERN.fullmatch(text.strip().lower())
    if match is None:
        raise ValueError(f"a rate limit reads N/second, N/minute, N/hour, N/day or N/<seconds>s, got {text!r}")
    count = int(match.group(1))
    window = UNITS[match.group(2)] if match.group(2) else int(match.group(3))
    if not 1 <= count <= MAX_COUNT:
        raise ValueError(f"a rate limit's count must be 1..{MAX_COUNT:,}, got {count}")
    if not 1 <= window <= MAX_WINDOW:
        raise ValueError(f"a rate limit's window must be 1 s..1 day ({MAX_WINDOW} s), got {window} s")
    return Rate(count, window)
