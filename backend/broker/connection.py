"""The Redis connection: the one place that opens it.

RQ stores binary job data, so the connection never decodes responses (``decode_responses=True``
crashes workers with UnicodeDecodeError). ``redis://``, ``rediss://`` and ``unix://`` URLs go to
redis-py as they are, ``redis+sentinel://`` ones through its ``Sentinel.master_for``. Layers above
the broker catch the aliases of ``errors.py`` rather than importing redis themselves.

A failover is an outage, not a crash: a server that answers READONLY was a master and is now a
replica, so the connection to it is dropped and the command fails (``BrokerUnreachable``). The
next command connects afresh: to the master Sentinel names now (redis-py's Sentinel connections),
or, behind a managed Redis's DNS name, to where that name points now (``_DropOnReadOnly``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from redis import Redis
from redis.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.exceptions import ReadOnlyError, ResponseError
from redis.sentinel import Sentinel, SentinelManagedConnection

from backend.broker.errors import BrokerUnreachable
from backend.core import redis_target
from backend.core.logs import redact
from backend.core.settings import SettingError

if TYPE_CHECKING:
    from backend.core.settings import Settings

__all__ = ["Redis", "connect", "connect_for", "eviction_policy", "ping", "warn_if_evicting"]

log = logging.getLogger(__name__)

#: How long opening a connection to Redis (or asking a Sentinel) may take, in seconds.
CONNECT_TIMEOUT = 2.0
#: A Sentinel that accepted the connection must answer within this many seconds.
SENTINEL_TIMEOUT = 2.0
#: A process's pool of connections. redis-py 6+ caps it at 100 and refuses the 101st at once
#: (MaxConnectionsError); a threaded process never gets near, but under gevent
#: (backend/gunicorn_streams.py) every stream opening at once is a greenlet that may hold one:
#: 200 streams opened together were refused. Steady streams hold none (the hub reads for all).
MAX_CONNECTIONS = 2000
#: The only eviction policy under which Redis never drops a lease, a fence or a queued job.
SAFE_POLICY = "noeviction"


class _DropOnReadOnly:
    """A connection that is dropped once its server answered READONLY (a demoted master), so that
    the next command connects afresh: to where a managed Redis's DNS name points now.

    The ReadOnlyError itself goes up as it is (``BrokerUnreachable`` holds it): turned into a
    ConnectionError, as redis-py's Sentinel connections do, redis-py would retry it and, inside
    a WATCH, raise WatchError, which the callers' optimistic-locking loops answer by trying at
    once again, for as long as the server stays read-only. Nor is the socket closed at once:
    a MULTI still has answers to read on it; it is closed the next time the pool hands it out.
    """

    _demoted = False

    def read_response(self, *args, **kwargs):
        try:
            return super().read_response(*args, **kwargs)
        except ReadOnlyError:
            self._demoted = True
            raise

    def connect(self, *args, **kwargs):
        if self._demoted:
            self._demoted = False
            self.disconnect()
        return super().connect(*args, **kwargs)


class FailoverConnection(_DropOnReadOnly, Connection):
    """TCP (``redis://``)."""


class FailoverSSLConnection(_DropOnReadOnly, SSLConnection):
    """TLS (``rediss://``)."""


class FailoverUnixConnection(_DropOnReadOnly, UnixDomainSocketConnection):
    """A Unix socket (``unix://``)."""


class FailoverSentinelConnection(SentinelManagedConnection):
    """redis-py's Sentinel connection (``redis+sentinel://``), closed when a read is cut short.

    Plain connections close on any exception while reading a reply; redis-py's Sentinel one does
    not (its ``disconnect_on_error`` defaults to False). RQ stops an idle worker by raising from
    its SIGTERM handler, inside the blocking BLMOVE: the connection went back to the pool with
    that reply pending, and the next command (RQ's register_death) waited for it for ever, so a
    worker on Sentinel never stopped gracefully. Closed, the next command opens a fresh one.
    """

    def read_response(self, *args, disconnect_on_error: bool = True, **kwargs):
        return super().read_response(*args, disconnect_on_error=disconnect_on_error, **kwargs)


_CLASSES = {"redis": FailoverConnection, "rediss": FailoverSSLConnection, "unix": FailoverUnixConnection}


def connect(
    url: str,
    *,
    socket_timeout: float | None = None,
    sentinel_password: str | None = None,
    ssl_ca_certs: str | None = None,
    ssl_cert_reqs: str | None = None,
) -> Redis:
    """Open a Redis client for RQ: raw bytes, never ``decode_responses``; no command is sent yet.

    Raises:
        SettingError: the URL or a TLS setting will not do (naming the setting, no password).
    """
    target = redis_target.parse(
        url, sentinel_password=sentinel_password, ssl_ca_certs=ssl_ca_certs, ssl_cert_reqs=ssl_cert_reqs
    )
    options: dict = {
        "decode_responses": False,
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "socket_timeout": socket_timeout,
        "health_check_interval": 30,
        "max_connections": MAX_CONNECTIONS,
    }
    if target.scheme == "redis+sentinel":
        return _master(target, options)
    if target.scheme == "rediss":
        if target.ssl_ca_certs:
            options["ssl_ca_certs"] = target.ssl_ca_certs
        if target.ssl_cert_reqs:
            options["ssl_cert_reqs"] = target.ssl_cert_reqs
    try:
        # The URL's own ?options win over these (redis-py's rule), as they always did.
        return Redis.from_url(url, connection_class=_CLASSES[target.scheme], **options)
    except (ValueError, TypeError) as exc:
        raise SettingError("REDIS_URL", f"will not do: {redact(str(exc))} (got {redact(url)!r})") from None


def _master(target: redis_target.RedisTarget, options: dict) -> Redis:
    """The master of a Sentinel group: each new connection asks the Sentinels where it is."""
    sentinel_options = {"socket_connect_timeout": CONNECT_TIMEOUT, "socket_timeout": SENTINEL_TIMEOUT}
    if target.sentinel_password:
        sentinel_options["password"] = target.sentinel_password
    sentinel = Sentinel(list(target.sentinels), sentinel_kwargs=sentinel_options)
    return sentinel.master_for(
        target.master_name,
        connection_class=FailoverSentinelConnection,
        db=target.db,
        username=target.username,
        password=target.password,
        **options,
    )


def connect_for(settings: Settings, *, socket_timeout: float | None = None) -> Redis:
    """:func:`connect` with this process's REDIS_URL, REDIS_SENTINEL_PASSWORD and REDIS_SSL_... settings.

    Raises:
        SettingError: one of them will not do, or REDIS_URL is not set.
    """
    if not settings.redis_url:
        raise SettingError("REDIS_URL", "is not set")
    return connect(
        settings.redis_url,
        socket_timeout=socket_timeout,
        sentinel_password=settings.redis_sentinel_password,
        ssl_ca_certs=settings.redis_ssl_ca_certs,
        ssl_cert_reqs=settings.redis_ssl_cert_reqs,
    )


def ping(connection: Redis) -> None:
    """Ask Redis to answer.

    Raises:
        BrokerError: Redis is unreachable or refused.
    """
    connection.ping()


def eviction_policy(connection: Redis) -> str | None:
    """Redis's ``maxmemory-policy``, or None when Redis refuses CONFIG GET (managed Redis often does).

    Raises:
        BrokerUnreachable: Redis did not answer.
    """
    try:
        answer = connection.config_get("maxmemory-policy")
    except BrokerUnreachable:
        raise
    except ResponseError:
        return None
    value = answer.get(b"maxmemory-policy", answer.get("maxmemory-policy"))
    return value.decode() if isinstance(value, bytes) else value


def eviction_warning(policy: str | None) -> str | None:
    """What to tell an operator about ``policy``; None when it is ``noeviction``."""
    if policy == SAFE_POLICY:
        return None
    if policy is None:
        return (
            "Redis's maxmemory-policy could not be checked (CONFIG GET refused); it must be noeviction, "
            "or Redis may evict worker leases, cancel fences and queued jobs under memory pressure"
        )
    return (
        f"Redis's maxmemory-policy is {policy!r}, not noeviction: under memory pressure Redis may evict "
        "worker leases, cancel fences and queued jobs; set maxmemory-policy noeviction"
    )


def warn_if_evicting(connection: Redis, who: str) -> None:
    """Log a warning at start when Redis may evict keys; never raises (Redis may be down)."""
    try:
        warning = eviction_warning(eviction_policy(connection))
    except Exception as exc:  # a start-up check: Redis down is reported elsewhere
        log.info("%s: could not check Redis's maxmemory-policy (%s)", who, redact(str(exc)))
        return
    if warning:
        log.warning("%s: %s", who, warning)
