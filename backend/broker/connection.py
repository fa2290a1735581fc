"""The Redis connection: the one place that opens it.

RQ stores binary job data, so the connection never decodes responses (``decode_responses=True``
crashes workers with UnicodeDecodeError). Sentinel and TLS options belong here too. Layers above
the broker catch the aliases of ``errors.py`` rather than importing redis themselves.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlparse

from redis import Redis

from backend.core.logs import redact


def connect(url: str, *, socket_timeout: float | None = None) -> Redis:
    """Open a Redis connection for RQ: raw bytes, never ``decode_responses``.

    Raises:
        ValueError: the URL asks for ``decode_responses``.
    """
    query = parse_qs(urlparse(url).query)
    if any(value.lower() in ("1", "true", "yes") for value in query.get("decode_responses", [])):
        raise ValueError(f"RQ needs raw bytes from Redis; remove decode_responses from {redact(url)!r}")
    return Redis.from_url(
        url,
        decode_responses=False,
        socket_connect_timeout=2,
        socket_timeout=socket_timeout,
        health_check_interval=30,
    )


def ping(connection: Redis) -> None:
    """Ask Redis to answer.

    Raises:
        BrokerError: Redis is unreachable or refused.
    """
    connection.ping()
