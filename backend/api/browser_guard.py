"""Keeps web pages from driving the API through a browser: one ``before_request`` for every
route (the client API, /internal, /monitoring, /metrics, /dashboard, /rq).

A page on any site can make its visitor's browser send requests here. It cannot read the
answers (no CORS), but without these checks it could still act:

- DNS rebinding: ``evil.example`` resolves to 127.0.0.1, the page's requests carry
  ``Host: evil.example`` and reach a loopback API that, with no API keys, serves everyone on
  loopback as admin. So with ``API_KEYS`` unset only loopback ``Host`` names are served (a
  page cannot be served from those names by anyone but this machine), plus what
  ``ALLOWED_HOSTS`` adds; with keys set, Host is only checked when ``ALLOWED_HOSTS`` is set.
- Cross-site writes: a form or a ``text/plain`` fetch POSTs without a preflight. So every
  state-changing request (any method but GET, HEAD and OPTIONS) that a browser marks as sent
  by another site is refused: ``Sec-Fetch-Site`` other than ``same-origin``/``none`` when the
  browser sends it, else an ``Origin`` (or, lacking it, ``Referer``) that is not this API's own
  scheme, host and port (``TRUSTED_ORIGINS`` adds origins). And every one must declare JSON or
  carry ``X-Requested-With``: both make a browser ask first (a CORS preflight), which this API
  never grants, so even a browser that sends none of those headers cannot forge one. Clients
  that are not browsers (curl, workers, SDKs) send no Origin and pass.
"""

from __future__ import annotations

import functools
import re
from urllib.parse import urlsplit

from flask import Flask, current_app, request

from backend.api.auth import is_loopback_address
from backend.api.context import api_keys, settings
from backend.core.errors import Forbidden, UnsupportedMediaType

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
DEFAULT_PORTS = {"http": 80, "https": 443}
# A Host header as a browser sends it: a DNS name or an IP literal, and a port. Anything else
# (userinfo, paths, spaces) is refused rather than parsed in some lenient way.
_HOST_HEADER = re.compile(r"(?P<name>\[[0-9a-f:.]+\]|[a-z0-9_.-]+)(?::(?P<port>[0-9]{1,5}))?")


class HostNotAllowed(Forbidden):
    """Raised when the Host header names a host this API does not serve."""

    code = "host_not_allowed"


class CrossSiteRequest(Forbidden):
    """Raised when a state-changing request comes from another origin's page."""

    code = "cross_site_request"


def init_app(app: Flask) -> None:
    own = settings(app)
    app.extensions["allowed_hosts"] = _split(own.allowed_hosts)
    trusted = set()
    for origin in _split(own.trusted_origins):
        parsed = _origin_of(origin)
        if parsed is None:
            raise ValueError(f"TRUSTED_ORIGINS entry must be scheme://host[:port], got {origin!r}")
        trusted.add(parsed)
    app.extensions["trusted_origins"] = frozenset(trusted)

    def guard_this_app() -> None:
        # The app itself rather than Flask's current_app proxy: this runs on every request.
        guard_request(app)

    app.before_request(guard_this_app)


def guard_request(app: Flask | None = None) -> None:
    """Refuse a request that a foreign web page could have made; see the module docstring."""
    # The request itself, once: each read through Flask's proxy resolves it again (on every request).
    req = request._get_current_object()
    _check_host(app or current_app, req.environ)
    if req.method in SAFE_METHODS or req.routing_exception is not None:
        # Unmatched routes and methods change nothing: let them answer 404 / 405 as usual.
        return
    host = _request_host()
    _check_origin(host)
    if not request.is_json and "X-Requested-With" not in request.headers:
        raise UnsupportedMediaType(
            f"a {request.method} must send 'Content-Type: application/json' (with or without a body), "
            f"or an 'X-Requested-With' header; got Content-Type {request.mimetype or 'none'!r}",
            details={"send": ["Content-Type: application/json", "X-Requested-With: <any value>"]},
        )


def _check_host(app: Flask, environ: dict) -> None:
    allowed: tuple[str, ...] = app.extensions["allowed_hosts"]
    if api_keys(app) and not allowed:
        return  # keys decide who is served; the Host name does not matter
    raw = environ.get("HTTP_HOST")
    if raw is None:
        return  # HTTP/1.0 without Host: no browser sends that, so it cannot be rebinding
    if _host_served(raw, allowed, settings(app).api_base_url):
        return
    reason = "no API_KEYS are configured, so" if not api_keys() else "ALLOWED_HOSTS is set, so"
    raise HostNotAllowed(
        f"{reason} this API only serves requests addressed to a loopback name (localhost, "
        f"127.0.0.1, [::1]), to the host of API_BASE_URL or to a name in ALLOWED_HOSTS; got Host {raw[:100]!r}",
        details={"host": raw[:100]},  # not the allowed names: they may be internal ones
    )


def _check_origin(host: tuple[str, int | None] | None) -> None:
    origin = request.headers.get("Origin")
    header = "Origin"
    if origin is None:
        origin, header = request.headers.get("Referer") or None, "Referer"
    theirs = _origin_of(origin) if origin is not None else None  # None for "null" and garbage
    if theirs is not None and theirs in current_app.extensions["trusted_origins"]:
        return
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None:
        # Browsers since 2023 say themselves where a request comes from, and no page can set
        # this header. It also holds behind a TLS-terminating proxy, where this process sees
        # http and cannot compare the scheme of the Origin.
        if fetch_site.lower() in ("same-origin", "none"):
            return
        if origin is None:
            origin, header = fetch_site, "Sec-Fetch-Site"
    elif origin is None:
        return  # not sent by a browser page (curl, workers, SDKs)
    elif host is not None and theirs is not None:
        scheme = request.scheme
        if theirs == (scheme, host[0], host[1] or DEFAULT_PORTS.get(scheme)):
            return
    raise CrossSiteRequest(
        f"refused a {request.method} from another site's page ({header}: {origin[:200]!r}); "
        "only pages of this API's own origin (or TRUSTED_ORIGINS) may change anything",
        details={header.lower(): origin[:200]},
    )


@functools.lru_cache(maxsize=256)
def _host_served(raw: str, allowed: tuple[str, ...], api_base_url: str) -> bool:
    """Whether a request with Host ``raw`` is served (a loopback name, an allowed one, API_BASE_URL's).

    Kept per value: every request asks, and a client sends the same Host each time (the cache is
    bounded, so Host values a client makes up only push older ones out)."""
    host = _parse_host(raw)
    return host is not None and (
        _is_loopback_name(host[0]) or _matches(host[0], allowed) or host[0] == _api_base_host(api_base_url)
    )


def _request_host() -> tuple[str, int | None] | None:
    """(name, port) of the Host header, lower case, IPv6 without brackets; None if malformed."""
    raw = request.environ.get("HTTP_HOST")
    if raw is None:
        raw = request.host  # werkzeug falls back to the server's own name and port
    return _parse_host(raw)


def _parse_host(raw: str) -> tuple[str, int | None] | None:
    match = _HOST_HEADER.fullmatch(raw.strip().lower())
    if match is None:
        return None
    port = match["port"]
    return match["name"].strip("[]"), int(port) if port else None


def _api_base_host(api_base_url: str) -> str | None:
    # Workers reach the API at API_BASE_URL (e.g. http://api:5000 in docker-compose): the
    # operator named that host, so it is served without being listed in ALLOWED_HOSTS too.
    try:
        return (urlsplit(api_base_url).hostname or "").lower() or None
    except ValueError:
        return None


def _is_loopback_name(name: str) -> bool:
    # *.localhost always resolves to loopback in browsers (RFC 6761), so no other site can be
    # served under it; an IP literal names itself.
    return name == "localhost" or name.endswith(".localhost") or is_loopback_address(name)


def _matches(name: str, allowed: tuple[str, ...]) -> bool:
    for entry in allowed:
        if entry == "*" or entry == name:
            return True
        if entry.startswith(".") and (name == entry[1:] or name.endswith(entry)):
            return True
    return False


def _origin_of(value: str) -> tuple[str, str, int | None] | None:
    """(scheme, host, port) of an Origin or Referer value; None when it names no web origin."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    return scheme, parts.hostname.lower(), port or DEFAULT_PORTS[scheme]


def _split(value: object) -> tuple[str, ...]:
    if not value:
        return ()
    return tuple(item.strip().lower() for item in str(value).split(",") if item.strip())
