"""Webhooks, the dispatcher: sends the outbox's deliveries and retries them, off the workers' path.

When a job with a ``webhook_url`` ends (COMPLETED, FAILED or CANCELLED), the same store
transaction adds a delivery row holding the job as JSON. The dispatcher (a thread in the API)
POSTs it, signed the Standard Webhooks way, within one deadline for the whole exchange
(``WEBHOOK_TIMEOUT``), reading only the status line back, to the address the SSRF guard checked,
never following redirects, up to ``WEBHOOK_MAX_ATTEMPTS`` times with backoff, and records every
attempt. Deliveries run concurrently (``WEBHOOK_CONCURRENCY``), a few per receiver host and per
owner at most, so one slow receiver does not hold up the others.

Verifying a delivery (the receiver's side)::

    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + raw_body
    expected = base64.b64encode(hmac.new(secret, signed, hashlib.sha256).digest()).decode()
    assert hmac.compare_digest(headers["webhook-signature"], f"v1,{expected}")
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import ssl
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

from backend.core.errors import ValidationFailed
from backend.core.instruments import WEBHOOK_DELIVERIES
from backend.service.webhook_outbox import job_deliveries
from backend.store import deliveries as delivery_rows
from backend.store.errors import is_unavailable
from backend.store.jobs import Sessions
from backend.webhooks import http_post as webhook_http
from backend.webhooks.resolver import BoundedResolver
from backend.webhooks.ssrf import LookupBudget, LookupNotAnswered, LookupsBusy, resolve_webhook_url

__all__ = ["Dispatcher", "secret_bytes", "sign"]

log = logging.getLogger(__name__)

#: A claim outlasts the delivery's deadline by this much: time to record the attempt.
CLAIM_MARGIN_SECONDS = 60
#: Due deliveries are read in pages of PAGE_SIZE, at most SCAN_LIMIT rows a pass.
PAGE_SIZE = 100
SCAN_LIMIT = 1000
#: An unexpected error is recorded with its attempt, cut to this many characters.
MAX_ERROR_CHARS = 500
#: A delivery that found no free lookup thread (or its owner's share of them full) is tried
#: again this much later (at most; WEBHOOK_BACKOFF_SECONDS when shorter), not counted as an attempt.
LOOKUPS_BUSY_DELAY_SECONDS = 2.0
#: Recording an attempt that ran met the store down or busy: tried again after each of these
#: delays (while the claim holds), so that a blip does not turn a sent delivery into a failed one.
RECORD_RETRY_DELAYS = (0.2, 0.5, 1.0, 2.0, 4.0)


def secret_bytes(secret: str) -> bytes:
    """Standard Webhooks secrets look like ``whsec_<base64>``; anything else is used as is."""
    if secret.startswith("whsec_"):
        return base64.b64decode(secret.removeprefix("whsec_"))
    return secret.encode()


def sign(secret: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for one message."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(secret, signed, hashlib.sha256).digest()).decode()


def _ms_since(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


class Dispatcher:
    """Sends due deliveries; safe to run in any number of API processes on any hosts (rows are claimed).

    Deliveries run on a pool of ``concurrency`` threads. So that one slow or hostile receiver
    cannot hold every thread (and with them other owners' deliveries), at most ``per_host``
    deliveries to one host name and ``per_owner`` of one job owner are in flight at once; the
    rest wait for a later pass. The hosts and owners at their cap are left out of the query
    itself, so a backlog of thousands on one of them cannot fill a pass's scan. Each delivery
    ends within ``timeout`` seconds (see backend/webhooks/http_post.py), and its claim lasts
    ``timeout + CLAIM_MARGIN_SECONDS`` of the database's time, so a claim never lapses while its
    delivery runs, whatever this host's clock says. A pass claims what it starts a page at a
    time (``backend.store.deliveries.claim_due``); each claim is a random token that every later
    write names: a dispatcher whose claim was taken over records nothing. Every attempt that ran
    is recorded, an unexpected error too, so ``max_attempts`` ends every delivery; the store
    being unavailable is no attempt (the claim lapses, it is sent again: at least once).
    """

    def __init__(
        self,
        sessions: Sessions,
        *,
        secret: str | None,
        allow_loopback: bool,
        max_attempts: int = 3,
        backoff_seconds: float = 10.0,
        timeout: float = 10.0,
        concurrency: int = 8,
        per_host: int = 2,
        per_owner: int = 4,
        resolve=None,
        ssl_context: ssl.SSLContext | None = None,
    ):
        self.sessions = sessions
        self.secret = secret_bytes(secret) if secret else None
        self.allow_loopback = allow_loopback
        self.max_attempts = max_attempts
        self.backoff_seconds = backoff_seconds
        self.timeout = timeout
        self.concurrency = max(1, concurrency)
        self.per_host = max(1, per_host)
        self.per_owner = max(1, per_owner)
        self.resolve = resolve  # None: socket.getaddrinfo (tests give one that rebinds)
        # Lookups run here, each waited on for what is left of its delivery's deadline. A
        # lookup that outlives its delivery keeps its thread until the system resolver gives
        # up, so there are more threads than deliveries, and one owner's lookups hold at most a
        # quarter of them (until they end), so one tenant's slow DNS leaves room for the
        # others. When none is free for a delivery it is put off briefly, not counted as an
        # attempt: the receiver was never tried.
        self.resolver = BoundedResolver(threads=2 * self.concurrency)
        self.ssl_context = ssl_context  # None: the system's trust store
        self._pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="webhook")
        self._pass = threading.Lock()
        self._lock = threading.Condition()
        self._in_flight: dict[str, tuple[str, str]] = {}  # delivery id -> (host, owner)
        self._closed = False
        self._stopping = threading.Event()  # cuts short the waits between tries at recording
        self.record_retry_delays = RECORD_RETRY_DELAYS

    @property
    def claim_seconds(self) -> float:
        return self.timeout + CLAIM_MARGIN_SECONDS

    def run_once(self) -> int:
        """Start every due delivery there is room for; returns how many were started.

        Deliveries run in the background; ``wait_idle`` waits for them.
        """
        # One pass at a time (the periodic thread, an operator's call): the room checks below
        # and the claims that follow them must not interleave with another pass's.
        with self._pass:
            if self._closed:
                return 0
            return self._start_due()

    def close(self, wait: bool = True) -> None:
        """Start no more deliveries and shut the delivery pool down.

        Deliveries already running end within ``timeout`` (and are recorded); with ``wait``
        this returns once they have. Called when the API stops its dispatcher
        (``backend.app.stop_webhooks``: at process exit, and by the tests' app teardown).
        """
        with self._pass:  # a pass under way finishes starting what it claimed
            self._closed = True
        self._stopping.set()
        self._pool.shutdown(wait=wait, cancel_futures=True)

    def _start_due(self) -> int:
        started, scanned, after = 0, 0, None
        # A delivery sent in this pass that failed fast is due again at once (no backoff) and
        # sorts after the cursor: one pass sends a delivery at most once.
        sent: set[str] = set()

        def pick(page: list[delivery_rows.DueRow]) -> list[str]:
            return self._pick([row for row in page if row[0] not in sent])

        while self._free_slots() and scanned < SCAN_LIMIT:
            full_hosts, full_owners = self._full()
            page, claimed, token = delivery_rows.claim_due(
                self.sessions,
                after=after,
                full_hosts=full_hosts,
                full_owners=full_owners,
                limit=PAGE_SIZE,
                claim_seconds=self.claim_seconds,
                pick=pick,
            )
            if not page:
                break
            scanned += len(page)
            last_id, _, _, last_due = page[-1]
            after = (last_due, last_id)
            for index, (delivery_id, host, owner, _) in enumerate(claimed):
                sent.add(delivery_id)
                if not self._start(delivery_id, token, host, owner):
                    # Shut down: the rest are given back too, so that another dispatcher sends them now.
                    for rest, *_ in claimed[index + 1 :]:
                        delivery_rows.release(self.sessions, rest, token)
                    return started
                started += 1
        return started

    def _pick(self, page: list[delivery_rows.DueRow]) -> list[str]:
        """The deliveries of ``page`` to claim: in order, as many as there are free slots, none
        past its host's or its owner's cap (counting those in flight and those picked before it)."""
        with self._lock:
            busy = list(self._in_flight.values())
        hosts = Counter(host for host, _ in busy)
        owners = Counter(owner for _, owner in busy)
        room = self.concurrency - len(busy)
        picked: list[str] = []
        for delivery_id, host, owner, _ in page:
            if len(picked) >= room:
                break
            # Its host or owner is full: passed over here; the next page leaves it out in SQL.
            if hosts[host] >= self.per_host or owners[owner] >= self.per_owner:
                continue
            hosts[host] += 1
            owners[owner] += 1
            picked.append(delivery_id)
        return picked

    def _start(self, delivery_id: str, token: str, host: str, owner: str) -> bool:
        """Run a claimed delivery on the pool; False (and the claim given back) once it is shut down."""
        with self._lock:
            self._in_flight[delivery_id] = (host, owner)
        try:
            self._pool.submit(self._run, delivery_id, token, owner)
        except RuntimeError:  # the pool was shut down (close(), interpreter exit)
            with self._lock:
                self._in_flight.pop(delivery_id, None)
                self._lock.notify_all()
            # Given back, so that another dispatcher sends it now.
            delivery_rows.release(self.sessions, delivery_id, token)
            return False
        return True

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Wait until no delivery of this dispatcher is in flight; False if some still are."""
        with self._lock:
            return self._lock.wait_for(lambda: not self._in_flight, timeout)

    def in_flight(self) -> int:
        with self._lock:
            return len(self._in_flight)

    def _free_slots(self) -> int:
        with self._lock:
            return self.concurrency - len(self._in_flight)

    def _full(self) -> tuple[set[str], set[str]]:
        """The hosts and the owners that are at their cap of deliveries in flight."""
        with self._lock:
            busy = list(self._in_flight.values())
        hosts = [host for host, _ in busy]
        owners = [owner for _, owner in busy]
        return (
            {host for host in hosts if hosts.count(host) >= self.per_host},
            {owner for owner in owners if owners.count(owner) >= self.per_owner},
        )

    def _run(self, delivery_id: str, token: str, owner: str | None = None) -> None:
        # The deadline starts now, before the name is resolved: the whole send ends within
        # ``timeout`` of here, well before the claim (timeout + margin from the claim) lapses.
        started = time.monotonic()
        try:
            self._attempt(delivery_id, token, started, owner)
        except Exception as exc:
            if is_unavailable(exc):  # our store, before anything was sent: not an attempt
                log.warning("webhook %s: not attempted (its claim lapses), store unavailable: %s", delivery_id, exc)
                return
            # A fault on this side (a bug), not the receiver's answer. It is recorded
            # as a failed attempt like any other, so that WEBHOOK_MAX_ATTEMPTS ends it: letting
            # the claim lapse recorded nothing, and the delivery was tried again forever.
            log.exception("webhook %s: the attempt failed to run", delivery_id)
            error = f"{exc.__class__.__name__}: {exc}"[:MAX_ERROR_CHARS]
            try:
                self._record(delivery_id, token, None, error, _ms_since(started))
            except Exception:
                log.exception("webhook %s: the failed attempt was not recorded; its claim lapses", delivery_id)
        finally:
            with self._lock:
                self._in_flight.pop(delivery_id, None)
                self._lock.notify_all()

    def _attempt(self, delivery_id: str, token: str, started: float, owner: str | None = None) -> None:
        delivery = delivery_rows.get_delivery(self.sessions, delivery_id)
        if delivery is None:
            return  # its job was deleted (the delivery with it) since it was claimed
        body = json.dumps(delivery.payload, separators=(",", ":")).encode()
        timestamp = int(time.time())
        headers = {"content-type": "application/json", "webhook-id": delivery.id, "webhook-timestamp": str(timestamp)}
        if self.secret is not None:
            headers["webhook-signature"] = sign(self.secret, delivery.id, timestamp, body)
        status_code, error, refused = None, None, False
        try:
            # Resolved once and checked here, within the delivery's deadline (the lookup waits
            # only for what is left of it); the POST connects to these checked addresses.
            budget = LookupBudget(
                self.timeout, started=started, resolver=self.resolver, setting="WEBHOOK_TIMEOUT", owner=owner
            )
            try:
                target = resolve_webhook_url(
                    delivery.url, allow_loopback=self.allow_loopback, resolve=self.resolve, budget=budget
                )
            except LookupsBusy as exc:
                # Nothing was tried (no lookup started, no connection): not an attempt. Counting
                # it let one owner's slow DNS use up other owners' WEBHOOK_MAX_ATTEMPTS.
                self._put_off(delivery_id, token, exc.message)
                return
            status_code = webhook_http.post(
                target, body, headers, timeout=self.timeout, ssl_context=self.ssl_context, started=started
            )
            if not 200 <= status_code < 300:
                error = f"HTTP {status_code}"
        except LookupNotAnswered as exc:
            # No answer this time (slow or failing DNS): not a refusal, the attempt failed and
            # is tried again.
            error = exc.message
        except ValidationFailed as exc:
            error, refused = f"refused: {exc.message}", True
        except webhook_http.DeliveryError as exc:
            error = str(exc)
        self._record_ran(delivery_id, token, status_code, error, started, refused=refused)

    def _record_ran(
        self, delivery_id: str, token: str, status_code: int | None, error: str | None, started: float, *, refused: bool
    ) -> None:
        """Record an attempt that ran, trying again while the store is unavailable and the claim holds.

        The receiver has had the delivery: a store error here is ours, and recording it as a
        failed attempt sent the delivery again (or failed it for good at WEBHOOK_MAX_ATTEMPTS).
        If the store stays down the delivery stays claimed: its claim lapses and another
        dispatcher sends it again (at least once; receivers de-duplicate on ``webhook-id``).
        """
        duration_ms = _ms_since(started)
        delays = iter(self.record_retry_delays)
        while True:
            try:
                self._record(delivery_id, token, status_code, error, duration_ms, refused=refused)
                return
            except Exception as exc:
                if not is_unavailable(exc):
                    raise
                delay = next(delays, None)
                # Past the claim another dispatcher may send it again; a late record would still
                # be safe (it names the token), but then it no longer saves a second send.
                if delay is None or time.monotonic() - started + delay >= self.claim_seconds:
                    log.warning(
                        "webhook %s: attempt (%s) not recorded, the store is unavailable (%s);"
                        " left claimed, it is sent again when the claim lapses",
                        delivery_id,
                        error or status_code,
                        exc.__class__.__name__,
                    )
                    WEBHOOK_DELIVERIES.labels("unrecorded").inc()
                    return
                log.info("webhook %s: recording the attempt again in %.3g s: %s", delivery_id, delay, exc)
                if self._stopping.wait(delay):
                    delays = iter(())  # shutting down: one more try, no more waits

    def _put_off(self, delivery_id: str, token: str, reason: str) -> None:
        """Give back the claim with the delivery due again shortly; its attempts stay as they are."""
        delay = min(LOOKUPS_BUSY_DELAY_SECONDS, self.backoff_seconds)
        delivery_rows.release(self.sessions, delivery_id, token, delay_seconds=delay)
        WEBHOOK_DELIVERIES.labels("put_off").inc()
        log.info("webhook %s: put off %.3g s, not attempted: %s", delivery_id, delay, reason)

    def _record(
        self,
        delivery_id: str,
        token: str,
        status_code: int | None,
        error: str | None,
        duration_ms: int,
        *,
        refused: bool = False,
    ) -> None:
        def outcome(attempts: int, now: datetime) -> dict:
            # ``now`` is the database's: the next attempt is due by the clock every host reads.
            if error is None:
                return {"status": "delivered", "delivered_at": now}
            if refused or attempts >= self.max_attempts:
                return {"status": "failed"}
            return {"next_attempt_at": now + timedelta(seconds=self.backoff_seconds * 2 ** (attempts - 1))}

        recorded = delivery_rows.record_attempt(
            self.sessions,
            delivery_id,
            token,
            status_code=status_code,
            error=error,
            duration_ms=duration_ms,
            outcome=outcome,
        )
        if recorded is None:
            log.warning(
                "webhook %s: an attempt (%s) was not recorded: its claim was taken over",
                delivery_id,
                error or status_code,
            )
            WEBHOOK_DELIVERIES.labels("claim_lost").inc()
            return
        job_id, attempts, values = recorded
        WEBHOOK_DELIVERIES.labels(values.get("status", "retry")).inc()
        log.info("job %s: webhook %s attempt %s: %s", job_id, delivery_id, attempts, error or status_code)

    def deliveries(self, job_id: str) -> list[dict]:
        """Every delivery of a job with its attempts (``GET /jobs/<id>/webhooks``)."""
        return job_deliveries(self.sessions, job_id)
