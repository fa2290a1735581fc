"""Retry policy: exponential backoff of base, 2 x base, 4 x base ... capped, with jitter."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import timedelta


@dataclass(frozen=True)
class RetryPolicy:
    base_seconds: float = 120.0
    cap_seconds: float = 1800.0
    jitter: float = 0.1

    def delay(self, retry_number: int) -> timedelta:
        """The wait before retry ``retry_number`` (1 for the first retry)."""
        seconds = min(self.cap_seconds, self.base_seconds * 2 ** (retry_number - 1))
        if self.jitter:
            seconds *= 1 + random.uniform(-self.jitter, self.jitter)
        return timedelta(seconds=max(0.0, seconds))
