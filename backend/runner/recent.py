"""A bounded set of recent members: what the worker remembers of attempts the API refused."""

from __future__ import annotations

import threading

#: Refused attempts remembered; older ones have long ended.
REFUSED_KEPT = 4096


class RecentSet:
    """A set that keeps only its ``size`` most recently added members (thread-safe: the worker,
    the sender thread and the progress timer all add to it)."""

    def __init__(self, size: int = REFUSED_KEPT):
        self.size = size
        self._members: dict = {}
        self._lock = threading.Lock()

    def add(self, member) -> None:
        with self._lock:
            self._members.pop(member, None)
            self._members[member] = None
            if len(self._members) > self.size:
                del self._members[next(iter(self._members))]

    def __contains__(self, member) -> bool:
        return member in self._members

    def __len__(self) -> int:
        return len(self._members)
