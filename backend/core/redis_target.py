"""What REDIS_URL and the REDIS_SSL_... / REDIS_SENTINEL_PASSWORD settings ask for, checked.

Read here, without redis-py, so that every process refuses a bad setting as it starts (the
start-up check of ``secrets_check.enforce`` calls :func:`from_settings`), before anything
connects; ``backend/broker/connection.py`` builds the client from the same :class:`RedisTarget`.
Messages name the setting and never hold a password (the URL is quoted with its userinfo and
query masked; ``logs.redact`` imports this module's neighbour ``secrets_check``, so not it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

from backend.core.settings import SettingError, Settings

#: The schemes REDIS_URL may use: a server over TCP, over TLS, over a Unix socket, or Sentinel.
SCHEMES = ("redis", "rediss", "unix", "redis+sentinel")
#: Sentinel's port when a host of a redis+sentinel URL names none.
SENTINEL_PORT = 26379
#: REDIS_SSL_CERT_REQS: how strictly a rediss:// server's certificate is checked.
CERT_REQS = ("none", "optional", "required")
EXAMPLE = "redis+sentinel://[:password@]host1:26379,host2:26379/<master_name>/<db>"
#: How a password with a character that ends a URL's userinfo must be written.
ENCODE = "percent-encode it: / as %2F, ? as %3F, # as %23, % as %25"


@dataclass(frozen=True)
class RedisTarget:
    """One Redis to connect to: a URL redis-py reads (``sentinels`` empty), or a Sentinel group."""

    url: str
    scheme: str
    #: (host, port) of each Sentinel (redis+sentinel:// only).
    sentinels: tuple[tuple[str, int], ...] = ()
    master_name: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinel_password: str | None = field(default=None, repr=False)
    ssl_ca_certs: str | None = None
    ssl_cert_reqs: str | None = None

    @property
    def unchecked_by(self) -> str | None:
        """The setting that turned a rediss:// server's certificate checks off, or None."""
        if self.scheme != "rediss":
            return None
        in_url = parse_qs(urlsplit(self.url).query).get("ssl_cert_reqs", [])
        if in_url:  # the URL's own options win over the settings (redis-py's rule)
            return "REDIS_URL's ?ssl_cert_reqs=none" if in_url[-1].lower() == "none" else None
        return "REDIS_SSL_CERT_REQS=none" if self.ssl_cert_reqs == "none" else None


def masked(url: str) -> str:
    """``url`` with everything that may hold a secret masked: the userinfo and the ?query.

    The userinfo runs from ``://`` to the LAST "@", whatever it holds: a password pasted with an
    unencoded "/" (Azure's access keys have them) must not show from that "/" on."""
    scheme, separator, rest = url.partition("://")
    if not separator:  # no scheme: "host:6379" or "password@host"
        return "***@" + url.rsplit("@", 1)[1] if "@" in url else url.partition("?")[0]
    _userinfo, at, after = rest.rpartition("@")
    netloc, slash, path = (after if at else rest).partition("/")
    path, question, _query = path.partition("?")
    return f"{scheme}://{'***@' if at else ''}{netloc}{slash}{path}{'?***' if question else ''}"


def _refuse(name: str, url: str, why: str) -> SettingError:
    return SettingError(name, f"{why} (got {masked(url)!r})" if url else why)


def _db(text: str, url: str) -> int:
    try:
        db = int(text)
    except ValueError:
        raise _refuse("REDIS_URL", url, f"names database {text[:20]!r}, which is not a number") from None
    if db < 0:
        raise _refuse("REDIS_URL", url, "names a negative database number")
    return db


def _host_port(item: str, url: str) -> tuple[str, int]:
    if item.startswith("["):  # [::1]:26379
        host, bracket, rest = item[1:].partition("]")
        if not bracket:
            raise _refuse("REDIS_URL", url, "has a Sentinel address with '[' but no ']'; write IPv6 as [::1]:26379")
        port_text = rest.removeprefix(":")
    elif item.count(":") > 1:  # ::1 or fe80::1:26379: which ":" starts the port cannot be told
        raise _refuse("REDIS_URL", url, "has an IPv6 Sentinel address without brackets; write it as [::1]:26379")
    else:
        host, _, port_text = item.rpartition(":") if ":" in item else (item, "", "")
    if not host:
        raise _refuse("REDIS_URL", url, f"has a Sentinel address without a host; the form is {EXAMPLE}")
    if not port_text:
        return host, SENTINEL_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise _refuse("REDIS_URL", url, f"has a bad Sentinel port {port_text[:10]!r}")
    return host, int(port_text)


def _sentinel(url: str, **tls: str | None) -> RedisTarget:
    rest = url[len("redis+sentinel://") :]
    if "?" in rest or "#" in rest:
        raise _refuse("REDIS_URL", url, f"takes no ?options in a redis+sentinel URL; the form is {EXAMPLE}")
    netloc, _, path = rest.partition("/")
    username = password = None
    if "@" in netloc:
        userinfo, netloc = netloc.rsplit("@", 1)
        # A lone name is the user name, as redis-py reads redis://name@host (refused below).
        user, _, secret = userinfo.partition(":")
        username, password = unquote(user) or None, unquote(secret) or None
    sentinels = tuple(_host_port(item.strip(), url) for item in netloc.split(",") if item.strip())
    if not sentinels:
        raise _refuse("REDIS_URL", url, f"names no Sentinel host; the form is {EXAMPLE}")
    _check_credentials(username, password, url)
    parts = [part for part in path.split("/") if part]
    if not parts:
        raise _refuse("REDIS_URL", url, f"names no master (Sentinel's service name); the form is {EXAMPLE}")
    if len(parts) > 2:
        raise _refuse("REDIS_URL", url, f"has more than /<master_name>/<db> in its path; the form is {EXAMPLE}")
    return RedisTarget(
        url=url,
        scheme="redis+sentinel",
        sentinels=sentinels,
        master_name=unquote(parts[0]),
        db=_db(parts[1], url) if len(parts) == 2 else 0,
        username=username,
        password=password,
        **tls,
    )


def _check_credentials(username: str | None, password: str | None, url: str) -> None:
    if username and not password:  # redis-py would send AUTH <user> without a password, and fail
        raise _refuse(
            "REDIS_URL",
            url,
            "names a user but no password: a lone name before '@' is a user name (redis-py's reading); "
            "write :password@ for a password alone, or user:password@",
        )


def _check_userinfo(url: str, scheme: str) -> None:
    """Refuse a userinfo holding an unencoded "/": read as a path, the password's tail would
    become the host, the port or the master's name."""
    head = url.partition("://")[2].partition("?")[0]
    if scheme != "unix" and "/" in head.rpartition("@")[0]:
        raise _refuse("REDIS_URL", url, f"has a '/' in its password (before '@'); {ENCODE}")


def _server(url: str, scheme: str, **tls: str | None) -> RedisTarget:
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError for a port that is not one
    except ValueError:
        raise _refuse("REDIS_URL", url, "has a bad port") from None
    query = parse_qs(parts.query)
    if scheme != "rediss" and any(name.startswith("ssl") for name in query):
        raise _refuse("REDIS_URL", url, f"has ?ssl_... options, but {scheme}:// is not TLS; use rediss://")
    for value in query.get("ssl_cert_reqs", []):
        if value.lower() not in CERT_REQS:
            raise _refuse(
                "REDIS_URL", url, f"has ssl_cert_reqs={value[:20]!r}; it must be one of {', '.join(CERT_REQS)}"
            )
    if scheme != "unix":
        _check_credentials(unquote(parts.username or ""), parts.password, url)
    if any(value.lower() in ("1", "true", "yes") for value in query.get("decode_responses", [])):
        raise _refuse("REDIS_URL", url, "asks for decode_responses; RQ needs raw bytes from Redis, remove it")
    db = 0
    if scheme == "unix":
        if not parts.path:
            raise _refuse("REDIS_URL", url, "names no socket path (unix:///path/to/redis.sock)")
    else:
        if not parts.hostname:
            raise _refuse("REDIS_URL", url, f"names no host ({scheme}://host:6379/0)")
        if port == 0:
            raise _refuse("REDIS_URL", url, "has a bad port")
        if parts.path.strip("/"):
            db = _db(unquote(parts.path).strip("/"), url)
    for value in query.get("db", []):
        db = _db(value, url)
    return RedisTarget(url=url, scheme=scheme, db=db, **tls)


def parse(
    url: str | None,
    *,
    sentinel_password: str | None = None,
    ssl_ca_certs: str | None = None,
    ssl_cert_reqs: str | None = None,
) -> RedisTarget:
    """Check a Redis URL and its TLS and Sentinel settings.

    Raises:
        SettingError: naming REDIS_URL or the REDIS_SSL_... setting at fault, the URL redacted.
    """
    if not url:
        raise SettingError("REDIS_URL", "is not set")
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in SCHEMES:
        raise _refuse("REDIS_URL", url, f"must start with one of {', '.join(s + '://' for s in SCHEMES)}")
    if ssl_cert_reqs is not None and ssl_cert_reqs.strip().lower() not in CERT_REQS:
        raise SettingError("REDIS_SSL_CERT_REQS", f"must be one of {', '.join(CERT_REQS)}, got {ssl_cert_reqs!r}")
    if ssl_ca_certs and not os.path.isfile(ssl_ca_certs):
        raise SettingError("REDIS_SSL_CA_CERTS", f"names no readable file: {ssl_ca_certs!r}")
    for name, value in (("REDIS_SSL_CA_CERTS", ssl_ca_certs), ("REDIS_SSL_CERT_REQS", ssl_cert_reqs)):
        if value and scheme != "rediss":  # ignored, the connection would be plaintext
            raise SettingError(
                name, f"is set, but REDIS_URL is {scheme}://, which has no TLS; use rediss:// or unset it"
            )
    _check_userinfo(url, scheme)
    tls = {
        "sentinel_password": sentinel_password or None,
        "ssl_ca_certs": ssl_ca_certs or None,
        "ssl_cert_reqs": ssl_cert_reqs.strip().lower() if ssl_cert_reqs else None,
    }
    if scheme == "redis+sentinel":
        return _sentinel(url, **tls)
    return _server(url, scheme, **tls)


def from_settings(settings: Settings) -> RedisTarget:
    """:func:`parse` of this process's REDIS_URL, REDIS_SENTINEL_PASSWORD and REDIS_SSL_... settings."""
    return parse(
        settings.redis_url,
        sentinel_password=settings.redis_sentinel_password,
        ssl_ca_certs=settings.redis_ssl_ca_certs,
        ssl_cert_reqs=settings.redis_ssl_cert_reqs,
    )
