"""Host name lookups that hold their caller no longer than it asks: getaddrinfo on a bounded pool.

``socket.getaddrinfo`` blocks and nothing interrupts it: a name whose DNS servers answer slowly
(or never) holds the calling thread for as long as the system's resolver keeps trying (with
resolv.conf's defaults, 5 s a try, several tries and servers). A tenant who names such hosts in
webhook URLs could so hold every API request thread, or every webhook delivery thread.

So each lookup runs on a thread of its own and the caller waits for it at most its ``timeout``
(``LookupTimeout`` then; the lookup finishes in the background). Those threads are bounded:
when ``threads`` lookups are already running, another one is refused at once (``ResolverBusy``)
rather than queued, so slow names can pile up neither threads nor waiting callers. Callers that
look up a name whose lookup is already running share it (one thread, however many callers),
and an answer is kept ``cache_seconds``, so that a lookup that answered after its caller gave
up serves the caller's retry. The cache holds answers only; whoever uses one still checks every
address in it and connects to the address it checked (see backend/webhooks/ssrf.py).

One pool serves every tenant, and a lookup whose caller gave up still holds its thread; so a
caller names its ``owner`` and one owner may hold at most ``per_owner`` threads (a quarter of
the pool unless given), counted from the lookup's start until the lookup itself ends, not until
its caller left. An owner at its share is refused (``OwnerLookupsBusy``) while other owners'
lookups still start: one tenant's slow DNS cannot take the whole pool.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

Lookup = Callable[..., list]


class LookupTimeout(Exception):
    """The lookup did not answer within the caller's timeout (it goes on in the background)."""


class ResolverBusy(Exception):
    """Every lookup thread is busy; nothing was started."""


class OwnerLookupsBusy(ResolverBusy):
    """The caller's owner already holds its share of lookup threads; nothing was started."""

    def __init__(self, message: str, share: int):
        super().__init__(message)
        self.share = share


class BoundedResolver:
    """``getaddrinfo`` for TCP, waited on at most ``timeout`` seconds, on at most ``threads`` threads,
    at most ``per_owner`` of them (default ``max(1, threads // 4)``) for one owner's lookups."""

    def __init__(
        self,
        threads: int = 8,
        *,
        per_owner: int | None = None,
        cache_seconds: float = 10.0,
        cache_size: int = 1024,
        lookup: Lookup | None = None,
    ):
        self.threads = max(1, threads)
        self.per_owner = max(1, self.threads // 4 if per_owner is None else per_owner)
        self.cache_seconds = cache_seconds
        self.cache_size = max(1, cache_size)
        self.lookup = lookup  # None: socket.getaddrinfo, looked up at each call
        self._slots = threading.BoundedSemaphore(self.threads)
        self._lock = threading.Lock()
        self._running: dict[tuple, Future] = {}
        self._cache: dict[tuple, tuple[float, list]] = {}  # key -> (expires, answer), oldest first
        self._started_by: dict[tuple, str] = {}  # running key -> the owner whose share it counts in
        self._held: dict[str, int] = {}  # owner -> lookups of theirs still running

    def held(self, owner: str) -> int:
        """How many lookup threads ``owner``'s lookups hold now (callers gone or not)."""
        with self._lock:
            return self._held.get(owner, 0)

    def getaddrinfo(
        self, host: str, port: int, *, timeout: float, lookup: Lookup | None = None, owner: str | None = None
    ) -> list:
        """The addresses of ``host`` as ``socket.getaddrinfo`` gives them (TCP only).

        ``lookup`` replaces ``socket.getaddrinfo`` (tests give slow or changing resolvers);
        answers are cached per lookup function, so one never serves another's answers.
        ``owner`` (None: no share applies) is whose share a lookup started here counts in;
        joining a lookup already running or a cached answer costs no share.

        Raises:
            LookupTimeout: no answer within ``timeout`` seconds.
            OwnerLookupsBusy: ``owner``'s lookups already hold ``per_owner`` threads.
            ResolverBusy: every lookup thread is busy with other names.
            OSError: the lookup failed (``socket.gaierror`` for a name that does not resolve).
        """
        key = (lookup or self.lookup or socket.getaddrinfo, host, port)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None and cached[0] > time.monotonic():
                return list(cached[1])
            future = self._running.get(key)
            start = future is None
            if start:
                if owner is not None and self._held.get(owner, 0) >= self.per_owner:
                    raise OwnerLookupsBusy(
                        f"{self.per_owner} host name lookups of this owner are still running", self.per_owner
                    )
                if not self._slots.acquire(blocking=False):
                    raise ResolverBusy(f"all {self.threads} host name lookup threads are busy")
                future = Future()
                self._running[key] = future
                if owner is not None:
                    self._started_by[key] = owner
                    self._held[owner] = self._held.get(owner, 0) + 1
        if start:
            self._start(key, future)
        try:
            return list(future.result(timeout=max(0.0, timeout)))
        except TimeoutError:  # concurrent.futures' TimeoutError (the builtin since 3.11)
            if future.done() and future.exception() is not None:
                raise future.exception() from None  # the lookup itself timed out: an answer
            raise LookupTimeout(f"no answer within {timeout:.3g} s") from None

    def _start(self, key: tuple, future: Future) -> None:
        try:
            threading.Thread(target=self._run, args=(key, future), name="dns-lookup", daemon=True).start()
        except BaseException:  # no thread could be started: give the slot back
            self._finish(key)
            raise

    def _run(self, key: tuple, future: Future) -> None:
        lookup, host, port = key
        try:
            answer = list(lookup(host, port, proto=socket.IPPROTO_TCP))
        except Exception as exc:
            self._finish(key)
            future.set_exception(exc)
            return
        self._finish(key, answer)
        future.set_result(answer)

    def _finish(self, key: tuple, answer: list | None = None) -> None:
        """The lookup of ``key`` is over: cache its answer, free its thread slot."""
        with self._lock:
            if answer is not None and self.cache_seconds > 0:
                self._cache.pop(key, None)
                self._cache[key] = (time.monotonic() + self.cache_seconds, answer)
                self._prune()
            self._running.pop(key, None)
            owner = self._started_by.pop(key, None)
            if owner is not None:  # the lookup itself ended: its owner's share gets the thread back
                if self._held[owner] <= 1:
                    del self._held[owner]
                else:
                    self._held[owner] -= 1
        self._slots.release()

    def _prune(self) -> None:
        now = time.monotonic()
        for key in [key for key, (expires, _) in self._cache.items() if expires <= now]:
            del self._cache[key]
        while len(self._cache) > self.cache_size:
            del self._cache[next(iter(self._cache))]
